"""Answering "nothing new" polls without an RPC.

Each gateway process remembers, per user, the latest notification timestamp it knows of,
and hears of every change through a broadcast of ``NotificationChanged`` (published by
the notifications service after each commit) on a queue of its own. A poll whose
``since`` is at or past what it knows gets ``[]`` at once; anything else asks the service.

It never answers wrongly from stale knowledge:
* an entry is recorded only if the listener was connected *before* the service was read,
  so any later change reaches this process's queue;
* a reconnect starts a new epoch and forgets everything (changes may have been missed);
* entries expire after ``ttl`` seconds, bounding the harm of a lost broadcast.

The listener never stops for a connection error: while the broker is unreachable it
reconnects with a bounded backoff (``RECONNECT_DELAYS``), logging one line when it goes
down and one when it is back, and meanwhile every poll is answered by the service. A
broker that stops answering without closing the connection is noticed by AMQP heartbeats.
"""
from __future__ import annotations

import logging
import threading
import time

from kombu import Connection, Consumer, Exchange, Queue

from kernel.events import Event, EventContractError, NotificationChanged
from kernel.outage import OutageLog

logger = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.5, 1, 2, 5)  # seconds before each reconnect attempt; the last one repeats
HEARTBEAT = 10  # seconds: a silent broker is given up after about two of these


class LatestTimestamps:
    def __init__(self, ttl: float = 5.0):
        self.ttl = ttl
        self._known: dict[int, tuple[float, float, int]] = {}  # user -> (timestamp, recorded at, epoch)
        self._lock = threading.Lock()
        self.epoch = 0
        self.connected = False

    def connection_up(self) -> None:
        with self._lock:
            self.epoch += 1
            self._known.clear()
            self.connected = True

    def connection_down(self) -> None:
        with self._lock:
            self.connected = False
            self._known.clear()

    def nothing_newer(self, user_id: int, since: float) -> bool:
        """True only if it is certain that the user has no row newer than ``since``."""
        with self._lock:
            entry = self._known.get(user_id)
            if not self.connected or entry is None:
                return False
            timestamp, recorded_at, epoch = entry
            if epoch != self.epoch or time.monotonic() - recorded_at > self.ttl:
                return False
            return since >= timestamp

    def reading(self) -> int | None:
        """Call before reading from the service: a token for ``record``, or None if this
        process cannot vouch for what happens next (listener not connected)."""
        with self._lock:
            return self.epoch if self.connected else None

    def record(self, user_id: int, latest: float, token: int | None) -> None:
        """After a read that showed nothing newer than ``latest`` for the user."""
        if token is None:
            return
        with self._lock:
            if token != self.epoch or not self.connected:
                return
            current = self._known.get(user_id)
            if current is not None and current[2] == token:
                latest = max(latest, current[0])
            self._known[user_id] = (latest, time.monotonic(), token)

    def changed(self, user_id: int, timestamp: float) -> None:
        """A broadcast: the user has a row at ``timestamp``."""
        with self._lock:
            current = self._known.get(user_id)
            if current is not None and current[2] == self.epoch:
                self._known[user_id] = (max(timestamp, current[0]), current[1], self.epoch)


class ChangeListener:
    """A daemon thread consuming ``NotificationChanged`` broadcasts into ``sink`` (the hub,
    ``gateway.hub.Hub``): ``sink.changed(...)`` per change, ``sink.connection_up()`` once
    the queue is consumed (so anything later is heard), ``sink.connection_down()`` when the
    connection is lost."""

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
        except EventContractError:
            logger.warning("ignoring an unreadable notification change: %r", body)
        message.ack()

    def _run(self) -> None:
        exchange = Exchange("notifications.events", type="topic", durable=True)
        outage = OutageLog(logger, "notification changes listener")
        failures = 0
        while not self._stopping:
            try:
                # One connection attempt per round (kombu would otherwise retry inside it).
                with Connection(self.amqp_uri, connect_timeout=5, heartbeat=HEARTBEAT,
                                transport_options={"max_retries": 0}) as connection:
                    queue = Queue(exchange=exchange, routing_key=NotificationChanged.__name__,
                                  exclusive=True, auto_delete=True)
                    with Consumer(connection, queues=[queue], callbacks=[self._on_message]):
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
