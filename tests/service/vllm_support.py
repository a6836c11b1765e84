"""Moved to tests/support/vllm_servers.py: a thin re-export for branches that still import it."""
from tests.support.vllm_servers import (  # noqa: F401
    STAMP,
    TINY_ID,
    VLLM_PY,
    VLLM_VENV,
    frozen,
    require_vllm,
    start_vllm,
    vllm_json,
    vllm_models,
    vllm_running,
)
