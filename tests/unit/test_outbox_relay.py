"""The outbox relay: everything in the log goes out, in order, despite publish failures."""
import eventlet
import pytest
from sqlalchemy import select

from kernel.events import Event
from kernel.eventlog import counters
from kernel.outbox import OutboxRelay
from tests.helpers import storage_of
from tests.unit.test_messages_log import read, send
from tests.waiting import wait_until


class FlakyBroker:
    """Publishes into a list; fails while ``down`` or on the calls listed in ``fail_on``.

    Like a broker with confirms: what was published before a failure may have been
    delivered, so a failed batch shows up again when it is re-sent.
    """

    def __init__(self):
        self.published = []
        self.down = False
        self.fail_on = set()
        self.calls = 0

    def publish(self, payload):
        self.calls += 1
        if self.down or self.calls in self.fail_on:
            raise ConnectionError("broker unreachable")
        self.published.append(Event.from_dict(payload).position)

    def flush(self):
        if self.down:
            raise ConnectionError("broker unreachable")


def published_counter(make_session):
    session = make_session()
    try:
        return session.session.scalar(select(counters.c.position).where(counters.c.name == "published"))
    finally:
        session.close()


def test_relay_publishes_every_event_once_in_order(messages_db):
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker)
    for i in range(5):
        send(make_session, 1, 2, f"m{i}")
    read(make_session, 2)
    assert relay.relay_pending() == 6
    assert relay.relay_pending() == 0
    assert broker.published == [1, 2, 3, 4, 5, 6]
    assert published_counter(make_session) == 6


def test_sends_succeed_while_the_broker_is_down_and_nothing_is_lost_or_reordered(messages_db):
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker)
    send(make_session, 1, 2, "before")
    assert relay.relay_pending() == 1

    broker.down = True
    for i in range(10):
        assert send(make_session, 1, 2, f"during {i}")["position"] == i + 2
    with pytest.raises(ConnectionError):
        relay.relay_pending()
    assert published_counter(make_session) == 1

    broker.down = False
    while relay.relay_pending():
        pass
    assert broker.published == list(range(1, 12))


def test_a_failure_mid_batch_sends_the_whole_batch_again(messages_db):
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    broker.fail_on = {4}
    relay = OutboxRelay(make_session, broker)
    for i in range(6):
        send(make_session, 1, 2, f"m{i}")
    with pytest.raises(ConnectionError):
        relay.relay_pending()
    assert published_counter(make_session) == 0  # unconfirmed: not recorded as published
    assert relay.relay_pending() == 6
    assert published_counter(make_session) == 6
    # At-least-once: the first attempt's 1..3 may have been delivered; then all, in order.
    assert broker.published == [1, 2, 3, 1, 2, 3, 4, 5, 6]


def test_running_relay_is_woken_after_commit_and_retries_after_failures(messages_db):
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker, poll_interval=0.05)
    runner = eventlet.spawn(relay.run_forever)
    try:
        send(make_session, 1, 2, "first")
        relay.wake()
        wait_until(lambda: broker.published == [1], timeout=5, message="the woken relay did not publish")
        broker.down = True
        send(make_session, 1, 2, "second")
        send(make_session, 1, 2, "third")
        calls = broker.calls
        relay.wake()
        wait_until(lambda: broker.calls > calls, timeout=5, message="the relay did not try to publish")
        assert broker.published == [1]
        broker.down = False
        wait_until(lambda: broker.published == [1, 2, 3], timeout=10, message="the relay did not retry")
    finally:
        relay.stop()
        runner.wait()


def test_two_relays_on_one_log_publish_each_event_once_in_order(messages_db):
    """Two instances of the messages service: one relay publishes at a time (PostgreSQL:
    the ``published`` row is locked, SKIP LOCKED; SQLite: one writer), never both."""
    make_session = storage_of(messages_db)
    published = []

    class SlowBroker:
        def publish(self, payload):
            eventlet.sleep(0.001)  # not a wait: a slow broker, so the other relay runs meanwhile
            published.append(Event.from_dict(payload).position)

        def flush(self):
            eventlet.sleep(0.002)  # not a wait: a slow broker's confirms

    relays = [OutboxRelay(make_session, SlowBroker()) for _ in range(2)]
    total = 60

    def sender():
        for i in range(total):
            send(make_session, 1, 2, f"m{i}")
            eventlet.sleep(0)  # not a wait: yield, so sends and relay rounds interleave

    def relaying(relay):
        def round_then_all_published():
            relay.relay_pending()
            return len(published) >= total

        wait_until(round_then_all_published, timeout=30, interval=0.001, message="not every event was published")

    workers = [eventlet.spawn(sender)] + [eventlet.spawn(relaying, relay) for relay in relays]
    for worker in workers:
        worker.wait()
    assert published == list(range(1, total + 1))


def test_a_relay_that_found_the_turn_taken_looks_again_soon(messages_db, messages_db_url):
    # Two instances: relay B holds the ``published`` row (publishing its own batch, which
    # it read before our event committed) when relay A is woken for our event. A must not
    # wait a whole poll interval for the next look.
    if not messages_db_url.startswith("postgresql"):
        pytest.skip("SQLite: one process, one relay; there is no other instance to skip")
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker, poll_interval=30)
    holder = make_session()
    holder.session.execute(select(counters.c.position).where(counters.c.name == "published").with_for_update())
    runner = eventlet.spawn(relay.run_forever)
    try:
        send(make_session, 1, 2, "while the other relay is busy")
        relay.wake()
        wait_until(lambda: relay.skipped, timeout=5, message="the woken relay did not find the turn taken")
        assert broker.published == []  # the row is taken: nothing read
        holder.rollback()  # the other relay's round ends (its empty read came before our commit)
        wait_until(lambda: broker.published == [1] and published_counter(make_session) == 1,  # confirmed, then recorded
                   timeout=2, message="the relay did not look again soon")  # not poll_interval (30 s)
    finally:
        holder.close()
        relay.stop()
        runner.wait()


def test_a_relay_round_never_leaves_a_transaction_open(messages_db, messages_db_url):
    # On PostgreSQL a round is a transaction opened and closed by hand on an autocommit
    # connection (two round trips instead of four). The pool does not reset those
    # connections, so every way out of a round must end it, or the ``published`` row
    # would stay locked and no relay could publish again.
    if not messages_db_url.startswith("postgresql"):
        pytest.skip("SQLite: a plain session transaction")
    from sqlalchemy import text

    make_session = storage_of(messages_db)

    def open_transactions():
        session = make_session()
        try:
            return session.session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                       " AND state LIKE 'idle in transaction%'"))
        finally:
            session.close()

    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker)
    assert relay.relay_pending() == 0  # nothing to publish
    send(make_session, 1, 2, "hello")
    broker.down = True
    with pytest.raises(ConnectionError):
        relay.relay_pending()  # the publish fails
    assert open_transactions() == 0
    holder = make_session()
    holder.session.execute(select(counters.c.position).where(counters.c.name == "published").with_for_update(nowait=True))
    assert relay.relay_pending() == 0 and relay.skipped  # another relay holds the row
    holder.rollback()
    holder.close()
    assert open_transactions() == 0
    broker.down = False
    assert relay.relay_pending() == 1
    assert open_transactions() == 0
    assert (broker.published, published_counter(make_session)) == ([1], 1)


def test_an_event_committed_during_a_round_goes_out_without_an_empty_round_first(messages_db):
    # After a short batch the relay waits for the next wake-up instead of reading the log
    # again at once; an event committed while the round ran has woken it already.
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    relay = OutboxRelay(make_session, broker, poll_interval=30)
    rounds = []
    real_round = relay.relay_pending

    def counted_round():
        rounds.append(1)
        return real_round()

    relay.relay_pending = counted_round
    real_publish = broker.publish

    def publish_and_send_another(payload):
        real_publish(payload)
        if broker.published == [1]:
            eventlet.spawn(sender)  # (SQLite: it commits once the round gives back the connection)

    def sender():
        send(make_session, 1, 2, "sent while the relay was publishing")
        relay.wake()  # the command commits, then wakes the relay

    broker.publish = publish_and_send_another
    send(make_session, 1, 2, "first")
    runner = eventlet.spawn(relay.run_forever)  # its first round publishes "first"
    try:
        wait_until(lambda: broker.published == [1, 2], timeout=2,  # not poll_interval (30 s)
                   message="the event committed during the round did not go out")
        eventlet.sleep(0.1)  # not a wait: a grace period in which an extra, empty round would show
        assert len(rounds) == 2  # one per batch, no empty round after each
    finally:
        relay.stop()
        runner.wait()


def test_a_broker_outage_is_logged_once_and_its_end_once(messages_db, monkeypatch, caplog):
    import logging

    from kernel import outbox as relay_module

    monkeypatch.setattr(relay_module, "MAX_BACKOFF", 0.05)
    caplog.set_level(logging.WARNING, logger="kernel.outbox")
    make_session = storage_of(messages_db)
    broker = FlakyBroker()
    broker.down = True
    relay = OutboxRelay(make_session, broker, poll_interval=0.01)
    send(make_session, 1, 2, "during the outage")
    runner = eventlet.spawn(relay.run_forever)
    try:
        wait_until(lambda: broker.calls >= 10, timeout=5, message="the relay did not retry ten times")  # all failed
        broker.down = False
        wait_until(lambda: broker.published == [1], timeout=5, message="the relay did not publish after the outage")
    finally:
        relay.stop()
        runner.wait()
    lines = [r.getMessage() for r in caplog.records if r.name == "kernel.outbox"]
    assert len(lines) == 2 and "working again" in lines[1], lines


def test_a_broker_that_stops_confirming_is_an_error_the_relay_retries_not_the_end_of_it(real_infra, rabbit_config):
    # eventlet's Timeout is a BaseException: raised out of flush it would pass the relay's
    # ``except Exception`` and end its thread, and nameko kills the service for that.
    from kernel.outbox import EventPublisher
    from tests.fault.proxy import TcpProxy

    def payload(position):
        return {"event_type": "MessageSent", "position": position}

    broker = TcpProxy(("127.0.0.1", 5672)).start()
    try:
        publisher = EventPublisher({"AMQP_URI": rabbit_config["AMQP_URI"].replace(
            ":5672", f":{broker.port}")}, "messages", confirm_timeout=0.5)
        publisher.publish(payload(1))
        publisher.flush()
        broker.stall()  # the broker hangs: the connection stays open, no confirm comes back
        publisher.publish(payload(2))
        with pytest.raises(Exception, match="did not confirm"):
            publisher.flush()
        broker.cut()
        with pytest.raises(Exception):
            publisher.publish(payload(2))  # refused: one attempt, no sleeping in between
        broker.restore()
        publisher.publish(payload(2))  # a fresh connection
        publisher.flush()
    finally:
        broker.stop()


def test_the_backoff_stays_bounded_for_any_number_of_failures():
    # 2 ** 1030 does not fit a float: an hour and a half of outage once ended the relay.
    from kernel.outbox import MAX_BACKOFF, backoff_delay

    assert backoff_delay(0.5, 1) == 1.0
    assert [backoff_delay(0.5, n) for n in (100, 1030, 10**6)] == [MAX_BACKOFF] * 3
