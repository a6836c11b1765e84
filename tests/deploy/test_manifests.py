"""The deploy files parse, and every command and variable they use exists."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from core.settings import Settings, env_name
from service.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN_ENV = {env_name(f.name) for f in dataclasses.fields(Settings)}


def _commands():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        if "command" in svc and svc["command"][0] == "rewardloop":
            yield svc["command"][1:]
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "rewardloop.yaml").read_text()):
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield c["args"][1:]


def test_every_deploy_command_parses():
    commands = list(_commands())
    assert len(commands) >= 7
    for argv in commands:
        build_parser().parse_args(argv)   # SystemExit on an unknown command or flag


def test_every_variable_in_the_example_env_is_a_setting():
    names = [line.split("=", 1)[0].lstrip("# ") for line in (DEPLOY / "example.env").read_text().splitlines()
             if "=" in line and line.lstrip("# ").startswith("REWARDLOOP_")]
    assert names and set(names) <= KNOWN_ENV, set(names) - KNOWN_ENV
    cm = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "rewardloop.yaml").read_text())
              if d["kind"] == "ConfigMap")
    assert set(cm["data"]) <= KNOWN_ENV
