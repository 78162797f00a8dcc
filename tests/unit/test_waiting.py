"""The suite's one bounded wait."""
import time

import pytest

from tests.waiting import wait_until


def test_returns_the_first_truthy_value_without_waiting_longer():
    calls = iter([0, None, "", "ready", "later"])
    started = time.monotonic()
    assert wait_until(lambda: next(calls), interval=0.01) == "ready"
    assert time.monotonic() - started < 1


def test_fails_after_the_timeout_with_the_message_and_the_last_value():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"no rows yet .*last seen: \[\]"):
        wait_until(lambda: [], timeout=0.2, message="no rows yet")
    assert 0.2 <= time.monotonic() - started < 2


def test_ignored_exceptions_mean_not_yet_and_others_propagate():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("refused")
        return True

    def refused():
        raise ConnectionError("refused")

    assert wait_until(flaky, ignore=(ConnectionError,)) is True
    with pytest.raises(AssertionError, match="refused"):
        wait_until(lambda: flaky() and refused(), timeout=0.05, ignore=(ConnectionError,))
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0, ignore=(ConnectionError,))


def test_the_message_may_be_computed_when_the_wait_fails():
    seen = []
    with pytest.raises(AssertionError, match="log says: boom"):
        wait_until(lambda: seen.append(1), timeout=0.05, message=lambda: f"log says: boom after {len(seen)} checks")
