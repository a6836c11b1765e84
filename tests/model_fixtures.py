"""Moved to tests/support/models.py: a thin re-export for branches that still import it."""
from tests.support.models import (  # noqa: F401
    PROMPTS,
    SYSTEM,
    publish_adapter,
    save_random_adapter,
    train_parrot,
    train_parrot_adapter,
)
