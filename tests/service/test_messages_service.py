"""The messages service in nameko containers: RPC, the feed, and events published to
listeners through the outbox, on RabbitMQ + PostgreSQL and on the embedded transport."""
import json
import uuid

import eventlet
import pytest
from nameko.events import event_handler
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter

from kernel.errors import RecipientNotFound, ValidationFailed
from kernel.events import Event
from services.messages.service import MessagesService
from services.users.service import UsersService
from tests.service.conftest import services_config
from tests.waiting import wait_until

PASSWORD = "correct horse battery"
RECEIVED = []


class Listener:
    """Stands in for the notifications service: records what the broker delivers."""

    name = "listener"

    @event_handler("messages", "MessageSent")
    def on_message_sent(self, payload):
        RECEIVED.append(Event.from_dict(payload))

    @event_handler("messages", "InboxRead")
    def on_inbox_read(self, payload):
        RECEIVED.append(Event.from_dict(payload))


@pytest.fixture(params=["real", "embedded"])
def config(request, tmp_path):
    RECEIVED.clear()
    return dict(services_config(request, tmp_path, ("users", "messages")), OUTBOX_POLL_INTERVAL=0.1)


@pytest.fixture
def running(config, container_factory):
    containers = {cls.name: container_factory(cls, config) for cls in (Listener, UsersService, MessagesService)}
    for container in containers.values():
        container.start()
    return containers


def published_position(config) -> int:
    from sqlalchemy import select

    from kernel.db import create_db_engine
    from kernel.eventlog import counters

    engine = create_db_engine(config["MESSAGES_DATABASE_URL"], pool_size=1)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(counters.c.position).where(counters.c.name == "published"))
    finally:
        engine.dispose()


def wait_for_published(config, position, timeout=15):
    wait_until(lambda: published_position(config) >= position, timeout=timeout, interval=0.05,
               message=f"the relay did not publish up to position {position}")


def wait_for_received(count, timeout=10):
    wait_until(lambda: len(RECEIVED) >= count, timeout=timeout, message=f"listeners did not get {count} events")
    # Not a wait: a short grace period in which a duplicate delivery, if any, would show.
    eventlet.sleep(0.1)
    return RECEIVED


def test_events_reach_listeners_once_each_and_in_log_order_per_type(running, config):
    with ClusterRpcProxy(config, timeout=10) as rpc:
        susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
        john = rpc.users.register("john", "john@example.com", PASSWORD)
        for i in range(10):
            rpc.messages.send_message(susan["id"], john["id"], f"m{i}", idempotency_key=uuid.uuid4().hex)
        with entrypoint_waiter(running["listener"], "on_inbox_read", timeout=10):
            rpc.messages.mark_inbox_read(john["id"])
        assert rpc.messages.unread_count(john["id"]) == 0
        received = wait_for_received(11)
    # nameko gives each handler its own queue, so the broker keeps order within an event
    # type, not across types: a consumer restores log order by position (and the feed).
    assert sorted(e.position for e in received) == list(range(1, 12))
    sent = [e for e in received if e.event_type() == "MessageSent"]
    assert [e.position for e in sent] == list(range(1, 11))
    assert [e.body for e in sent] == [f"m{i}" for i in range(10)]
    assert [(e.event_type(), e.position) for e in received if e.event_type() == "InboxRead"] == [("InboxRead", 11)]


def test_sends_succeed_while_publishing_fails_and_events_follow_on_recovery(running, config):
    outbox = next(dep for dep in running["messages"].dependencies if dep.attr_name == "outbox")
    real_flush = outbox.relay.publisher.flush
    broken = {"on": True, "failures": 0}

    def flaky_flush():
        if broken["on"]:
            broken["failures"] += 1
            raise ConnectionError("broker unreachable")
        real_flush()

    outbox.relay.publisher.flush = flaky_flush
    with ClusterRpcProxy(config, timeout=10) as rpc:
        susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
        for i in range(5):
            assert rpc.messages.send_message(susan["id"], susan["id"], f"m{i}", idempotency_key=uuid.uuid4().hex)["position"] == i + 1
        wait_until(lambda: broken["failures"] >= 2, message="the relay did not try (and fail) to publish")
        assert published_position(config) == 0
        broken["on"] = False
        wait_for_published(config, 5)  # after its back-off the relay sends everything again
        received = wait_for_received(5)
    # Failed batches may have reached the broker before the failure (at-least-once), so
    # listeners can see repeats; every event arrives, and the last delivery of each
    # position is in log order.
    positions = [e.position for e in received]
    assert set(positions) == {1, 2, 3, 4, 5}
    assert positions[-5:] == [1, 2, 3, 4, 5]


def test_typed_errors_and_the_feed(running, config):
    with ClusterRpcProxy(config, timeout=10) as rpc:
        susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
        with pytest.raises(RecipientNotFound):
            rpc.messages.send_message(susan["id"], 999, "hello?", idempotency_key=uuid.uuid4().hex)
        with pytest.raises(ValidationFailed) as error:
            rpc.messages.send_message(susan["id"], susan["id"], " ", idempotency_key=uuid.uuid4().hex)
        assert error.value.field == "message"
        with pytest.raises(ValidationFailed):
            rpc.messages.inbox(susan["id"], 0)
        for field, position, limit in (("position", -1, 10), ("position", 2**70, 10), ("position", "1", 10),
                                       ("position", True, 10), ("limit", 0, "x"), ("limit", 0, -5)):
            with pytest.raises(ValidationFailed) as error:  # the same checks as the users' feed (EventSource)
                rpc.messages.events_after(position, limit)
            assert error.value.field == field, (position, limit)
        for i in range(3):
            rpc.messages.send_message(susan["id"], susan["id"], f"note {i}", idempotency_key=uuid.uuid4().hex)
        feed = rpc.messages.events_after(1)
        assert [Event.from_dict(e).position for e in feed] == [2, 3]
        assert json.loads(rpc.messages.events_after_json(1)) == feed  # the replay's feed: the same, as one text
        with pytest.raises(ValidationFailed):
            rpc.messages.events_after_json(-1)
        assert rpc.messages.head() == 3
        assert rpc.messages.inbox(susan["id"], 1)["total"] == 3


def test_events_are_published_before_any_consumer_exists(config, container_factory):
    """A fresh broker has no ``messages.events`` exchange until someone declares it."""
    for cls in (UsersService, MessagesService):
        container_factory(cls, config).start()
    with ClusterRpcProxy(config, timeout=10) as rpc:
        susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
        rpc.messages.send_message(susan["id"], susan["id"], "anyone there?", idempotency_key=uuid.uuid4().hex)
    wait_for_published(config, 1)
