"""The notifications service in nameko containers, fed by the messages service through the
broker: two instances at once, one killed mid-stream and replaced; the projection ends
with exactly the rows a replay gives. On RabbitMQ + PostgreSQL and on the embedded transport."""
import uuid

import eventlet
import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from kernel.events import Event
from services.messages.service import MessagesService
from services.notifications.storage import STORAGE
from services.notifications.projection import fold
from services.notifications.service import NotificationsService
from services.users.service import UsersService
from tests.service.conftest import services_config
from tests.waiting import wait_until

PASSWORD = "correct horse battery"
SERVICES = ("users", "messages", "notifications")


@pytest.fixture(params=["real", "embedded"])
def config(request, tmp_path):
    return dict(services_config(request, tmp_path, SERVICES), OUTBOX_POLL_INTERVAL=0.1, FEED_CHECK_INTERVAL=0.3)


def projection_state(config):
    from kernel.db import create_db_engine, dispose

    engine = create_db_engine(config["NOTIFICATIONS_DATABASE_URL"], pool_size=1)
    store = STORAGE.open(engine)
    try:
        return store.all_rows(), store.tracked()
    finally:
        store.close()
        dispose(engine)


def replay_from_feed(rpc):
    events, position = [], 0
    while batch := rpc.messages.events_after(position, 1000):
        events += [Event.from_dict(p) for p in batch]
        position = events[-1].position
    return fold(events), position


def wait_until_caught_up(rpc, timeout=20):
    wait_until(lambda: rpc.notifications.position() == rpc.messages.head(), timeout=timeout, interval=0.05,
               message="the notifications projection did not catch up with the log")


def test_two_instances_and_a_killed_one_end_with_the_replay(config, container_factory):
    for cls in (UsersService, MessagesService):
        container_factory(cls, config).start()
    first = container_factory(NotificationsService, config)
    first.start()
    if config["AMQP_URI"] != "embedded://":
        # Scale-out needs PostgreSQL: embedded mode's SQLite has one writer, one process.
        container_factory(NotificationsService, config).start()
    with ClusterRpcProxy(config, timeout=15) as rpc:
        users = [rpc.users.register(f"user{i}", f"user{i}@example.com", PASSWORD)["id"] for i in range(4)]

        def sender(number):
            with ClusterRpcProxy(config, timeout=15) as own:
                for i in range(15):
                    own.messages.send_message(users[number], users[(number + 1 + i) % 4], f"m{number}-{i}", idempotency_key=uuid.uuid4().hex)
                    if i % 6 == 5:
                        own.messages.mark_inbox_read(users[number])
                    eventlet.sleep(0)  # not a wait: yield, so the four senders interleave

        senders = [eventlet.spawn(sender, n) for n in range(4)]
        wait_until(lambda: rpc.notifications.position() > 0, message="the first instance consumed nothing")
        if config["AMQP_URI"] == "embedded://":
            # In-process, a "kill" would leave its half-closed consumer on the in-memory
            # queues; the embedded system dies as a whole or not at all. Stop it instead.
            first.stop()
        else:
            first.kill()  # mid-stream: what it had not acknowledged goes back to the queue
        replacement = container_factory(NotificationsService, config)
        replacement.start()
        for worker in senders:
            worker.wait()
        wait_until_caught_up(rpc)
        expected_rows, head = replay_from_feed(rpc)
        assert head == 4 * 15 + 4 * 2
        rows, position = projection_state(config)
        assert position == head
        assert rows == expected_rows
        # and the projection agrees with the messages service's own read model
        for user in users:
            assert rpc.notifications.unread_message_count(user) == rpc.messages.unread_count(user)
