"""The event log, commands and the inbox read model, on SQLite and PostgreSQL."""
import json
from datetime import datetime, timedelta, timezone

import eventlet
import pytest
from sqlalchemy import func, select

from kernel.errors import RecipientNotFound, ValidationFailed
from kernel.events import InboxRead, MessageSent
from kernel.eventlog import event_log
from services.messages import commands
from services.messages.models import InboxMessage
from services.messages.storage import PostgresMessages, SqliteMessages
from tests.helpers import storage_of


def everyone_exists(_user_id):
    return True


def send(make_session, sender, recipient, body):
    session = make_session()
    try:
        return commands.send_message(session, sender, recipient, body, everyone_exists)
    finally:
        session.close()


def read(make_session, user):
    session = make_session()
    try:
        return commands.mark_inbox_read(session, user)
    finally:
        session.close()


def test_concurrent_senders_and_a_tailing_reader_see_every_event_once_in_order(messages_db):
    make_session = storage_of(messages_db)
    senders, per_sender = 8, 25
    total = senders * per_sender
    seen = []
    finished = []

    def sender(number):
        for i in range(per_sender):
            send(make_session, number, 100 + number % 3, f"{number}-{i}")
            eventlet.sleep(0)  # not a wait: yield, so the senders and the reader interleave
        finished.append(number)

    def reader():
        last = 0
        while len(seen) < total:
            session = make_session()
            batch = session.read_after(last, limit=7)
            session.close()
            for event in batch:
                seen.append((event.position, event.body))
                last = event.position
            eventlet.sleep(0)  # not a wait: yield; the reader tails the log while it grows

    tail = eventlet.spawn(reader)
    workers = [eventlet.spawn(sender, n) for n in range(1, senders + 1)]
    for worker in workers:
        worker.wait()
    with eventlet.Timeout(30):
        tail.wait()
    assert [position for position, _ in seen] == list(range(1, total + 1))
    assert sorted(body for _, body in seen) == sorted(f"{n}-{i}" for n in range(1, senders + 1) for i in range(per_sender))


def test_send_appends_message_sent_and_updates_the_inbox_in_one_go(messages_db):
    make_session = storage_of(messages_db)
    event = send(make_session, 1, 2, "  hello  ")
    assert event["event_type"] == "MessageSent" and event["position"] == 1
    assert event["data"] == {"sender_id": 1, "recipient_id": 2, "body": "hello"}
    session = make_session()
    assert session.unread_count(2) == 1
    assert session.page_of(2, 1)["messages"][0]["body"] == "hello"
    session.close()


@pytest.mark.parametrize("body", ["", "   ", "x" * 141, None, 5, "nul\x00"])
def test_bad_bodies_are_refused_and_nothing_is_appended(messages_db, body):
    make_session = storage_of(messages_db)
    with pytest.raises(ValidationFailed) as error:
        send(make_session, 1, 2, body)
    assert error.value.field == "message"
    session = make_session()
    assert session.head() == 0 and session.session.scalar(select(func.count()).select_from(event_log)) == 0
    session.close()


def test_unknown_recipient_is_refused_and_nothing_is_appended(messages_db):
    make_session = storage_of(messages_db)
    session = make_session()
    for recipient in (99, "2", None, True):
        with pytest.raises(RecipientNotFound):
            commands.send_message(session, 1, recipient, "hi", lambda user_id: user_id != 99)
    assert session.head() == 0
    session.close()


def test_a_failed_transaction_leaves_no_event_and_no_gap(messages_db, monkeypatch):
    make_session = storage_of(messages_db)
    # A read-model insert that fails, in either database's way of applying the rules.
    monkeypatch.setattr(PostgresMessages, "PROJECTIONS",
                        {"MessageSent": ("INSERT INTO inbox_messages (id) SELECT NULL FROM logged",)})
    monkeypatch.setattr(SqliteMessages, "RULES", {"MessageSent": "INSERT INTO inbox_messages (id) SELECT NULL FROM {source}"})
    with pytest.raises(Exception):
        send(make_session, 1, 2, "lost?")
    monkeypatch.undo()
    assert send(make_session, 1, 2, "kept")["position"] == 1
    session = make_session()
    assert [e.body for e in session.read_after(0)] == ["kept"]
    assert session.session.scalar(select(func.count()).select_from(InboxMessage)) == 1
    session.close()


def test_unread_count_is_messages_after_the_latest_inbox_read(messages_db):
    make_session = storage_of(messages_db)
    send(make_session, 1, 2, "a")
    send(make_session, 3, 2, "b")
    send(make_session, 2, 1, "to someone else")
    session = make_session()
    assert session.unread_count(2) == 2
    session.close()
    assert read(make_session, 2)["event_type"] == "InboxRead"
    send(make_session, 1, 2, "c")
    session = make_session()
    assert session.unread_count(2) == 1
    assert session.unread_count(1) == 1
    assert session.unread_count(42) == 0
    session.close()


def test_pages_are_newest_first_25_a_page(messages_db):
    make_session = storage_of(messages_db)
    for i in range(30):
        send(make_session, 1, 2, f"m{i}")
    session = make_session()
    first, second, past = (session.page_of(2, page) for page in (1, 2, 3))
    assert [m["body"] for m in first["messages"]] == [f"m{i}" for i in range(29, 4, -1)]
    assert [m["body"] for m in second["messages"]] == [f"m{i}" for i in range(4, -1, -1)]
    assert (first["pages"], first["has_next"], first["has_prev"]) == (2, True, False)
    assert (second["has_next"], second["has_prev"]) == (False, True)
    assert past["messages"] == [] and past["pages"] == 2
    assert session.page_of(2, 10**30)["messages"] == []
    session.close()


def test_replay_rebuilds_exactly_the_same_read_model(messages_db):
    make_session = storage_of(messages_db)
    for i in range(40):
        send(make_session, 1 + i % 4, 1 + (i * 7) % 5, f"message {i}")
        if i % 9 == 0:
            read(make_session, 1 + i % 5)
    session = make_session()
    before = session.snapshot()
    assert before[0] and before[1]
    progress = []
    assert session.rebuild(progress=progress.append) == session.head()
    assert progress and progress[-1] == session.head()
    session.close()
    session = make_session()
    assert session.snapshot() == before
    session.close()


def test_feed_returns_batches_of_at_most_1000(messages_db):
    make_session = storage_of(messages_db)
    session = make_session()
    for i in range(1005):
        session.append(InboxRead(user_id=1) if i % 2 else MessageSent(sender_id=1, recipient_id=2, body=str(i)))
    session.commit()
    first = session.read_after(0, limit=5000)
    assert len(first) == 1000 and first[0].position == 1 and first[-1].position == 1000
    rest = session.read_after(1000)
    assert [e.position for e in rest] == [1001, 1002, 1003, 1004, 1005]
    assert session.read_after(1005) == []
    assert [e.position for e in session.read_after(10, limit=3)] == [11, 12, 13]
    assert session.head() == 1005
    session.close()


def test_the_json_feed_is_the_feed_as_one_text_in_batches_of_up_to_10000(messages_db):
    # The replay's feed: the database writes the payloads' JSON. It must read back as
    # exactly what ``events_after`` gives, and spell times as ``isoformat`` does.
    make_session = storage_of(messages_db)
    session = make_session()
    assert session.events_after_json(0) == "[]"
    moment = datetime(2026, 11, 24, 1, 2, 3, tzinfo=timezone.utc)
    events = [MessageSent(sender_id=1, recipient_id=2, body='quotes " \\ and ünïcödé ✓ \n', occurred_at=moment,
                          idempotency_key='1:key-with_"odd"-chars'),
              InboxRead(user_id=2, occurred_at=moment + timedelta(microseconds=7)),
              MessageSent(sender_id=2, recipient_id=1, body="x", occurred_at=moment + timedelta(seconds=1, microseconds=120000))]
    for i in range(10_010):
        session.append(events[i] if i < len(events) else InboxRead(user_id=i % 7, occurred_at=moment + timedelta(milliseconds=i)))
    session.commit()
    text = session.events_after_json(0, limit=3)
    assert json.loads(text) == session.events_after(0, limit=3)
    assert '"occurred_at":"2026-11-24T01:02:03+00:00"' in text
    assert '"occurred_at":"2026-11-24T01:02:03.000007+00:00"' in text
    assert '"occurred_at":"2026-11-24T01:02:04.120000+00:00"' in text
    assert [p.get("idempotency_key") for p in json.loads(text)] == ['1:key-with_"odd"-chars', None, None]
    for after in (0, 1000, 9000):
        assert json.loads(session.events_after_json(after, limit=1000)) == session.events_after(after, limit=1000)
    whole = json.loads(session.events_after_json(5, limit=50_000))
    assert [p["position"] for p in whole] == list(range(6, 10_006))  # at most 10,000 a batch
    assert json.loads(session.events_after_json(10_005, limit=50_000)) == session.events_after(10_005)
    assert session.events_after_json(10_010) == "[]"
    session.close()


def test_sends_during_a_replay_are_kept_and_the_swap_takes_them_in(messages_db, monkeypatch):
    # Today's failure was an IntegrityError on inbox_messages_pkey when sends arrived while
    # the replay rebuilt the live tables. Now it builds beside them: sends made between
    # the build and the swap land in the live tables, and the swap applies them from the
    # log (with the log_head row held) before replacing the live rows.
    make_session = storage_of(messages_db)
    for i in range(30):
        send(make_session, 1 + i % 3, 1 + i % 4, f"before {i}")
    read(make_session, 2)
    during = []
    real_build = SqliteMessages._replay_into_rebuild  # the same method on both recorders

    def build_then_send(self, after, upto, progress):
        built = real_build(self, after, upto, progress)
        for i in range(5):
            during.append(send(make_session, 4, 1 + i % 2, f"during {i}")["position"])
        during.append(read(make_session, 1)["position"])
        return built

    monkeypatch.setattr(SqliteMessages, "_replay_into_rebuild", build_then_send)
    monkeypatch.setattr(PostgresMessages, "_replay_into_rebuild", build_then_send)
    session = make_session()
    before = session.snapshot()
    session.close()
    session = make_session()
    assert session.rebuild() == 37 and during == list(range(32, 38))
    after = session.snapshot()
    session.close()
    messages, states = after
    assert messages[:len(before[0])] == before[0]
    assert [m[3] for m in messages[len(before[0]):]] == [f"during {i}" for i in range(5)]
    assert dict(states) == {**dict(before[1]), 1: 37}
    monkeypatch.undo()
    session = make_session()
    assert session.rebuild() == 37 and session.snapshot() == after  # a replay of a quiet log changes nothing
    session.close()
