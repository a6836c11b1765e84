"""Moved to tests/support/ (processes, clients): this thin re-export keeps branches that still
import tests.helpers working for a while. New code imports tests.support.*."""
from tests.support.clients import Chat, http  # noqa: F401
from tests.support.processes import ADMIN, MODELS, REPO, SECRET, ServerProc, base_env, free_port  # noqa: F401
