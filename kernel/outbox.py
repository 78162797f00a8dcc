"""The transactional outbox relay: publishes the log to RabbitMQ after commit, in order.

Events are written to the log in the command's transaction; this relay later publishes
every event past the ``published`` counter and advances it in the same transaction that
read them. A broker outage or a crash delays events, never loses them; an event can go
out twice (published, then a crash before the counter commits), so delivery is
at-least-once and consumers deduplicate by position.

Only one relay publishes at a time: on PostgreSQL the ``published`` row is taken with
``FOR UPDATE SKIP LOCKED`` (another instance of the service skips rather than waits); in
embedded mode there is one process and one connection (``kernel.eventlog``).
"""
from __future__ import annotations

import logging
from typing import Callable

import eventlet
from eventlet.event import Event as Signal
from nameko.extensions import DependencyProvider
from kernel.errors import ValidationFailed
from kernel.eventlog import FEED_BATCH_MAX, REPLAY_BATCH_MAX
from kernel.metrics import metrics_refresh, refresh_quietly, set_outbox
from kernel.outage import OutageLog
from kernel.rpc import rpc

logger = logging.getLogger(__name__)

RELAY_BATCH = 500
MAX_BACKOFF = 5.0
BUSY_RETRY = 0.01  # seconds before looking again when another relay held the turn


class OutboxRelay:
    def __init__(self, open_log: Callable, publisher, poll_interval: float = 1.0, linger: float = 0.0):
        self.open_log = open_log  # -> a ``kernel.eventlog.EventLog`` on a new session
        self.publisher = publisher
        self.poll_interval = poll_interval
        # After a wake-up, wait this long so that the sends committing meanwhile go out in
        # the same batch: under load, one relay round (five statements and a confirm wait)
        # per few events instead of per event.
        self.linger = linger
        self._signal = Signal()
        self._running = False
        self.skipped = False  # the last round found the ``published`` row held by another relay

    def relay_pending(self) -> int:
        """Publish one batch of unpublished events in order; returns how many went out.

        Progress is recorded only once the broker has confirmed the whole batch; if any
        part fails, the whole batch goes out again later (at-least-once: consumers drop
        what they have already applied by its position) and the error is raised so the
        caller backs off.
        """
        log = self.open_log()
        try:
            relayed = log.relay_round(RELAY_BATCH, self._publish)
        finally:
            log.close()
        self.skipped = relayed is None  # another relay held the turn: look again soon
        return relayed or 0

    def _publish(self, payloads: list[dict]) -> None:
        for payload in payloads:
            self.publisher.publish(payload)
        self.publisher.flush()

    def wake(self) -> None:
        if not self._signal.ready():
            self._signal.send(True)

    def run_forever(self) -> None:
        """Relay until ``stop()``. Nothing ends it but ``stop()``: an error (the broker or
        the database unreachable) is logged once per outage and retried with a bounded
        backoff, and the events wait in the log meanwhile."""
        self._running = True
        outage = OutageLog(logger, "outbox relay")
        while self._running:
            try:
                # A short batch was everything committed when it was read; whatever commits
                # later has woken the signal, so there is no need for another (empty) round.
                while self._running and self.relay_pending() >= RELAY_BATCH:
                    pass
            except Exception as exc:
                # Back off whatever wakes us meanwhile: hammering a broker that is down
                # would only burn the CPU the service needs for taking new messages.
                outage.failed(exc, f"events wait in the log; retrying every {MAX_BACKOFF:g} s at most")
                eventlet.sleep(backoff_delay(self.poll_interval, outage.failures))
                continue
            outage.succeeded()  # and its count of failures starts again
            if self.skipped:
                # Another instance's relay held the row: it may have read the log before
                # our event committed. Look again shortly rather than after poll_interval.
                eventlet.sleep(BUSY_RETRY)
                continue
            with eventlet.Timeout(self.poll_interval, False):
                self._signal.wait()
            self._signal = Signal()
            if self.linger:
                eventlet.sleep(self.linger)

    def stop(self) -> None:
        self._running = False
        self.wake()


def backoff_delay(base: float, failures: int) -> float:
    """Seconds before the next round after ``failures`` failed ones in a row: doubling from
    ``base``, at most ``MAX_BACKOFF``, for any number of failures (2 ** 1030 would not even
    fit a float: an outage of an hour and a half must not end the relay)."""
    return min(base * 2 ** min(failures, 32), MAX_BACKOFF)


class EventPublisher:
    """What the relay needs of a broker: ``publish`` events (as ``Event.to_dict`` payloads)
    in order, then ``flush``, which returns once the broker has accepted all of them or
    raises.

    One message per event, as nameko's events are published: exchange ``<source>.events``,
    routing key = event type (the class name), so ``@event_handler("messages",
    "MessageSent")`` receives them. Unlike nameko's standalone ``event_dispatcher``, the
    exchange is declared with the publish: a broker that has never seen a consumer would
    otherwise refuse every event.

    On RabbitMQ, on one channel in confirm mode, waiting for the broker's confirms once per
    batch instead of once per event: waiting per event (what nameko's publisher does) costs
    a round trip and most of the relay's CPU under load. Messages on one channel are routed
    in publish order, so order is kept. On the embedded (in-memory) transport, which has no
    confirms, every publish completes at once.
    """

    def __init__(self, config: dict, source_service: str, confirm_timeout: float = 10.0):
        from nameko.standalone.events import get_event_exchange

        self.amqp_uri = config["AMQP_URI"]
        self.confirms = self.amqp_uri.split("://", 1)[0] in ("amqp", "pyamqp", "amqps")
        self.exchange = get_event_exchange(source_service, config)
        self.confirm_timeout = confirm_timeout
        self.connection = None

    def _open(self) -> None:
        from kombu import Connection, Producer

        connection = Connection(self.amqp_uri, connect_timeout=5)
        try:
            connection.ensure_connection(max_retries=0)  # one attempt: the relay backs off itself
            channel = connection.channel()
            if self.confirms:
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
            self.producer = Producer(channel, exchange=self.exchange, serializer="json")
            self.exchange(channel).declare()
        except BaseException:
            connection.release()
            raise
        self.connection = connection
        self.sent = 0  # delivery tags on a confirm channel count up from 1
        self.acked_upto = 0
        self.acked_singly: set[int] = set()
        self.nacked = False

    def _on_ack(self, delivery_tag, multiple):
        if multiple:
            self.acked_upto = max(self.acked_upto, delivery_tag)
        else:
            self.acked_singly.add(delivery_tag)
        while self.acked_upto + 1 in self.acked_singly:
            self.acked_upto += 1
            self.acked_singly.discard(self.acked_upto)

    def _on_nack(self, delivery_tag, multiple):
        self.nacked = True

    def _reset(self) -> None:
        if self.connection is not None:
            try:
                # Dropped without the closing handshake: a broker that hangs would never
                # answer it, and ``release()`` waits for that answer without a bound.
                self.connection.collect()
            except Exception:  # already broken; nothing to release
                pass
        self.connection = None

    def publish(self, payload: dict) -> None:
        try:
            if self.connection is None:
                self._open()
            self.producer.publish(payload, routing_key=payload["event_type"], delivery_mode=2, retry=False)
            self.sent += 1
        except BaseException:
            self._reset()
            raise

    def flush(self) -> None:
        if self.connection is None or not self.confirms:
            return
        try:
            # An Exception, not eventlet's Timeout (a BaseException): that would go through
            # the relay's ``except Exception``, end its managed thread, and nameko kills the
            # whole service for a thread that ends with an error.
            not_confirmed = TimeoutError(f"the broker did not confirm events within {self.confirm_timeout:g} s")
            with eventlet.Timeout(self.confirm_timeout, not_confirmed):
                while self.acked_upto < self.sent and not self.nacked:
                    self.connection.drain_events(timeout=self.confirm_timeout)
            if self.nacked:
                raise ConnectionError("the broker refused (nacked) published events")
        except BaseException:
            self._reset()
            raise


class Outbox(DependencyProvider):
    """Runs an ``OutboxRelay`` beside the service; entry points call ``wake()`` after commit.

    It shares the engine of the service's ``Database`` dependency named ``db_attr``
    (one SQLite connection in embedded mode must stay one).
    """

    def __init__(self, db_attr: str = "db"):
        self.db_attr = db_attr
        self.relay: OutboxRelay | None = None

    def start(self):
        database = next(dep for dep in self.container.dependencies if dep.attr_name == self.db_attr)
        config = self.container.config
        self.relay = OutboxRelay(
            database.open,
            EventPublisher(config, self.container.service_name),
            poll_interval=float(config.get("OUTBOX_POLL_INTERVAL", 1.0)),
            linger=float(config.get("OUTBOX_LINGER", 0.0)),
        )
        self.container.spawn_managed_thread(self.relay.run_forever, identifier="outbox_relay")

    def stop(self):
        if self.relay is not None:
            self.relay.stop()

    kill = stop

    def get_dependency(self, worker_ctx) -> OutboxRelay:
        return self.relay


POSITION_MAX = 2**63 - 1  # positions are 64-bit integers in both databases


class EventSource:
    """Mixin for a nameko service with an event log (``db`` injects a ``kernel.eventlog``
    recorder) and an ``Outbox``: the feed other services read (``events_after``, ``head``)
    and the outbox's figures (``stats``: ``microblog status`` and the metrics gauges)."""

    @rpc
    def events_after(self, position, limit=FEED_BATCH_MAX):
        """The feed: events with position > ``position``, oldest first, at most ``limit``
        (at most 1000)."""
        return self.db.events_after(*_feed_args(position, limit))

    @rpc
    def events_after_json(self, position, limit=REPLAY_BATCH_MAX):
        """``events_after`` as one JSON text, in batches of up to 10,000: a replay's feed."""
        return self.db.events_after_json(*_feed_args(position, limit))

    @rpc
    def head(self):
        return self.db.head()

    @rpc
    def stats(self):
        """The log's head, the outbox's published position and the backlog between them."""
        return set_outbox(*self.db.outbox_state(), service=self.name)

    @metrics_refresh
    def refresh_metrics(self):
        refresh_quietly(self.stats)


def _feed_args(position, limit) -> tuple[int, int]:
    for name, value in (("position", position), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= POSITION_MAX:
            raise ValidationFailed(f"{name} must be a whole number from 0 to {POSITION_MAX}.", name)
    return position, limit
