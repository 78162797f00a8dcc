"""The transactional outbox relay: publishes the log to RabbitMQ after commit, in order.

Events are written to the log in the command's transaction; this relay later publishes
every event past the ``published`` counter and advances it in the same transaction that
read them. A broker outage or a crash delays events, never loses them; an event can go
out twice (published, then a crash before the counter commits), so delivery is
at-least-once and consumers deduplicate by position.

Only one relay publishes at a time: on PostgreSQL the ``published`` row is taken with
``FOR UPDATE SKIP LOCKED`` (another instance of the service skips rather than waits); in
embedded mode there is one process and one connection.
"""
from __future__ import annotations

import logging
from typing import Callable

import eventlet
from eventlet.event import Event as Signal
from nameko.extensions import DependencyProvider
from sqlalchemy import select

from kernel.events import Event
from services.messages import log
from services.messages.models import Counter

logger = logging.getLogger(__name__)

RELAY_BATCH = 500
MAX_BACKOFF = 5.0


class OutboxRelay:
    def __init__(self, make_session: Callable, publish: Callable[[Event], None], poll_interval: float = 1.0):
        self.make_session = make_session
        self.publish = publish
        self.poll_interval = poll_interval
        self._signal = Signal()
        self._running = False

    def relay_pending(self) -> int:
        """Publish one batch of unpublished events in order; returns how many went out.

        If a publish fails, the progress up to the last event that went out is still
        committed, then the error is raised so the caller backs off.
        """
        session = self.make_session()
        try:
            query = select(Counter).where(Counter.name == "published")
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            counter = session.scalar(query)
            if counter is None:  # another relay holds it
                session.rollback()
                return 0
            published = 0
            try:
                for event in log.read_after(session, counter.position, RELAY_BATCH):
                    self.publish(event)
                    counter.position = event.position
                    published += 1
            finally:
                session.commit()
            return published
        finally:
            session.close()

    def wake(self) -> None:
        if not self._signal.ready():
            self._signal.send(True)

    def run_forever(self) -> None:
        self._running = True
        failures = 0
        while self._running:
            try:
                while self._running and self.relay_pending():
                    pass
            except Exception as exc:
                # Back off whatever wakes us meanwhile: hammering a broker that is down
                # would only burn the CPU the service needs for taking new messages.
                failures += 1
                delay = min(self.poll_interval * 2 ** failures, MAX_BACKOFF)
                logger.warning("outbox relay: publishing failed (%s); retrying in %.1fs", exc, delay)
                eventlet.sleep(delay)
                continue
            failures = 0
            with eventlet.Timeout(self.poll_interval, False):
                self._signal.wait()
            self._signal = Signal()

    def stop(self) -> None:
        self._running = False
        self.wake()


def nameko_publisher(config: dict, source_service: str) -> Callable[[Event], None]:
    """Publish as nameko's events do: exchange ``<source>.events``, routing key = event type
    (the class name), so ``@event_handler("messages", "MessageSent")`` receives them.

    Unlike nameko's standalone ``event_dispatcher``, the exchange is declared with the
    publish: a broker that has never seen a consumer would otherwise refuse every event.
    """
    from nameko import serialization
    from nameko.amqp.publish import Publisher
    from nameko.standalone.events import get_event_exchange

    exchange = get_event_exchange(source_service, config)
    serializer, _ = serialization.setup(config)
    publisher = Publisher(config["AMQP_URI"], serializer=serializer, declare=[exchange])

    def publish(event: Event) -> None:
        publisher.publish(event.to_dict(), exchange=exchange, routing_key=event.event_type())

    return publish


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
            database.make_session,
            nameko_publisher(config, self.container.service_name),
            poll_interval=float(config.get("OUTBOX_POLL_INTERVAL", 1.0)),
        )
        self.container.spawn_managed_thread(self.relay.run_forever, identifier="outbox_relay")

    def stop(self):
        if self.relay is not None:
            self.relay.stop()

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx) -> OutboxRelay:
        return self.relay
