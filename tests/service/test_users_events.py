"""The users service publishes UserRegistered and ProfileChanged through its outbox relay
to listeners, and serves them as a feed: on RabbitMQ + PostgreSQL and on the embedded
transport + SQLite."""
import pytest
from nameko.events import event_handler
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter

from kernel.errors import ValidationFailed
from kernel.events import Event, ProfileChanged, UserRegistered
from services.users.service import UsersService
from tests.service.conftest import services_config

PASSWORD = "correct horse battery"
RECEIVED = []


class Listener:
    """Stands in for the gateway's caches of names (the next issue's consumer)."""

    name = "users_listener"

    @event_handler("users", "UserRegistered")
    def on_user_registered(self, payload):
        RECEIVED.append(Event.from_dict(payload))

    @event_handler("users", "ProfileChanged")
    def on_profile_changed(self, payload):
        RECEIVED.append(Event.from_dict(payload))


@pytest.fixture(params=["real", "embedded"])
def config(request, tmp_path):
    RECEIVED.clear()
    return dict(services_config(request, tmp_path, ("users",)), OUTBOX_POLL_INTERVAL=0.1)


@pytest.fixture
def running(config, container_factory):
    containers = {cls.name: container_factory(cls, config) for cls in (Listener, UsersService)}
    for container in containers.values():
        container.start()
    return containers


def test_registrations_and_renames_reach_listeners_in_log_order(running, config):
    listener = running["users_listener"]
    with ClusterRpcProxy(config, timeout=10) as rpc:
        with entrypoint_waiter(listener, "on_user_registered", timeout=15, callback=lambda *_: len(RECEIVED) >= 2):
            susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
            john = rpc.users.register("john", "john@example.com", PASSWORD)
        with entrypoint_waiter(listener, "on_profile_changed", timeout=15):
            rpc.users.update_profile(susan["id"], "susan", "")  # unchanged: nothing to publish
            rpc.users.update_profile(susan["id"], "sue", "hello")
        feed = rpc.users.events_after(0)
        assert rpc.users.head() == 3
        assert rpc.users.stats() == {"head": 3, "published": 3, "backlog": 0}
    assert [(type(e), e.position, e.user_id, e.username, e.about_me) for e in RECEIVED] == [
        (UserRegistered, 1, susan["id"], "susan", ""),
        (UserRegistered, 2, john["id"], "john", ""),
        (ProfileChanged, 3, susan["id"], "sue", "hello")]
    assert [Event.from_dict(payload) for payload in feed] == RECEIVED  # the feed is what was published


def test_the_feed_refuses_bad_positions_and_limits(running, config):
    bad = [("position", -1, 10), ("position", "1", 10), ("position", True, 10), ("position", None, 10),
           ("position", 2**63, 10), ("position", 1.5, 10),
           ("limit", 0, "10"), ("limit", 0, -1), ("limit", 0, None), ("limit", 0, 2**64)]
    with ClusterRpcProxy(config, timeout=10) as rpc:
        for field, position, limit in bad:
            with pytest.raises(ValidationFailed) as error:
                rpc.users.events_after(position, limit)
            assert error.value.field == field, (position, limit)
        assert rpc.users.events_after(2**63 - 1, 1000) == [] and rpc.users.events_after(0, 0) == []
