"""The one bounded wait of the test suite: poll a condition until it holds, or fail saying what was seen.

Tests wait for what they expect, never for a guessed time: ``wait_until(lambda: ...)`` returns
as soon as the condition holds (so a fast machine is not slowed down) and fails with
``AssertionError`` after ``timeout`` seconds (so a broken feature fails instead of hanging).
Where a nameko entrypoint's completion is what is awaited, use
``nameko.testing.services.entrypoint_waiter`` instead.

``time.sleep`` is eventlet's green sleep once tests/conftest.py has monkey-patched, so other
greenlets (services in containers, relays) run while this one waits; unpatched it is a
plain sleep. Nothing here needs gevent.
"""
import time


def wait_until(predicate, timeout=10.0, interval=0.01, message=None, ignore=()):
    """Call ``predicate()`` every ``interval`` seconds until it returns a truthy value, and
    return that value. After ``timeout`` seconds raise ``AssertionError`` with ``message``
    and the last value seen. Exceptions of the types in ``ignore`` count as "not yet" (the
    last one is reported); any other exception propagates at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore as error:  # an empty tuple catches nothing
            value = error
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text or 'condition not met'} (waited {timeout} s; last seen: {value!r})")
        time.sleep(min(interval, remaining))
