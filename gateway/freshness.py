"""How a gateway process hears what changed: one queue of its own, bound to
``NotificationChanged`` (broadcast by the notifications service after each commit) and to
the users service's ``UserRegistered``, ``ProfileChanged`` and ``SessionEnded`` (its
outbox). What it hears feeds the hub: open streams and the process's memory
(``gateway.memory``), which trusts only what was kept while this listener was connected.

The listener never stops for a connection error: while the broker is unreachable it
reconnects with a bounded backoff (``RECONNECT_DELAYS``), logging one line when it goes
down and one when it is back, and meanwhile every poll is answered by the service. A
broker that stops answering without closing the connection is noticed by AMQP heartbeats.
"""
from __future__ import annotations

import logging
import threading
import time

from kombu import Connection, Consumer, Exchange, Queue, binding

from kernel.events import (Event, EventContractError, NotificationChanged, ProfileChanged, SessionEnded,
                           UserRegistered)
from kernel.outage import OutageLog

logger = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.5, 1, 2, 5)  # seconds before each reconnect attempt; the last one repeats
HEARTBEAT = 10  # seconds: a silent broker is given up after about two of these


class ChangeListener:
    """A daemon thread consuming those events into ``sink`` (the hub, ``gateway.hub.Hub``):
    ``sink.changed(...)`` per notification change, ``sink.users_event(event)`` per users
    event, ``sink.connection_up()`` once the queue is consumed (so anything later is
    heard), ``sink.connection_down()`` when the connection is lost."""

    def __init__(self, amqp_uri: str, sink):
        self.amqp_uri = amqp_uri
        self.sink = sink
        self._started = False
        self._start_lock = threading.Lock()
        self._stopping = False

    def ensure_started(self) -> None:
        # Started on first use, in the process that serves (after gunicorn's fork).
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._thread = threading.Thread(target=self._run, name="notification-changes", daemon=True)
                self._thread.start()
                self._started = True

    def _on_message(self, body, message):
        try:
            event = Event.from_dict(body)
            if isinstance(event, NotificationChanged):
                # A change from a publisher that predates ``value`` is announced without
                # it: streams then re-read the user's rows.
                has_value = "value" in body.get("data", {})
                self.sink.changed(event.user_id, event.name, event.timestamp, event.value, has_value)
            elif isinstance(event, (UserRegistered, ProfileChanged, SessionEnded)):
                self.sink.users_event(event)
        except EventContractError:
            logger.warning("ignoring an unreadable notification change: %r", body)

    def _run(self) -> None:
        notifications = Exchange("notifications.events", type="topic", durable=True)
        users = Exchange("users.events", type="topic", durable=True)
        bindings = [binding(notifications, routing_key=NotificationChanged.__name__)] + [
            binding(users, routing_key=cls.__name__) for cls in (UserRegistered, ProfileChanged, SessionEnded)]
        outage = OutageLog(logger, "notification changes listener")
        failures = 0
        while not self._stopping:
            try:
                # One connection attempt per round (kombu would otherwise retry inside it).
                with Connection(self.amqp_uri, connect_timeout=5, heartbeat=HEARTBEAT,
                                transport_options={"max_retries": 0}) as connection:
                    queue = Queue(bindings=bindings, exclusive=True, auto_delete=True)
                    # No acks: the queue is this process's own (exclusive, gone with its
                    # connection), so an ack would keep nothing safer; it was a send per event.
                    with Consumer(connection, queues=[queue], callbacks=[self._on_message], no_ack=True):
                        self.sink.connection_up()
                        outage.succeeded()
                        failures = 0
                        while not self._stopping:
                            try:
                                connection.drain_events(timeout=1)
                            except TimeoutError:
                                pass
                            connection.heartbeat_check()
            except Exception as exc:  # broker gone: answer every poll from the service meanwhile
                outage.failed(exc, "polls are answered by the service and streams re-read on reconnect")
            self.sink.connection_down()
            if not self._stopping:
                time.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1

    def stop(self, wait: float = 0) -> None:
        """Ask the thread to end (within a second); ``wait`` seconds at most for it to."""
        self._stopping = True
        if wait and self._started:
            self._thread.join(timeout=wait)
