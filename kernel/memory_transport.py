"""kombu's in-memory transport, made usable by nameko: the embedded mode's broker.

Register it with ``register()`` and use the AMQP URI ``embedded://``. Two shims, both
needed to run nameko on ``memory://``:

1. kombu's virtual transport keeps ``content_type`` (and ``content_encoding``) on the
   message object, not in ``message.properties``. nameko's RPC responder reads
   ``message.properties['content_type']`` to serialise its reply and fails with
   ``KeyError: 'content_type'``. Our ``Message`` copies both into ``properties``.
2. A virtual channel that finds its queues empty sleeps ``polling_interval`` before
   looking again: 1 s by default, which would make every RPC take up to a second.
   We poll every few milliseconds instead.

Messages live in this process only; that is the point of the embedded mode.
"""
from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES, memory, virtual

POLLING_INTERVAL = 0.002  # seconds; kombu's default is 1.0


class Message(virtual.Message):
    def __init__(self, payload, channel=None, **kwargs):
        super().__init__(payload, channel=channel, **kwargs)
        self.properties.setdefault("content_type", self.content_type)
        self.properties.setdefault("content_encoding", self.content_encoding)


class Channel(memory.Channel):
    Message = Message


class Transport(memory.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL
    driver_type = "embedded"
    driver_name = "embedded"


def register() -> None:
    """Make ``embedded://`` resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES["embedded"] = f"{__name__}:Transport"
