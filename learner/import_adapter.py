"""`rewardloop adapters import FOLDER`: a PEFT LoRA folder trained elsewhere (TRL, another run)
into the registry as the next version, with a manifest, after the same validation every
server runs before serving a version (core/adapter_format.py: checksum, base model, LoRA only,
rank, target modules, finite weights). It commits under the learner lock, as a learner run
does, so an import never races a run for a version number. Works for both engines: the
version folder is what the local engine's slots and vLLM's load_lora_adapter both read.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from core.adapter_format import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, AdapterInvalid, sha256_file, validate_adapter
from core.keys import Keys
from core.manifest import AdapterManifest
from core.registry import Registry


class ImportRefused(RuntimeError):
    """The folder cannot become a version; the message says why."""


def same_base(claimed: str | None, model_id: str, model_path: Path) -> bool:
    """Whether a PEFT config's base_model_name_or_path names the model this deployment serves
    (its id, its folder, or a folder of the same name)."""
    if not claimed:
        return True   # PEFT leaves it empty when the base was built in memory
    if claimed == model_id:
        return True
    c = Path(claimed)
    return (c.exists() and c.resolve() == Path(model_path).resolve()) or c.name in (Path(model_id).name,
                                                                                 Path(model_path).name)


def module_names_of(model_name: str, models_dir: Path) -> tuple[str, Path, set[str]]:
    """(model id, folder, module names) of REWARDLOOP_MODEL, built on the meta device: no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.modeling import resolve_model_path
    where, model_id = resolve_model_path(model_name, models_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where))
    return model_id, Path(where), {n for n, _ in model.named_modules()}


def import_adapter(r, keys: Keys, data_dir: Path, folder: Path, *, model_id: str, model_path: Path,
                   module_names: set[str], publish: str | None, canary_share: float, by: str,
                   any_base: bool = False, lock_ttl_s: float = 60) -> tuple[int, str]:
    """Validate and register `folder` as the next version; publish it as `publish` (stable |
    canary) or only register it (None: promote it later). Returns (version, notice JSON)."""
    from learner.runner import LearnerLock
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ImportRefused(f"{folder} has no {name}: not a PEFT LoRA folder")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise ImportRefused(f"{folder / CONFIG_FILE}: unreadable JSON ({exc})") from None
    claimed = config.get("base_model_name_or_path")
    if not any_base and not same_base(claimed, model_id, model_path):
        raise ImportRefused(f"the adapter was trained on {claimed!r}, this deployment serves {model_id!r} "
                            f"({model_path}); pass --any-base if they are the same weights")
    reg = Registry(r, keys, data_dir)
    reg.root.mkdir(parents=True, exist_ok=True)
    lock = LearnerLock(r, keys, ttl_s=lock_ttl_s)
    if not lock.acquire():
        raise ImportRefused("a learner run holds the learner lock: import again when it has finished")
    staged = Path(tempfile.mkdtemp(prefix=".tmp-", dir=reg.root))
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(folder / name, staged / name)
        st = reg.state()
        version = st["next_version"] + 1
        manifest = AdapterManifest(version=version, parent=st["stable"], base_model=model_id, state="published",
                                   reason=f"imported from {folder.resolve()}", created=time.time(),
                                   sha256=sha256_file(staged / WEIGHTS_FILE),
                                   extra={"imported_from": str(folder.resolve()), "imported_base": claimed})
        (staged / MANIFEST_FILE).write_text(manifest.to_json())
        try:
            validate_adapter(staged, model_id, module_names)
        except AdapterInvalid as exc:
            raise ImportRefused(f"{folder}: {exc}") from None
        ok, notice = reg.commit(staged, manifest, lock.token, publish or "keep", canary_share, cursor=None,
                                pairs_cursor=None, by=by)
        if not ok:
            raise ImportRefused(f"the registry did not take version {version}: {notice}")
        return version, notice
    finally:
        shutil.rmtree(staged, ignore_errors=True)   # gone already when committed (renamed into place)
        lock.release()
