"""Hot swap as a test sees it: a server's adapter status, waiting until servers route to a
version, and adapters spoiled on purpose (the watcher must refuse them)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.support.clients import Chat, http
from tests.support.processes import ADMIN
from tests.support.waiting import wait_for


def status(server) -> dict:
    """The server's hot-swap status (/admin/adapters 'server')."""
    code, body = http("GET", server.url + "/admin/adapters", token=ADMIN)
    assert code == 200, body
    return body["server"]


def wait_stable(servers, version: str, timeout: float = 30) -> None:
    for s in servers:
        wait_for(lambda s=s: status(s)["routing"]["stable"] == version, timeout,
                 what=f"stable={version} on {s.url}", logs=[s])


def ask_ids(server, user: str, text: str = "hello", **extra) -> tuple[str, str]:
    """(reply text, adapter version) of one websocket turn."""
    r = Chat(server, server.token(user)).ask(text, **extra)
    return r["text"], r["start"]["adapter_version"]


def corrupt(folder: Path) -> None:
    """Flip a byte of the weights: the checksum no longer matches."""
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))


def nan_weights(folder: Path) -> None:
    """NaN weights under a consistent checksum: only the values are bad."""
    from safetensors.torch import load_file, save_file

    from core.adapter_format import sha256_file
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(weights)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def other_base(folder: Path) -> None:
    """A manifest that names another base model."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["base_model"] = "someone/else-7b"
    (folder / "manifest.json").write_text(json.dumps(manifest))
