"""Learner fixtures: the tiny model (also as the learner's Policy), replies it generated itself
(tests.support.learner makes and writes them), settings and keys."""
from __future__ import annotations

import pytest
import torch

from core.keys import Keys
from core.settings import Settings
from tests.support.learner import (  # noqa: F401 (the helpers stay importable here for a while)
    QUESTIONS,
    QUICK_STEP,
    Logged,
    as_policy,
    favoured,
    generate,
    make_logged,
    write_logged,
)


@pytest.fixture(scope="session")
def tiny(models_dir):
    from core.modeling import load_model
    torch.set_num_threads(1)  # the test box has 2 shared cores
    return load_model("tiny-random", models_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_policy(tiny):
    """The tiny model as the learner's Policy (a view: the same model object)."""
    return as_policy(tiny)


@pytest.fixture(scope="session")
def logged(tiny):
    """24 sampled replies (temperature 1, top-p 0.9) from 8 users; generated once per session."""
    return make_logged(tiny, 24)


@pytest.fixture
def settings(tmp_path, redis_url, prefix, models_dir) -> Settings:
    return Settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path / "data", model_cache_dir=models_dir,
                    model="tiny-random", device="cpu", publish_mode="stable", min_samples=4, learn_lock_ttl_s=30)


@pytest.fixture
def keys(prefix) -> Keys:
    return Keys(prefix)
