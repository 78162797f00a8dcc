"""The notifications projection: the pure apply step, then the store and projector on
SQLite and PostgreSQL under duplicated, reordered and lost deliveries."""
import dataclasses
import time
import uuid
from datetime import datetime, timedelta, timezone

import eventlet
import eventlet.semaphore
import pytest
from hypothesis import given, settings, strategies as st

from kernel.events import InboxRead, MessageSent
from sqlalchemy import update

from kernel import projector
from kernel.projector import GAP_WAITS, Turn
from services.notifications import projection, storage
from services.notifications.models import PROJECTION, Tracking
from services.notifications.projection import UNREAD_MESSAGE_COUNT, apply, fold, keys_of
from services.notifications.storage import STORAGE, PostgresNotifications

pg = PostgresNotifications(None)  # its optimistic statements run on a connection given them


def Projector(open_store, feed, **kwargs):
    return projector.Projector(open_store, feed, projection, **kwargs)


def apply_events(store, events, tracked, rows=None):
    """Apply a contiguous run after ``tracked`` and move the tracking row, in the store's
    transaction (what a consumer's write does)."""
    if rows is None:
        rows = store.load_rows([key for event in events for key in keys_of(event)])
    position, changed = projector.fold(events, tracked, rows, apply)
    store.save(changed, position)
from tests.waiting import wait_until

USERS = [1, 2, 3]
START = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def make_log(spec, clock_steps=None):
    """Events at positions 1..n from (kind, user) pairs; times may go backwards (skew)."""
    events = []
    moment = START
    for position, (kind, user, other) in enumerate(spec, start=1):
        if clock_steps:
            moment = moment + timedelta(milliseconds=clock_steps[(position - 1) % len(clock_steps)])
        if kind == "sent":
            events.append(MessageSent(sender_id=other, recipient_id=user, body="x", position=position, occurred_at=moment))
        else:
            events.append(InboxRead(user_id=user, position=position, occurred_at=moment))
    return events


def unread_by_definition(events, user):
    """MessageSent to the user after their latest InboxRead, in log order."""
    last_read = max((e.position for e in events if isinstance(e, InboxRead) and e.user_id == user), default=0)
    return sum(1 for e in events if isinstance(e, MessageSent) and e.recipient_id == user and e.position > last_read)


event_specs = st.lists(
    st.tuples(st.sampled_from(["sent", "read"]), st.sampled_from(USERS), st.sampled_from(USERS)), max_size=60
)
clock = st.lists(st.integers(min_value=-50, max_value=50), min_size=1, max_size=10)


@settings(max_examples=300, deadline=None)
@given(event_specs, clock)
def test_any_sequence_gives_the_count_by_definition(spec, steps):
    events = make_log(spec, steps)
    rows = fold(events)
    for user in USERS:
        row = rows.get((user, UNREAD_MESSAGE_COUNT))
        assert (row.data if row else 0) == unread_by_definition(events, user)


@settings(max_examples=300, deadline=None)
@given(event_specs, clock)
def test_a_users_timestamps_strictly_increase_even_when_clocks_go_backwards(spec, steps):
    rows, seen = {}, {}
    for event in make_log(spec, steps):
        for key, row in apply(rows, event).items():
            assert row.timestamp > seen.get(key, float("-inf"))
            seen[key] = row.timestamp
            rows[key] = row


def test_apply_is_pure():
    rows = {}
    event = MessageSent(sender_id=2, recipient_id=1, body="x", position=1, occurred_at=START)
    first = apply(rows, event)
    assert rows == {} and first == apply(rows, event)
    assert first[(1, UNREAD_MESSAGE_COUNT)].data == 1
    assert apply(first, InboxRead(user_id=1, position=2, occurred_at=START))[(1, UNREAD_MESSAGE_COUNT)].data == 0
    assert apply({}, InboxRead(user_id=1, position=2, occurred_at=START)) == {}  # nothing to tell


# --- the store and projector, on a real database ------------------------------------

class Log:
    """An in-memory messages feed."""

    def __init__(self, events):
        self.events = events
        self.fail = False

    def feed(self, after, limit):
        if self.fail:
            raise ConnectionError("messages service unreachable")
        return [e.to_dict() for e in self.events if e.position > after][:limit]


@pytest.fixture
def notifications_db(notifications_db_url):
    from sqlalchemy.orm import sessionmaker

    from kernel.db import create_db_engine, dispose

    engine = create_db_engine(notifications_db_url, pool_size=4)
    make_session = sessionmaker(engine, expire_on_commit=False)

    def open_store():
        return STORAGE.open(engine, make_session)

    open_store.engine = engine
    yield open_store
    dispose(engine)


def live_rows(open_store):
    store = open_store()
    try:
        return store.all_rows(), store.tracked()
    finally:
        store.close()


SPEC = [("sent", 1, 2), ("sent", 1, 3), ("sent", 2, 1), ("read", 1, 1), ("sent", 1, 2), ("read", 2, 2),
        ("sent", 3, 1), ("sent", 3, 2), ("read", 3, 3), ("sent", 2, 3), ("sent", 2, 1), ("sent", 1, 3)]


def test_in_order_delivery_gives_the_replay(notifications_db):
    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        assert projector.handle(event) == 1
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))


def test_duplicates_change_nothing(notifications_db):
    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        projector.handle(event)
        assert projector.handle(event) == 0
    assert projector.handle(log.events[0]) == 0
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))


def test_out_of_order_delivery_fills_the_gap_from_the_feed(notifications_db):
    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    events = list(log.events)
    events[2], events[5] = events[5], events[2]  # position 6 arrives third
    applied = [projector.handle(event) for event in events]
    assert applied[2] == 4  # 3, 4, 5 and 6 from the feed
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))


def _counting_feed(log):
    calls = []

    def feed(after, limit):
        calls.append(after)
        return log.feed(after, limit)

    return feed, calls


def test_a_gap_that_a_late_delivery_fills_is_not_read_from_the_feed(notifications_db):
    # Position 2 arrives before 1 (the two event types have their own queues): it waits a
    # little, out of the turn, and 1's batch takes it too.
    log = Log(make_log(SPEC))
    feed, calls = _counting_feed(log)
    turn = Turn(eventlet.semaphore.Semaphore())
    second = eventlet.spawn(Projector(notifications_db, feed, turn=turn).handle, log.events[1])
    wait_until(lambda: 2 in turn.pending, message="the delivery of 2 did not arrive")
    assert Projector(notifications_db, feed, turn=turn).handle(log.events[0]) == 2
    assert second.wait() == 0  # applied by the other delivery's batch
    assert calls == []
    assert live_rows(notifications_db) == (fold(log.events[:2]), 2)


def test_a_gap_that_another_instance_fills_is_not_read_from_the_feed(notifications_db):
    # Two instances share a queue, so each gets every other event: the one that gets 2
    # waits for the other to apply 1 rather than reading the feed for it.
    log = Log(make_log(SPEC))
    feed, calls = _counting_feed(log)
    instance = Projector(notifications_db, feed)
    waiting = eventlet.spawn(instance.handle, log.events[1])
    wait_until(lambda: 2 in instance.turn.pending, message="the delivery of 2 did not arrive")
    assert Projector(notifications_db, feed).handle(log.events[0]) == 1  # the other instance
    assert waiting.wait() == 1
    assert calls == []
    assert live_rows(notifications_db) == (fold(log.events[:2]), 2)


def test_a_gap_nobody_fills_is_read_from_the_feed_after_a_short_wait(notifications_db):
    log = Log(make_log(SPEC))
    feed, calls = _counting_feed(log)
    began = time.monotonic()
    assert Projector(notifications_db, feed).handle(log.events[2]) == 3
    waited = time.monotonic() - began
    assert calls == [0]
    assert sum(GAP_WAITS) <= waited < 1.0  # looked again a few times, then read the feed
    assert live_rows(notifications_db) == (fold(log.events[:3]), 3)


def test_events_lost_between_broker_and_consumer_are_recovered(notifications_db):
    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        if event.position in (3, 4, 12):  # lost, including the very last one
            continue
        projector.handle(event)
    rows, position = live_rows(notifications_db)
    assert position == 11  # 3 and 4 were filled in when 5 arrived; 12 is still missing
    assert projector.catch_up() == 1  # the periodic look at the feed's head finds it
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))


def test_the_periodic_check_skips_while_deliveries_flow_and_finds_a_lost_last_event(notifications_db):
    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    for event in log.events[:-1]:  # the last one is lost
        projector.handle(event)
    assert projector.check() == 0  # deliveries applied events since the last look: skipped
    assert live_rows(notifications_db)[1] == len(SPEC) - 1
    assert projector.check() == 1  # a quiet interval: the look at the feed finds it
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))
    assert projector.check() == 0


def test_catching_up_does_not_chase_a_moving_head(notifications_db):
    events = make_log([("sent", 1, 2)] * 30)
    log = Log(events[:10])
    reads = []

    def growing_feed(after, limit):
        reads.append(after)
        batch = log.feed(after, limit)
        log.events = events[:len(log.events) + 5]  # five more sends commit during each read
        return batch

    projector = Projector(notifications_db, growing_feed)
    assert projector.catch_up() == 10
    assert len(reads) == 1
    assert live_rows(notifications_db)[1] == 10


def test_rows_read_while_waiting_for_the_lock_are_read_again(notifications_db, notifications_db_url):
    # The locked path (SQLite, and PostgreSQL's first write) reads the rows only once it
    # holds the tracking row's lock, so what another consumer committed while this one
    # waited is not lost.
    if not notifications_db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time (BEGIN IMMEDIATE): no snapshot to go stale")
    log = Log(make_log(SPEC))
    Projector(notifications_db, log.feed).handle(log.events[0])  # user 1 has 1 unread
    key = (1, UNREAD_MESSAGE_COUNT)
    first = notifications_db()
    tracked, rows = first.lock_and_load([key])
    assert (tracked, rows[key].data) == (1, 1)

    def second_consumer():
        store = notifications_db()
        try:
            return store.lock_and_load([key])
        finally:
            store.rollback()
            store.close()

    waiting = eventlet.spawn(second_consumer)
    wait_until(lambda: _waiting_for_a_lock(notifications_db), timeout=5,  # it has taken its snapshot
               message="the second consumer does not wait for the lock")
    apply_events(first, log.events[1:3], tracked)  # position 2 is another message to user 1
    first.commit()
    first.close()
    tracked, rows = waiting.wait()
    assert (tracked, rows[key].data) == (3, 2)


def _all_wait_for_the_turn(turn, workers):
    """Every spawned delivery has registered as pending and queues on the (held) turn lock."""
    wait_until(lambda: turn.lock.balance == -len(workers), timeout=5,
               message=lambda: f"{-turn.lock.balance} of {len(workers)} deliveries wait for the turn")


def _waiting_for_a_lock(make_session) -> bool:
    """Whether a connection to this (PostgreSQL) database waits for a row lock."""
    from sqlalchemy import text

    session = make_session()
    try:
        return session.session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                           " AND wait_event_type = 'Lock'")) > 0
    finally:
        session.close()


def _postgres_only(url):
    if not url.startswith("postgresql"):
        pytest.skip("the optimistic write is PostgreSQL's; SQLite has one writer at a time (BEGIN IMMEDIATE)")


def _read_then_fold(engine, events):
    """What a consumer does before its write: read, then fold ``events`` onto what it read."""
    from kernel.db import autocommit_engine_for

    connection = autocommit_engine_for(engine).connect()
    tracked, version, rows = pg.read_current(connection, [k for e in events for k in keys_of(e)])
    position, changed = projector.fold(events, tracked, rows, apply)
    return connection, changed, position, version


def test_a_write_is_refused_once_the_tracking_row_has_moved(notifications_db, notifications_db_url):
    _postgres_only(notifications_db_url)
    log = Log(make_log(SPEC))
    Projector(notifications_db, log.feed).handle(log.events[0])  # user 1 has 1 unread
    engine = notifications_db.engine
    connection, changed, position, version = _read_then_fold(engine, [log.events[1]])
    Projector(notifications_db, log.feed).handle(log.events[1])  # another consumer, first
    assert pg.save_if_current(connection, changed, position, version) is False
    assert live_rows(notifications_db) == (fold(log.events[:2]), 2)  # not counted twice

    # The replay's swap may leave the position as it was: the version still changes.
    connection, changed, position, version = _read_then_fold(engine, [log.events[2]])
    store = notifications_db()
    store.tracked(lock=True)
    store.session.execute(update(Tracking).where(Tracking.projection == PROJECTION).values(position=2))
    store.commit()
    store.close()
    assert pg.save_if_current(connection, changed, position, version) is False
    assert pg.save_if_current(connection, {}, 2, version) is False
    assert live_rows(notifications_db) == (fold(log.events[:2]), 2)
    connection, changed, position, version = _read_then_fold(engine, [log.events[2]])
    assert pg.save_if_current(connection, changed, position, version) is True
    assert live_rows(notifications_db) == (fold(log.events[:3]), 3)
    connection.close()


def test_a_write_that_waited_for_the_row_lock_is_refused_if_the_holder_moved_it(notifications_db, notifications_db_url):
    # The write blocks on the tracking row's lock; when the holder commits, PostgreSQL
    # re-checks the version condition against the new row and the write does nothing.
    _postgres_only(notifications_db_url)
    log = Log(make_log(SPEC))
    Projector(notifications_db, log.feed).handle(log.events[0])
    connection, changed, position, version = _read_then_fold(notifications_db.engine, [log.events[1]])
    holder = notifications_db()
    tracked, rows = holder.lock_and_load([(1, UNREAD_MESSAGE_COUNT)])
    apply_events(holder, log.events[1:3], tracked, rows=rows)
    waiting = eventlet.spawn(pg.save_if_current, connection, changed, position, version)
    wait_until(lambda: _waiting_for_a_lock(notifications_db), timeout=5, message="the write does not wait for the lock")
    assert not waiting.dead
    holder.commit()
    holder.close()
    assert waiting.wait() is False
    assert live_rows(notifications_db) == (fold(log.events[:3]), 3)
    connection.close()


def test_a_consumer_that_lost_the_race_reads_again_and_applies_the_rest(notifications_db, notifications_db_url,
                                                                         monkeypatch):
    _postgres_only(notifications_db_url)
    log = Log(make_log(SPEC))
    other = Projector(notifications_db, log.feed)  # another instance: its own turn
    real_save, attempts, racing = PostgresNotifications.save_if_current, [], []

    def racing_save(*args, **kwargs):
        if racing:  # the other instance's own writes
            return real_save(*args, **kwargs)
        attempts.append(1)
        if len(attempts) == 1:  # between our read and our write, the other instance commits 1..3
            racing.append(1)
            for event in log.events[:3]:
                other.handle(event)
            racing.clear()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(PostgresNotifications, "save_if_current", racing_save)
    turn = Turn(eventlet.semaphore.Semaphore())
    with turn.lock:
        workers = [eventlet.spawn(Projector(notifications_db, log.feed, turn=turn).handle, e) for e in log.events[:5]]
        _all_wait_for_the_turn(turn, workers)
    assert sum(worker.wait() for worker in workers) == 2  # 4 and 5; 1..3 were the other's
    assert len(attempts) == 2  # refused once, then read again
    assert live_rows(notifications_db) == (fold(log.events[:5]), 5)
    assert turn.pending == {}


def test_a_consumer_killed_mid_stream_resumes_where_it_committed(notifications_db):
    log = Log(make_log(SPEC))
    first = Projector(notifications_db, log.feed)
    for event in log.events[:5]:
        first.handle(event)
    log.fail = True  # the gap fill fails: the transaction rolls back, nothing half-applied
    with pytest.raises(ConnectionError):
        first.handle(log.events[8])
    assert live_rows(notifications_db)[1] == 5
    log.fail = False
    restarted = Projector(notifications_db, log.feed)  # a new process, same database
    for event in log.events[5:]:
        restarted.handle(event)
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))


def test_two_consumers_at_once_apply_each_event_once(notifications_db):
    spec = [("sent" if i % 4 else "read", 1 + i % 3, 1 + (i * 7) % 3) for i in range(80)]
    log = Log(make_log(spec))
    consumers = [Projector(notifications_db, log.feed), Projector(notifications_db, log.feed)]

    def deliver(consumer, events):
        for event in events:
            consumer.handle(event)
            eventlet.sleep(0)  # not a wait: yield, so the two consumers interleave

    # The broker spreads events over both; some reach both (redelivery), some reach neither.
    even = [e for e in log.events if e.position % 2 == 0 or e.position % 5 == 0]
    odd = [e for e in log.events if e.position % 2 == 1 and e.position != 79]
    workers = [eventlet.spawn(deliver, consumers[0], even), eventlet.spawn(deliver, consumers[1], odd)]
    for worker in workers:
        worker.wait()
    consumers[0].catch_up()
    assert live_rows(notifications_db) == (fold(log.events), len(spec))


def _counting_writes(open_store, monkeypatch, fail_first: int = 0):
    """``open_store`` whose stores record each commit, with PostgreSQL's one-statement
    write (``save_if_current``, in autocommit) recorded the same way; the first
    ``fail_first`` of them fail."""
    writes, failures = [], [fail_first]

    def recorded(write):
        def wrapped(*args, **kwargs):
            if failures[0]:
                failures[0] -= 1
                raise ConnectionError("database went away")
            result = write(*args, **kwargs)
            writes.append(1)
            return result
        return wrapped

    monkeypatch.setattr(PostgresNotifications, "save_if_current", recorded(PostgresNotifications.save_if_current))

    def make():
        store = open_store()
        store.commit = recorded(store.commit)
        return store

    return make, writes


def test_deliveries_waiting_for_the_turn_commit_in_one_transaction(notifications_db, monkeypatch):
    log = Log(make_log(SPEC))
    make_session, writes = _counting_writes(notifications_db, monkeypatch)
    turn = Turn(eventlet.semaphore.Semaphore())
    projectors = [Projector(make_session, log.feed, turn=turn) for _ in range(3)]  # one per worker
    with turn.lock:  # busy applying something else while the deliveries arrive, as under load
        deliveries = list(log.events) + [log.events[3]]  # one of them delivered twice
        workers = [eventlet.spawn(projectors[i % 3].handle, event) for i, event in enumerate(deliveries)]
        _all_wait_for_the_turn(turn, workers)
    applied = [worker.wait() for worker in workers]
    assert sum(applied) == len(SPEC)  # each event counted once, by the caller that applied it
    assert len(writes) == 1
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))
    assert turn.pending == {}


def test_deliveries_arriving_while_the_database_answers_wait_for_the_next_batch(notifications_db, monkeypatch):
    # The batch is taken from what was pending when its rows were read: an event that
    # arrives during the read touches rows the batch did not load.
    spec = [("sent" if i % 5 else "read", 1 + i % 3, 4) for i in range(40)]
    log = Log(make_log(spec))
    def slowly(read):
        def slow_read(session, keys, *args, **kwargs):
            result = read(session, keys, *args, **kwargs)
            eventlet.sleep(0.005)  # not a wait: a slow database, so deliveries keep arriving meanwhile
            return result
        return slow_read

    monkeypatch.setattr(storage.Notifications, "lock_and_load", slowly(storage.Notifications.lock_and_load))  # SQLite
    monkeypatch.setattr(PostgresNotifications, "read_current", slowly(PostgresNotifications.read_current))  # PostgreSQL
    turn = Turn(eventlet.semaphore.Semaphore())
    workers = []
    for event in log.events:
        workers.append(eventlet.spawn(Projector(notifications_db, log.feed, turn=turn).handle, event))
        eventlet.sleep(0.002)  # pacing, not a wait: deliveries arrive one by one
    assert sum(worker.wait() for worker in workers) == len(spec)
    assert live_rows(notifications_db) == (fold(log.events), len(spec))


def test_a_failed_batch_is_left_for_the_next_caller_and_nothing_is_lost(notifications_db, monkeypatch):
    log = Log(make_log(SPEC))
    make_session, _writes = _counting_writes(notifications_db, monkeypatch, fail_first=1)
    turn = Turn(eventlet.semaphore.Semaphore())
    projectors = [Projector(make_session, log.feed, turn=turn) for _ in range(3)]  # one per worker
    with turn.lock:
        workers = [eventlet.spawn(projectors[i % 3].handle, event) for i, event in enumerate(log.events)]
        _all_wait_for_the_turn(turn, workers)
    outcomes = []
    for worker in workers:
        try:
            outcomes.append(worker.wait())
        except ConnectionError:
            outcomes.append("requeued")  # the broker would deliver this one again
    assert outcomes[0] == "requeued" and outcomes.count("requeued") == 1
    assert sum(o for o in outcomes if o != "requeued") == len(SPEC)  # the next caller applied all
    assert live_rows(notifications_db) == (fold(log.events), len(SPEC))
    assert projectors[0].handle(log.events[0]) == 0  # the redelivery changes nothing


def test_since_returns_newer_rows_oldest_first(notifications_db):
    log = Log(make_log([("sent", 1, 2), ("sent", 2, 1), ("sent", 1, 3)], clock_steps=[10]))
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        projector.handle(event)
    store = notifications_db()
    everything = store.since(1, 0.0)
    assert [(n["name"], n["data"]) for n in everything] == [(UNREAD_MESSAGE_COUNT, 2)]
    assert store.since(1, everything[-1]["timestamp"]) == []
    assert store.since(2, 0.0)[0]["data"] == 1
    assert store.since(99, 0.0) == []
    store.close()


def test_rebuild_swaps_in_exactly_the_replay_including_events_that_arrive_meanwhile(notifications_db):
    from services.notifications.replay import differences, rebuild

    events = make_log(SPEC * 5)
    log = Log(events[:40])
    projector = Projector(notifications_db, log.feed)
    for event in log.events[:30]:
        projector.handle(event)
    # damage the live rows: the rebuild must not care what they were
    store = notifications_db()
    store.session.execute(storage.LIVE.update().values(payload_json="999"))
    store.commit()
    store.close()

    seen = []

    def progress(position):
        seen.append(position)
        if len(seen) == 1:
            log.events = events  # the log grows while the replay runs

    position = rebuild(notifications_db, log.feed, progress)
    assert position == len(events)
    assert live_rows(notifications_db) == (fold(events), len(events))
    counts = {str(u): unread_by_definition(events, u) for u in USERS}
    assert differences(notifications_db, log.feed, lambda users: counts) == []
    # and live processing continues from the swapped-in position
    assert projector.handle(events[-1]) == 0


def test_verify_reports_each_kind_of_difference(notifications_db):
    from services.notifications.replay import differences

    log = Log(make_log(SPEC))
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        projector.handle(event)
    counts = {str(u): unread_by_definition(log.events, u) for u in USERS}
    assert differences(notifications_db, log.feed, lambda users: counts) == []
    store = notifications_db()
    store.session.execute(storage.LIVE.update().where(storage.LIVE.c.user_id == 1).values(payload_json="7"))
    store.commit()
    store.close()
    problems = differences(notifications_db, log.feed, lambda users: counts)
    assert any("user 1 unread_message_count: live 7" in p for p in problems)
    assert any("notifications 7, messages" in p for p in problems)


def test_verify_reports_a_user_action_that_became_two_events(notifications_db):
    # Both copies are in the log, so the projection and a replay agree: only the keys show it.
    from services.notifications.replay import differences

    first = MessageSent(sender_id=1, recipient_id=2, body="hi", position=1, occurred_at=START,
                        idempotency_key="1:abcdefgh12")
    log = Log([first, MessageSent(sender_id=1, recipient_id=2, body="hi", position=2, occurred_at=START,
                                  idempotency_key="1:other-key-1"),
               dataclasses.replace(first, position=3, event_id=uuid.uuid4())])
    projector = Projector(notifications_db, log.feed)
    for event in log.events:
        projector.handle(event)
    problems = differences(notifications_db, log.feed, lambda users: {"2": 3})
    assert problems == ["idempotency key 1:abcdefgh12 appears twice in the log: positions 1 and 3"]


def test_a_redelivered_event_announces_the_current_rows_again(notifications_db):
    # A process killed after its commit and before its announce: the broker delivers the
    # event again, to a projector that finds it applied. The gateways must still hear it.
    log = Log(make_log(SPEC))
    announced = []
    projector = Projector(notifications_db, log.feed, announce=announced.append)
    for event in log.events[:5]:
        projector.handle(event)
    announced.clear()
    assert projector.handle(log.events[1]) == 0  # a repeat: nothing applied
    rows, _ = live_rows(notifications_db)
    assert announced == [[rows[(1, UNREAD_MESSAGE_COUNT)]]]  # the row as it is now


def test_a_change_that_could_not_be_announced_is_announced_by_the_next_attempt():
    from types import SimpleNamespace

    from kernel.events import Event
    from services.notifications.projection import Row
    from services.notifications.service import ProjectorProvider

    published, failures = [], {"left": 1}

    def dispatch(event_type, payload):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("broker away")
        published.append(Event.from_dict(payload))

    provider = ProjectorProvider()
    provider.setup()
    service = SimpleNamespace(dispatch=dispatch)
    provider.announce(service, [Row(1, UNREAD_MESSAGE_COUNT, 1, 10.0)])  # fails: kept
    assert published == [] and list(provider.unannounced) == [(1, UNREAD_MESSAGE_COUNT)]
    provider.announce(service, [])  # the feed check's call: published now
    assert [(e.user_id, e.name, e.value, e.timestamp) for e in published] == [(1, UNREAD_MESSAGE_COUNT, 1, 10.0)]
    assert provider.unannounced == {}
    failures["left"] = 1
    provider.announce(service, [Row(2, UNREAD_MESSAGE_COUNT, 1, 11.0)])
    provider.announce(service, [Row(2, UNREAD_MESSAGE_COUNT, 2, 12.0)])  # a newer one replaces it
    assert [(e.user_id, e.value) for e in published[1:]] == [(2, 2)]


def test_a_replay_reads_each_event_as_from_dict_does_but_for_its_event_id():
    import re

    from kernel.events import Event, EventContractError

    keyed = MessageSent(sender_id=1, recipient_id=2, body="hi", position=7, idempotency_key="1:abcdefgh")
    for payload in [e.to_dict() for e in make_log(SPEC)] + [keyed.to_dict()]:
        event = projector._replayed(payload)
        assert event.event_id == payload["event_id"]  # its text: the fold never reads it
        assert dataclasses.replace(event, event_id=uuid.UUID(event.event_id)) == Event.from_dict(payload)
    good = keyed.to_dict()
    for bad in [{**good, "event_type": "Nope"}, {**good, "event_type": ["x"]}, {**good, "version": 2},
                {**good, "data": {"sender_id": 1}}, {**good, "data": {**good["data"], "extra": 1}},
                {**good, "occurred_at": "yesterday"}, {**good, "position": "x"}, {**good, "idempotency_key": 5},
                {k: v for k, v in good.items() if k != "event_id"}, [good]]:
        with pytest.raises(EventContractError) as expected:
            Event.from_dict(bad)
        with pytest.raises(EventContractError, match=f"^{re.escape(str(expected.value))}$"):
            projector._replayed(bad)


def test_a_replay_asks_for_the_next_two_batches_while_it_folds_one():
    # A JSON feed from a read with ``call_async`` (a nameko proxy's method): each full batch
    # asks for the next two, where they start if the log has no hole; a call takes the
    # reply asked for it, and a guess that turns out wrong is not used.
    import gc
    import json

    from kernel.events import Event

    payloads = [e.to_dict() for e in make_log(SPEC * 600)][:6000]
    asked = []

    def feed(after, limit):
        return json.loads(json.dumps([p for p in payloads if p["position"] > after][:limit]))

    class Reply:
        def __init__(self, after, limit):
            asked.append(after)
            self.text = json.dumps(feed(after, limit))  # made by the service while the replay folds

        def result(self):
            return self.text

    def read(after, limit):
        asked.append(after)
        return json.dumps(feed(after, limit))

    read.call_async = Reply
    folded = []

    def progress(position):
        folded.append((position, list(asked)))

    rows, position = projector.replay(projector.json_feed(read), apply, progress)
    assert (rows, position) == (fold(Event.from_dict(p) for p in payloads), 6000)
    # REPLAY_BATCH is 10,000: one short batch, no guess made; batches of 2500 next
    assert folded == [(6000, [0])]
    asked.clear()
    batches = projector.json_feed(read)
    assert [len(batches(after, 2500)) for after in (0, 2500, 5000)] == [2500, 2500, 1000]
    assert asked == [0, 2500, 5000, 7500]  # each ahead of its call, none asked twice
    asked.clear()
    assert batches(7500, 2500) == [] and asked == [7500]  # the guess at 7500 was dropped with the short batch
    asked.clear()
    assert [p["position"] for p in batches(1000, 2500)][::2499] == [1001, 3500] and asked == [1000, 3500, 6000]
    asked.clear()
    assert [p["position"] for p in batches(3499, 2500)][::2499] == [3500, 5999]  # not the reply asked at 3500
    assert asked == [3499, 5999, 8499]
    # Without ``call_async``, one call at a time.
    assert projector.replay(projector.json_feed(lambda after, limit: json.dumps(feed(after, limit))), apply) == (rows, 6000)
    collecting = []

    def json_text(after, limit):
        collecting.append(gc.isenabled())
        return json.dumps(feed(after, limit))

    assert projector.replay(projector.json_feed(json_text), apply) == (fold(Event.from_dict(p) for p in payloads), 6000)
    # The cycle collector pauses during the fold (it would traverse each batch again and
    # again) and resumes after, a failed replay included.
    assert collecting and not any(collecting) and gc.isenabled()
    with pytest.raises(projector.Gap):
        projector.replay(lambda after, limit: payloads[1:] if after == 0 else [], apply)
    assert gc.isenabled()
