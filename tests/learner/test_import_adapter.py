"""`rewardloop adapters import FOLDER`: a PEFT folder trained elsewhere becomes the next version
after the servers' own validation; bad folders are refused with the reason and leave the
registry as it was. Real Redis, real PEFT folders on the tiny model."""
from __future__ import annotations

import json

import pytest
import redis
from safetensors.torch import load_file, save_file

from core.keys import Keys
from core.registry import Registry
from learner.import_adapter import ImportRefused, import_adapter, module_names_of
from tests.support.models import save_random_adapter

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(models_dir, redis_url, prefix, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    model_id, path, modules = module_names_of("tiny-random", models_dir)
    data = tmp_path / "data"

    def run(folder, publish=None, **kw):
        return import_adapter(r, Keys(prefix), data, folder, model_id=model_id, model_path=path, module_names=modules,
                              publish=publish, canary_share=0.5, by="test", **kw)
    yield run, Registry(r, Keys(prefix), data), tmp_path
    r.close()


def test_import_registers_then_publishes_with_a_manifest(setup, models_dir):
    run, reg, tmp = setup
    folder = save_random_adapter(models_dir, tmp / "elsewhere", seed=3)
    v1, _ = run(folder)                                   # registered only
    st = reg.state()
    assert v1 == 1 and st["versions"]["1"]["state"] == "published" and st["stable"] == "base"
    assert reg.history(1)[0]["event"] == "import"
    m = reg.manifest(1)
    assert m.base_model == "rewardloop/tiny-random-llama" and m.extra["imported_from"] == str(folder.resolve())
    assert (reg.version_dir(1) / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    assert reg.move("promote", "1", by="t", reason="")["stable"] == "1"
    v2, notice = run(folder, publish="canary")
    assert v2 == 2 and json.loads(notice)["canary"] == "2" and reg.state()["canary_share"] == 0.5


def _nan(folder):
    w = folder / "adapter_model.safetensors"
    t = load_file(w)
    k = next(iter(t))
    t[k][0, 0] = float("nan")
    save_file(t, w)


def _other_base(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3-8B"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _bad_target(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["target_modules"] = ["c_attn"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _dora(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage, reason", [(_nan, "NaN"), (_other_base, "Llama-3-8B"), (_bad_target, "c_attn"),
                                            (_dora, "DoRA"), (lambda f: (f / "adapter_config.json").unlink(),
                                                              "adapter_config.json")])
def test_bad_folders_are_refused_and_change_nothing(setup, models_dir, damage, reason):
    run, reg, tmp = setup
    folder = save_random_adapter(models_dir, tmp / "bad", seed=4)
    damage(folder)
    with pytest.raises(ImportRefused, match=reason):
        run(folder, publish="stable")
    st = reg.state()
    assert st["versions"] == {} and st["stable"] == "base" and st["next_version"] == 0
    assert not reg.root.exists() or not list(reg.root.iterdir())   # no staged leftovers


def test_another_base_name_is_taken_with_any_base(setup, models_dir):
    run, reg, tmp = setup
    folder = save_random_adapter(models_dir, tmp / "renamed", seed=5)
    _other_base(folder)
    version, _ = run(folder, publish="stable", any_base=True)
    assert reg.state()["stable"] == str(version)
    assert reg.manifest(version).extra["imported_base"] == "meta-llama/Llama-3-8B"
