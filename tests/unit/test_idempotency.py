"""A user action appends at most one event: sends carry an idempotency key, and the log
holds each key once (SQLite and PostgreSQL, sequential and racing repeats)."""
import uuid

import eventlet
import pytest
from sqlalchemy import func, select

from kernel.errors import ValidationFailed
from kernel.eventlog import event_log
from kernel.events import Event, MessageSent
from services.messages import commands
from services.messages.models import InboxMessage
from tests.helpers import storage_of
from tests.waiting import wait_until


def everyone_exists(_user_id):
    return True


def send(make_session, sender, recipient, body, key):
    session = make_session()
    try:
        return commands.send_message(session, sender, recipient, body, everyone_exists, idempotency_key=key)
    finally:
        session.close()


def count(make_session, model=event_log) -> int:
    session = make_session()
    try:
        return session.session.scalar(select(func.count()).select_from(model))
    finally:
        session.close()


def test_a_repeated_send_returns_the_first_event_and_appends_nothing(messages_db):
    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    first = send(make_session, 1, 2, "hello", key)
    again = send(make_session, 1, 2, "hello", key)
    assert again == first  # same event id, position and time: the caller cannot tell
    assert first["idempotency_key"] == f"1:{key}"
    assert count(make_session) == 1 and count(make_session, InboxMessage) == 1
    session = make_session()
    assert session.unread_count(2) == 1
    assert session.head() == 1  # no position was used up by the repeat
    session.close()
    assert send(make_session, 1, 2, "hello", uuid.uuid4().hex)["position"] == 2  # a new action appends


def test_the_key_travels_with_the_event_through_the_feed(messages_db):
    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    send(make_session, 3, 4, "hi", key)
    session = make_session()
    [payload] = session.events_after(0)
    session.close()
    assert payload["idempotency_key"] == f"3:{key}"
    assert Event.from_dict(payload).idempotency_key == f"3:{key}"


def test_the_same_key_with_a_different_message_is_refused_not_answered_with_the_other(messages_db):
    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    send(make_session, 1, 2, "hello", key)
    for sender, recipient, body in ((1, 2, "something else"), (1, 3, "hello")):
        with pytest.raises(ValidationFailed, match="already used"):
            send(make_session, sender, recipient, body, key)
    assert count(make_session) == 1


def test_keys_are_scoped_to_the_sender(messages_db):
    # Another user who somehow holds my key neither blocks my send nor sees my message.
    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    mine = send(make_session, 1, 2, "hello", key)
    theirs = send(make_session, 5, 2, "hello", key)
    assert theirs["position"] != mine["position"]
    assert count(make_session) == 2


@pytest.mark.parametrize("key", ["", "short", "x" * 65, "has space in it", "semi;colon!", 42, ["a" * 10]])
def test_a_malformed_key_is_refused(messages_db, key):
    make_session = storage_of(messages_db)
    with pytest.raises(ValidationFailed) as error:
        send(make_session, 1, 2, "hello", key)
    assert error.value.field == "idempotency_key"
    assert count(make_session) == 0


def test_concurrent_repeats_of_one_send_append_one_event(messages_db):
    # A redelivered request and the user's retry arriving together: on PostgreSQL both
    # statements find no earlier event in their snapshot and race for the log's head; the
    # loser hits the unique index and answers with the winner's event.
    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    results = []

    def attempt():
        results.append(send(make_session, 1, 2, "once", key))

    threads = [eventlet.spawn(attempt) for _ in range(12)]
    for thread in threads:
        thread.wait()
    assert len(results) == 12
    assert len({r["event_id"] for r in results}) == 1
    assert count(make_session) == 1 and count(make_session, InboxMessage) == 1
    # The log's head was not moved by the refused appends: the next event is position 2.
    assert send(make_session, 1, 2, "next", uuid.uuid4().hex)["position"] == 2


def test_sends_without_a_key_still_append_each_time(messages_db):
    # The domain function allows it (replays, tools); the RPC entry point requires a key.
    make_session = storage_of(messages_db)
    for _ in range(2):
        session = make_session()
        commands.send_message(session, 1, 2, "hello", everyone_exists)
        session.close()
    assert count(make_session) == 2


def test_the_rpc_entry_point_requires_a_key():
    from nameko.testing.services import worker_factory

    from services.messages.service import MessagesService

    service = worker_factory(MessagesService)
    with pytest.raises(ValidationFailed) as error:
        service.send_message(1, 2, "hello")
    assert error.value.field == "idempotency_key"


def test_event_contract_refuses_a_key_that_is_not_a_string():
    from kernel.events import EventContractError

    payload = MessageSent(sender_id=1, recipient_id=2, body="x").to_dict()
    assert "idempotency_key" not in payload  # absent unless set: the payload shape is unchanged
    payload["idempotency_key"] = 7
    with pytest.raises(EventContractError):
        Event.from_dict(payload)


def test_two_repeats_queued_behind_the_log_head_lock_append_one_event(messages_db_url):
    # The race made deterministic (PostgreSQL): another transaction holds the log head's
    # lock while both repeats start, so both find no earlier event and both wait; the
    # second to get the lock must answer with the first's event, not a second copy and
    # not an error.
    if not messages_db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises whole transactions (BEGIN IMMEDIATE): there is no such race")
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from kernel.db import create_db_engine, dispose

    engine = create_db_engine(messages_db_url, pool_size=4)
    make_session = storage_of((engine, sessionmaker(engine, expire_on_commit=False)))
    key = uuid.uuid4().hex
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT position FROM counters WHERE name = 'log_head' FOR UPDATE"))
            attempts = [eventlet.spawn(send, make_session, 1, 2, "once", key) for _ in range(2)]
            with engine.connect() as watcher:  # wait until both statements are blocked on the lock
                def blocked_statements():
                    waiting = watcher.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")).scalar()
                    watcher.rollback()  # pg_stat_activity is read once per transaction
                    return waiting

                wait_until(lambda: blocked_statements() == 2, timeout=5, message="both sends are not blocked on the lock")
            holder.rollback()
        results = [attempt.wait() for attempt in attempts]
        assert results[0] == results[1]
        assert count(make_session) == 1 and count(make_session, InboxMessage) == 1
    finally:
        dispose(engine)


def test_a_repeat_is_answered_while_the_users_service_is_away(messages_db):
    from kernel.errors import DependencyUnavailable

    make_session = storage_of(messages_db)
    key = uuid.uuid4().hex
    first = send(make_session, 1, 2, "hello", key)

    def users_away(_user_id):
        raise DependencyUnavailable("users did not answer within 10 s")

    session = make_session()
    try:
        assert commands.send_message(session, 1, 2, "hello", users_away, idempotency_key=key) == first
        with pytest.raises(DependencyUnavailable):  # a new send still needs the check
            commands.send_message(session, 1, 2, "hello", users_away, idempotency_key=uuid.uuid4().hex)
    finally:
        session.close()
    assert count(make_session) == 1


@pytest.mark.parametrize("sender", [0, -1, 2**31, 10**30])
def test_a_sender_id_out_of_range_is_refused(messages_db, sender):
    make_session = storage_of(messages_db)
    with pytest.raises(ValidationFailed):
        send(make_session, sender, 2, "hello", uuid.uuid4().hex)
