"""Moved to tests/support/devtools.py: a thin re-export for branches that still import it."""
from tests.support.devtools import cli, cli_json, finalize_rewards  # noqa: F401
