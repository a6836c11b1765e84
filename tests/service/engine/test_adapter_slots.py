"""Adapter slots on the engine's model: a freed slot is reused by copying weights in place,
and the reused slot computes exactly what a freshly loaded adapter computes."""
from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from core.modeling import load_model
from service.engine.slots import AdapterSlots
from tests.support.models import save_random_adapter


class _Engine:  # the two attributes AdapterSlots uses; its methods run on the caller's thread here
    def __init__(self, model):
        self.model, self.refs = model, {}


@pytest.fixture(scope="module")
def adapters(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("slots")
    return [save_random_adapter(models_dir, root / f"a{i}", seed=i, rank=4 if i < 3 else 8) for i in range(4)]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_freed_slot_is_reused_and_matches_a_fresh_load(models_dir, adapters):
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    engine = _Engine(load_model("tiny-random", models_dir, "cpu").model)
    slots = AdapterSlots(engine)
    base = _logits(engine.model, ids)
    slots.load("1", adapters[0])
    slots.load("2", adapters[1])
    assert slots.unload("1") and slots.free == ["slot0"]
    slots.load("3", adapters[2])                       # same shape: copied into slot0
    assert slots.reused == 1 and slots.slot_of["3"] == "slot0" and not slots.free

    fresh = PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model, str(adapters[2]))
    slots.activate("3")
    assert torch.allclose(_logits(engine.model, ids), _logits(fresh, ids), atol=1e-6)
    slots.activate(None)
    assert torch.allclose(_logits(engine.model, ids), base, atol=1e-6)
    slots.activate("2")
    assert not torch.allclose(_logits(engine.model, ids), base, atol=1e-3)


def test_a_different_shape_gets_a_new_slot_and_a_busy_version_stays(models_dir, adapters):
    engine = _Engine(load_model("tiny-random", models_dir, "cpu").model)
    slots = AdapterSlots(engine)
    slots.load("1", adapters[0])
    engine.refs["1"] = 1                               # a stream still uses it
    assert slots.unload("1") is False and "1" in slots.loaded
    engine.refs["1"] = 0
    assert slots.unload("1")
    slots.load("4", adapters[3])                       # rank 8: cannot reuse the rank-4 slot
    assert slots.reused == 0 and slots.slot_of["4"] == "slot1"
    cfg = json.loads((adapters[3] / "adapter_config.json").read_text())
    assert cfg["r"] == 8
    with pytest.raises(KeyError, match="not loaded"):
        slots.activate("1")


def _with_manifest(folder, model_id):
    from core.adapter_format import sha256_file
    manifest = {"sha256": sha256_file(folder / "adapter_model.safetensors"), "base_model": model_id}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_validation_reads_the_weights_once_and_hands_them_to_the_load(models_dir, adapters, tmp_path):
    import shutil

    from core.adapter_format import AdapterInvalid, validate_adapter
    loaded = load_model("tiny-random", models_dir, "cpu")
    names = {n for n, _ in loaded.model.named_modules()}
    folder = _with_manifest(adapters[0], loaded.model_id)
    valid = validate_adapter(folder, loaded.model_id, names)
    assert valid.manifest["base_model"] == loaded.model_id and valid.config["r"] == 4
    engine = _Engine(loaded.model)
    slots = AdapterSlots(engine)
    slots.load("1", folder, valid)
    slots.unload("1")
    # the reused slot takes the validated tensors, not the file: damage the file after validation
    other = _with_manifest(adapters[1], loaded.model_id)
    valid2 = validate_adapter(other, loaded.model_id, names)
    reference = PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model, str(other)).eval()
    broken = tmp_path / "broken"
    shutil.copytree(other, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not weights")
    slots.load("2", broken, valid2)
    assert slots.reused == 1
    slots.activate("2")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert torch.allclose(_logits(engine.model, ids), _logits(reference, ids), atol=1e-5)
    # a file that is not safetensors at all, with a matching checksum, is refused with a reason
    _with_manifest(broken, loaded.model_id)
    with pytest.raises(AdapterInvalid, match="not a readable safetensors file"):
        validate_adapter(broken, loaded.model_id, names)
    # DoRA: PEFT cannot put it in a batch with other versions, so it is refused up front
    dora = tmp_path / "dora"
    shutil.copytree(other, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterInvalid, match="DoRA adapters are not served"):
        validate_adapter(dora, loaded.model_id, names)


def test_switching_versions_step_by_step_computes_what_each_version_alone_computes(models_dir, adapters):
    """Streams on different versions interleave step by step: every switch (the fast path
    that skips PEFT's requires_grad bookkeeping) must give exactly that version's logits."""
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    engine = _Engine(load_model("tiny-random", models_dir, "cpu").model)
    slots = AdapterSlots(engine)
    base = _logits(engine.model, ids)
    for v, folder in (("1", adapters[0]), ("2", adapters[1]), ("4", adapters[3])):
        slots.load(v, folder)
    alone = {v: _logits(PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model,
                                                  str(folder)).eval(), ids)
             for v, folder in (("1", adapters[0]), ("2", adapters[1]), ("4", adapters[3]))}
    alone[None] = base
    for v in ["1", "2", None, "4", "1", None, "2", "4", "2"]:
        slots.activate(v)
        assert torch.allclose(_logits(engine.model, ids), alone[v], atol=1e-6), f"after switching to {v}"
    assert slots._layers, "the fast switch found PEFT's LoRA layers"


def test_a_spare_slot_is_built_after_a_load_and_the_next_version_is_copied_into_it(models_dir, adapters):
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    engine = _Engine(load_model("tiny-random", models_dir, "cpu").model)
    slots = AdapterSlots(engine, pool_size=2)
    slots.load("1", adapters[0])
    spare = slots.add_spare("1")
    assert spare is not None and slots.free == [spare]
    assert slots.add_spare("1") is None                   # the pool is full
    slots.load("2", adapters[1])                          # same shape: copied into the spare
    assert slots.reused == 1 and slots.slot_of["2"] == spare
    fresh = PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model, str(adapters[1])).eval()
    slots.activate("2")
    assert torch.allclose(_logits(engine.model, ids), _logits(fresh, ids), atol=1e-6)
    slots.activate("1")                                   # the version the spare was built from is untouched
    first = PeftModel.from_pretrained(load_model("tiny-random", models_dir, "cpu").model, str(adapters[0])).eval()
    assert torch.allclose(_logits(engine.model, ids), _logits(first, ids), atol=1e-6)
    # beyond the pool size, a freed slot is deleted rather than kept
    slots.load("4", adapters[3])                          # rank 8: a new slot, the pool is now over size
    assert len(slots.shape) == 3
    assert slots.unload("1") and slots.free == [] and len(slots.shape) == 2
