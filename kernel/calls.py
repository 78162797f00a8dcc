"""Calls from one service to another, bounded in time.

nameko's ``RpcProxy`` waits for a reply forever: a worker calling a service that is down
would hang, and so would the container's shutdown, which waits for its workers. And while
the broker is unreachable the request cannot be published at all (``kernel.rpc`` makes that
fail at once): that is the same "unavailable" to the caller, not a raw kombu error.
"""
from __future__ import annotations

import eventlet
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import KombuError
from nameko.exceptions import UnknownService

from kernel.errors import DependencyUnavailable

# The broker could not take the request (or the service's queue has no consumer).
_UNREACHABLE = (KombuError, OSError, AmqpConnectionError, UnknownService)

DEFAULT_TIMEOUT = 10.0


def call_with_timeout(method, *args, timeout: float = DEFAULT_TIMEOUT, **kwargs):
    """``method(*args, **kwargs)``, or ``DependencyUnavailable`` after ``timeout`` seconds."""
    try:
        with eventlet.Timeout(timeout):
            return method(*args, **kwargs)
    except eventlet.Timeout:
        raise DependencyUnavailable(f"{_name(method)} did not answer within {timeout:g} s") from None
    except _UNREACHABLE as exc:
        raise DependencyUnavailable(f"{_name(method)} is unreachable: {exc or type(exc).__name__}") from exc


def _name(method) -> str:
    return getattr(method, "service_name", None) or getattr(method, "__name__", "a service")
