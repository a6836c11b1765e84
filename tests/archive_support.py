"""Moved to tests/support/archive.py: a thin re-export for branches that still import it."""
from tests.support.archive import Logged, consume_events, files_containing, log_session, xadd_at  # noqa: F401
