"""The browser and model fixtures of the service tests, for the hardening tests too."""
from tests.service.conftest import browser, page, xss_model  # noqa: F401
