"""The browser tests' fixtures (Chromium, the embedded system), defined in test_two_browsers.py
and shared here with the other browser tests."""
from tests.browser.test_two_browsers import chromium, embedded_system  # noqa: F401
