"""Calls from one service to another, bounded in time.

nameko's ``RpcProxy`` waits for a reply forever: a worker calling a service that is down
would hang, and so would the container's shutdown, which waits for its workers.
"""
from __future__ import annotations

import eventlet

from kernel.errors import DependencyUnavailable

DEFAULT_TIMEOUT = 10.0


def call_with_timeout(method, *args, timeout: float = DEFAULT_TIMEOUT, **kwargs):
    """``method(*args, **kwargs)``, or ``DependencyUnavailable`` after ``timeout`` seconds."""
    try:
        with eventlet.Timeout(timeout):
            return method(*args, **kwargs)
    except eventlet.Timeout:
        name = getattr(method, "service_name", None) or getattr(method, "__name__", "a service")
        raise DependencyUnavailable(f"{name} did not answer within {timeout:g} s") from None
