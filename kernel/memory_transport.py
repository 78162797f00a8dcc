"""kombu's in-memory transport, made usable by nameko: the embedded mode's broker.

Register it with ``register()`` and use the AMQP URI ``embedded://``. Three shims, all
needed to run nameko on ``memory://``:

1. kombu's virtual transport keeps ``content_type`` (and ``content_encoding``) on the
   message object, not in ``message.properties``. nameko's RPC responder reads
   ``message.properties['content_type']`` to serialise its reply and fails with
   ``KeyError: 'content_type'``. Our ``Message`` copies both into ``properties``.
2. A virtual channel that finds its queues empty sleeps ``polling_interval`` before
   looking again: 1 s by default, which would make every RPC take up to a second.
   We poll every few milliseconds instead.
3. nameko sets a prefetch count (its ``max_workers``) on each consumer. RabbitMQ applies it
   per consumer; kombu's virtual channel applies it to the whole channel, which a
   container's event handlers, RPC entry points and RPC reply listener all share. Ten
   event deliveries whose handlers wait on an RPC then hold every slot, the replies they
   wait for are never delivered, and the container deadlocks (seen with the notifications
   service catching up from the feed). Our channel ignores the prefetch count: nameko
   hands each delivery to its own green thread and its worker pool bounds the work.

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

    def basic_qos(self, prefetch_size=0, prefetch_count=0, apply_global=False):
        super().basic_qos(prefetch_size, 0, apply_global)  # shim 3: no channel-wide limit


class Transport(memory.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL
    driver_type = "embedded"
    driver_name = "embedded"


def register() -> None:
    """Make ``embedded://`` resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES["embedded"] = f"{__name__}:Transport"
