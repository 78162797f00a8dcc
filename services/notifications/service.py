"""The notifications nameko service: entry points only; the work is in projector and store."""
import logging

from nameko.constants import NON_PERSISTENT
from nameko.events import EventDispatcher, event_handler
from nameko.extensions import DependencyProvider
from nameko.timer import Timer

from kernel.calls import call_with_timeout
from kernel.db import Database
from kernel.errors import DependencyUnavailable, ValidationFailed
from kernel.events import Event, EventContractError, NotificationChanged
from kernel.health import HealthCheck
from kernel.outage import OutageLog
from kernel.rpc import RpcProxy, rpc
from services.notifications import store
from services.notifications.projection import UNREAD_MESSAGE_COUNT
from services.notifications.projector import Projector, Turn

logger = logging.getLogger(__name__)
_feed_outage = OutageLog(logger, "notifications: feed check")


class ConfiguredTimer(Timer):
    """nameko's timer with its interval read from the service config (``config_key``)."""

    def __init__(self, config_key: str, default: float, **kwargs):
        super().__init__(default, **kwargs)
        self.config_key = config_key

    def setup(self):
        self.interval = float(self.container.config.get(self.config_key, self.interval))
        super().setup()


feed_check = ConfiguredTimer.decorator


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

    def get_dependency(self, worker_ctx):
        database = next(dep for dep in self.container.dependencies if dep.attr_name == self.db_attr)
        service = worker_ctx.service

        def feed(after, limit):
            return call_with_timeout(getattr(service, self.messages_attr).events_after, after, limit)

        def announce(rows):
            # After commit. If this publish fails the change is still committed: gateways
            # just answer from the service until their cached entry expires.
            try:
                for row in rows:
                    changed = NotificationChanged(user_id=row.user_id, name=row.name, timestamp=row.timestamp)
                    service.dispatch(NotificationChanged.__name__, changed.to_dict())
            except Exception:
                logger.exception("notifications: could not announce a change")

        return Projector(database.make_session, feed, turn=self.turn, announce=announce)


def _valid_user_id(user_id) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise ValidationFailed("user_id must be a whole number.")
    return user_id


class NotificationsService(HealthCheck):
    name = "notifications"

    db = Database("NOTIFICATIONS_DATABASE_URL")
    messages = RpcProxy("messages")
    # NotificationChanged is a hint to the gateways (a lost one only means they ask the
    # service until their cached entry expires), so it is published without waiting for
    # a confirm and is not persisted: the publish is off the projection's critical path.
    dispatch = EventDispatcher(use_confirms=False, delivery_mode=NON_PERSISTENT)
    projector = ProjectorProvider()

    def _on_event(self, payload):
        try:
            event = Event.from_dict(payload)
        except EventContractError:
            # Not an event this code can read; the feed will show the same. Say so loudly.
            logger.error("notifications: dropping unreadable event %r", payload)
            return
        self.projector.handle(event)

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
        try:
            applied = self.projector.check()
        except DependencyUnavailable as exc:  # broker or messages unreachable: one line per outage
            _feed_outage.failed(exc, "looking again at the next check")
            return
        _feed_outage.succeeded()
        if applied:
            logger.info("notifications: caught up %s events from the feed", applied)

    @rpc
    def notifications_since(self, user_id, since=0.0):
        """The user's rows with timestamp > since, oldest first: [{name, data, timestamp}]."""
        if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
            raise ValidationFailed("since must be a number.", "since")
        return store.since(self.db, _valid_user_id(user_id), float(since))

    @rpc
    def unread_message_count(self, user_id):
        rows = store.since(self.db, _valid_user_id(user_id), float("-inf"))
        return next((row["data"] for row in rows if row["name"] == UNREAD_MESSAGE_COUNT), 0)

    @rpc
    def position(self):
        return store.tracked_position(self.db)
