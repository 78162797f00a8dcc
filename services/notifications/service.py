"""The notifications nameko service: entry points only; the work is in kernel.projector
(with projection.py) and storage.py."""
import logging

from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import KombuError
from nameko.constants import NON_PERSISTENT
from nameko.events import EventDispatcher, EventHandler
from nameko.extensions import DependencyProvider
from nameko.timer import Timer

from kernel.calls import call_with_timeout
from kernel.db import Database, Outage
from kernel.errors import ValidationFailed, whole_number
from kernel.events import Event, EventContractError, NotificationChanged
from kernel.health import HealthCheck
from kernel.metrics import Metrics, metrics_refresh, refresh_quietly, set_projection
from kernel.outage import OutageLog
from kernel.rpc import NO_WAIT_RETRY, RpcProxy, rpc
from kernel.projector import Backoff, Projector, Turn
from services.notifications import projection
from services.notifications.models import PROJECTION
from services.notifications.projection import UNREAD_MESSAGE_COUNT
from services.notifications.storage import STORAGE

logger = logging.getLogger(__name__)
_announce_outage = OutageLog(logger, "notifications: announcing changes")
UNANNOUNCED_LIMIT = 10_000
# What a publish raises when the broker (or the connection to it) is away.
BROKER_ERRORS = (OSError, KombuError, AmqpConnectionError)
SINCE_MANY_LIMIT = 1000


class ConfiguredTimer(Timer):
    """nameko's timer with its interval read from the service config (``config_key``)."""

    def __init__(self, config_key: str, default: float, **kwargs):
        super().__init__(default, **kwargs)
        self.config_key = config_key

    def setup(self):
        self.interval = float(self.container.config.get(self.config_key, self.interval))
        super().setup()


feed_check = ConfiguredTimer.decorator


class ProjectedEventHandler(EventHandler):
    """nameko's ``event_handler``, backing off while the projection's database (or the
    feed) is down: a delivery waits for the process's next attempt *before* it takes a
    worker. Waiting in a worker held one of the ``max_workers`` slots the RPCs need (the
    badge, the poll): ten waiting deliveries made every page wait up to the backoff. Stopping
    it ends the waits, so a process stopped during an outage stops at once (the events go
    back to the queue)."""

    _provider = None

    def _projector_provider(self):
        if self._provider is None:
            self._provider = next((dependency for dependency in self.container.dependencies
                                   if isinstance(dependency, ProjectorProvider)), None)
        return self._provider

    def handle_message(self, body, message):
        provider = self._projector_provider()
        if provider is not None and provider.backoff is not None:
            provider.backoff.wait()
        super().handle_message(body, message)

    def handle_message_processed(self, message, result=None, exc_info=None):
        # nameko 2.14.1 acknowledges (or requeues) here and catches only amqp's
        # ConnectionError. A connection reset while a worker ran, before the consumer's own
        # thread read the reset, raises the OS's (BrokenPipeError, ConnectionResetError) from
        # the ack, and nameko kills the container for an error in ``handle_result``: one broker
        # cut ended the whole service. The connection is gone, so the broker gives the
        # unacknowledged delivery back on the next one, and the tracking row makes that second
        # arrival a no-op (nothing lost, nothing applied twice).
        try:
            super().handle_message_processed(message, result, exc_info)
        except BROKER_ERRORS as exc:
            logger.info("notifications: could not acknowledge a delivery (%s: %s); the broker "
                        "delivers it again", type(exc).__name__, exc)

    def stop(self):
        provider = self._projector_provider()
        if provider is not None:
            provider.release()
        super().stop()


event_handler = ProjectedEventHandler.decorator


class ProjectorProvider(DependencyProvider):
    """A ``Projector`` per worker, on the worker's session factory and the messages feed."""

    def __init__(self, db_attr: str = "db", messages_attr: str = "messages"):
        self.db_attr = db_attr
        self.messages_attr = messages_attr

    def setup(self):
        # One transaction at a time per process, in arrival order (eventlet's semaphore is
        # FIFO), covering every delivery waiting meanwhile (Projector.handle). The broker
        # delivers a queue in order; workers racing each other would turn that into gaps,
        # each costing a trip to the feed, and into a queue on the tracking row's lock.
        # Across processes the tracking row still decides.
        from eventlet.semaphore import Semaphore

        self.turn = Turn(Semaphore(1))
        self.feed_outage = Outage("notifications: the messages feed (messages.events_after)")
        self.unannounced: dict = {}  # (user_id, name) -> newest row not yet broadcast
        self._unannounced_lock = Semaphore(1)
        self.backoff: Backoff | None = None

    def announce(self, service, rows) -> None:
        """Broadcast ``rows`` (committed changes) to the gateways, with what an earlier
        call could not publish. After commit: if the broker is away the change is still
        committed, and it is kept (the newest row per key, at most ``UNANNOUNCED_LIMIT``)
        and published by the next call or the next feed check, so an open stream still gets
        it. (When the broker itself was away the gateways lost their connection too and
        re-read on reconnect; this covers a publish that failed while theirs stayed up.)"""
        with self._unannounced_lock:
            for row in rows:
                kept = self.unannounced.get(row.key)
                if kept is None or kept.timestamp < row.timestamp:
                    self.unannounced[row.key] = row
            if not self.unannounced:
                return
            if len(self.unannounced) > UNANNOUNCED_LIMIT:  # a long outage: keep the newest
                newest = sorted(self.unannounced.values(), key=lambda row: row.timestamp)[-UNANNOUNCED_LIMIT:]
                self.unannounced = {row.key: row for row in newest}
            waiting = sorted(self.unannounced.values(), key=lambda row: row.timestamp)
            try:
                for row in waiting:
                    try:
                        changed = NotificationChanged(user_id=row.user_id, name=row.name, timestamp=row.timestamp,
                                                      value=row.data)
                        service.dispatch(NotificationChanged.__name__, changed.to_dict())
                    except BROKER_ERRORS:
                        raise
                    except Exception:  # this row cannot be published (a bug): not a reason to hold the rest
                        logger.exception("notifications: cannot announce %r; dropped", row)
                    if self.unannounced.get(row.key) is row:
                        del self.unannounced[row.key]
            except BROKER_ERRORS as exc:  # the broker is away: one line per outage, not a traceback each
                _announce_outage.failed(exc, "changes are kept and announced when it is back")
            else:
                _announce_outage.succeeded()

    def _database(self):
        return next(dep for dep in self.container.dependencies if dep.attr_name == self.db_attr)

    def start(self):
        self.backoff = Backoff(self._database().outage, self.feed_outage)

    def release(self):
        if self.backoff is not None:
            self.backoff.release()

    def get_dependency(self, worker_ctx):
        service = worker_ctx.service

        def feed(after, limit):
            return call_with_timeout(getattr(service, self.messages_attr).events_after, after, limit)

        projector = Projector(self._database().open, feed, projection, turn=self.turn,
                              announce=lambda rows: self.announce(service, rows))
        projector.backoff = self.backoff
        return projector


def _valid_user_id(user_id) -> int:
    return whole_number(user_id, "user_id must be a whole number.")


class NotificationsService(HealthCheck):
    name = "notifications"

    db = Database("NOTIFICATIONS_DATABASE_URL", storage=STORAGE)
    messages = RpcProxy("messages")
    # NotificationChanged is a hint to the gateways (a lost one only means they ask the
    # service until their cached entry expires), so it is published without waiting for
    # a confirm and is not persisted: the publish is off the projection's critical path.
    # One immediate retry on a fresh connection, not nameko's 2-5 s sleeps between three.
    dispatch = EventDispatcher(use_confirms=False, delivery_mode=NON_PERSISTENT, retry_policy=NO_WAIT_RETRY)
    projector = ProjectorProvider()
    metrics = Metrics()

    def _on_event(self, payload):
        try:
            event = Event.from_dict(payload)
        except EventContractError:
            # Not an event this code can read; the feed will show the same. Say so loudly.
            logger.error("notifications: dropping unreadable event %r", payload)
            return
        # Database (or feed) down: report it and raise, so the event goes back to the queue
        # (requeue_on_error); its redelivery waits for the next attempt (handle_message).
        self.projector.backoff.attempt(lambda: self.projector.handle(event), wait=False)

    # requeue_on_error: an event that could not be applied (database down ...) comes back.
    @event_handler("messages", "MessageSent", requeue_on_error=True)
    def on_message_sent(self, payload):
        self._on_event(payload)

    @event_handler("messages", "InboxRead", requeue_on_error=True)
    def on_inbox_read(self, payload):
        self._on_event(payload)

    @feed_check("FEED_CHECK_INTERVAL", 3.0)
    def check_feed(self):
        """Catches the case where the last event was lost and no later one reveals the gap."""
        self.projector.announce([])  # changes an earlier broadcast could not publish
        backoff = self.projector.backoff
        if backoff.due_in() > 0:
            return  # an outage: the deliveries' backoff decides when to try again
        try:
            applied = backoff.attempt(self.projector.check)
        except Exception as exc:
            if backoff.outage_of(exc) is None:
                raise
            return  # reported by the outage; the next look after its backoff
        if applied:
            logger.info("notifications: caught up %s events from the feed", applied)

    @rpc
    def notifications_since(self, user_id, since=0.0):
        """The user's rows with timestamp > since, oldest first: [{name, data, timestamp}]."""
        if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
            raise ValidationFailed("since must be a number.", "since")
        return self.db.since(_valid_user_id(user_id), float(since))

    @rpc
    def notifications_since_many(self, pairs):
        """``notifications_since`` for many users at once (a gateway re-reading for its open
        streams after a reconnect): ``pairs`` is [[user_id, since], ...], at most
        ``SINCE_MANY_LIMIT``; the answer is [[user_id, rows], ...] in the same order."""
        if not isinstance(pairs, list) or len(pairs) > SINCE_MANY_LIMIT:
            raise ValidationFailed(f"pairs must be a list of at most {SINCE_MANY_LIMIT} [user_id, since] pairs.")
        since_by_user: dict[int, float] = {}
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValidationFailed("each pair must be [user_id, since].")
            user_id, since = _valid_user_id(pair[0]), pair[1]
            if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
                raise ValidationFailed("since must be a number.", "since")
            since_by_user[user_id] = min(float(since), since_by_user.get(user_id, float("inf")))
        found = self.db.since_many(since_by_user)
        return [[user_id, found[user_id]] for user_id in since_by_user]

    @rpc
    def unread_message_count(self, user_id):
        rows = self.db.since(_valid_user_id(user_id), float("-inf"))
        return next((row["data"] for row in rows if row["name"] == UNREAD_MESSAGE_COUNT), 0)

    @rpc
    def position(self):
        return self.db.tracked()

    @rpc
    def stats(self):
        """The projection's position, the feed's head and the lag between them (``microblog
        status``; also the metrics gauges). The head is None when the messages service does
        not answer."""
        position = self.db.tracked()
        self.db.rollback()
        try:
            head = call_with_timeout(self.messages.head)
        except Exception as exc:  # messages down or slow: report what is known
            logger.debug("notifications: stats without the feed's head (%s: %s)", type(exc).__name__, exc)
            head = None
        return set_projection(PROJECTION, position, head)

    @metrics_refresh
    def refresh_metrics(self):
        refresh_quietly(self.stats)
