"""The users service's event log, on SQLite and PostgreSQL: registrations and profile edits
append exactly the events they should, the migration backfills accounts made before it,
and folding the feed gives the users table."""
import json
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, insert, select, text

from kernel.errors import EmailTaken, UsernameTaken, ValidationFailed
from kernel.eventlog import counters, event_log
from kernel.events import Event, ProfileChanged, UserRegistered
from services.users import accounts
from services.users.models import User
from services.users.replay import differences, fold

PASSWORD = "correct horse battery"


def fast_hash(password):
    return "h:" + password


def register(storage, name, email=None):
    return accounts.register(storage, name, email or f"{name.lower()}@example.com", PASSWORD, hasher=fast_hash)


def logged(storage) -> list[Event]:
    try:
        return storage.read_after(0)
    finally:
        storage.rollback()


def test_each_registration_appends_one_user_registered_at_the_next_position(users_db):
    susan, john = register(users_db, "susan"), register(users_db, "john")
    events = logged(users_db)
    assert [(type(e), e.position, e.user_id, e.username, e.about_me) for e in events] == [
        (UserRegistered, 1, susan["id"], "susan", ""), (UserRegistered, 2, john["id"], "john", "")]
    assert users_db.head() == 2
    # Nothing secret travels: the payload is the public name only.
    stored = users_db.session.execute(select(event_log.c.data)).scalars().all()
    assert [json.loads(data) for data in stored] == [
        {"user_id": susan["id"], "username": "susan", "about_me": ""},
        {"user_id": john["id"], "username": "john", "about_me": ""}]
    assert events[0].occurred_at.isoformat() == susan["created_at"]


def test_a_failed_registration_appends_nothing_and_leaves_no_gap(users_db):
    register(users_db, "susan")
    with pytest.raises(UsernameTaken):
        register(users_db, "SUSAN", "other@example.com")  # e.g. the same form submitted twice
    with pytest.raises(EmailTaken):
        register(users_db, "john", "susan@example.com")
    with pytest.raises(ValidationFailed):
        register(users_db, "bad/name")
    assert register(users_db, "john")["id"]
    assert [(e.position, e.username) for e in logged(users_db)] == [(1, "susan"), (2, "john")]


def test_a_registration_racing_to_the_unique_index_appends_nothing(users_db, monkeypatch):
    # The look-up finds the name free, then another registration commits it first: the
    # insert fails on the index and the event is never appended.
    register(users_db, "susan")
    real, calls = accounts._username_taken, []

    def free_at_first_look(session, name, except_id=None):
        calls.append(name)
        return len(calls) > 1 and real(session, name, except_id)

    monkeypatch.setattr(accounts, "_username_taken", free_at_first_look)
    with pytest.raises(UsernameTaken):
        accounts.register(users_db, "Susan", "susan2@example.com", PASSWORD, hasher=fast_hash)
    assert users_db.head() == 1 and len(logged(users_db)) == 1


def test_a_profile_edit_appends_profile_changed_only_when_something_changed(users_db):
    susan = register(users_db, "susan")["id"]
    accounts.update_profile(users_db, susan, "Susan2", "  hello  ")
    accounts.update_profile(users_db, susan, "Susan2", "hello")  # saved unchanged: a no-op
    accounts.update_profile(users_db, susan, " Susan2 ", None)  # about_me cleared
    events = logged(users_db)
    assert [(type(e), e.position, e.user_id, e.username, e.about_me) for e in events] == [
        (UserRegistered, 1, susan, "susan", ""),
        (ProfileChanged, 2, susan, "Susan2", "hello"),
        (ProfileChanged, 3, susan, "Susan2", "")]


def test_a_refused_profile_edit_appends_nothing(users_db):
    susan = register(users_db, "susan")["id"]
    register(users_db, "john")
    with pytest.raises(UsernameTaken):
        accounts.update_profile(users_db, susan, "JOHN", "")
    with pytest.raises(ValidationFailed):
        accounts.update_profile(users_db, susan, "susan", "x" * 141)
    assert users_db.head() == 2


def test_signing_in_publishes_nothing_and_a_sign_out_publishes_that_user_only(users_db):
    susan = register(users_db, "susan")["id"]
    accounts.authenticate(users_db, "susan", PASSWORD, checker=lambda hashed, password: True)
    accounts.record_seen(users_db, susan)
    token = accounts.open_session(users_db, susan, 60)["token"]
    assert users_db.head() == 1
    assert accounts.end_session(users_db, susan, token)
    ended = users_db.read_after(1, 10)
    assert [type(e).__name__ for e in ended] == ["SessionEnded"] and ended[0].user_id == susan
    assert "token" not in str(ended[0].to_dict()["data"])  # it names no session
    assert not accounts.end_session(users_db, susan, token)  # ending it again: nothing more
    assert users_db.head() == 2


def test_the_fold_of_the_feed_is_the_users_table(users_db):
    ids = [register(users_db, name)["id"] for name in ("susan", "john", "ann")]
    accounts.update_profile(users_db, ids[0], "sue", "about sue")
    accounts.update_profile(users_db, ids[1], "john", "about john")
    accounts.update_profile(users_db, ids[0], "susan", "about sue")  # and back
    assert fold(logged(users_db)) == {ids[0]: ("susan", "about sue"), ids[1]: ("john", "about john"),
                                      ids[2]: ("ann", "")}
    assert fold(logged(users_db)) == users_db.profiles()
    assert differences(users_db, batch=2) == []


def test_differences_names_an_account_changed_without_its_event(users_db):
    susan = register(users_db, "susan")["id"]
    john = register(users_db, "john")["id"]
    users_db.session.execute(text("UPDATE users SET username = 'mallory' WHERE id = :id"), {"id": john})
    users_db.session.execute(insert(User).values(username="ghost", email="g@example.com", password_hash="x",
                                                 about_me="", last_seen=func.now(), created_at=func.now()))
    users_db.commit()
    problems = differences(users_db)
    assert len(problems) == 2
    assert f"user {john}: the feed gives ('john', ''), the users table ('mallory', '')" in problems
    assert not any(f"user {susan}:" in problem for problem in problems)


def test_the_fold_is_pure_and_ignores_other_events():
    from kernel.events import InboxRead

    start = {1: ("a", "")}
    changed = ProfileChanged(user_id=1, username="b", about_me="x")
    assert fold([changed, InboxRead(user_id=1)], start) == {1: ("b", "x")}
    assert start == {1: ("a", "")}


def test_empty_tables_resets_the_users_counters(users_db_url):
    from kernel.db import create_db_engine, dispose
    from services.users.storage import STORAGE
    from tests.conftest import empty_tables

    engine = create_db_engine(users_db_url, pool_size=1)
    storage = STORAGE.open(engine)
    try:
        register(storage, "susan")
        storage.close()
        empty_tables(users_db_url)
        storage = STORAGE.open(engine)
        assert dict(storage.session.execute(select(counters.c.name, counters.c.position)).all()) == {
            "log_head": 0, "published": 0}
        assert register(storage, "john") and [e.position for e in logged(storage)] == [1]
    finally:
        storage.close()
        dispose(engine)


def test_the_migration_logs_every_account_made_before_it(users_db_url, tmp_path, request):
    """Migrate a database to 0002, add accounts (one renamed), then migrate to head."""
    from kernel.db import create_db_engine, dispose
    from kernel.migrations import upgrade
    from deploy.registry import SERVICES
    from services.users.storage import STORAGE

    if users_db_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'old-users.db'}"
    else:
        url = request.getfixturevalue("postgres").create("users_old")
    upgrade(SERVICES["users"].migrations, url, revision="0002")
    engine = create_db_engine(url, pool_size=1)
    created = [datetime(2025, 1, day, tzinfo=timezone.utc) for day in (3, 1, 2)]
    with engine.begin() as connection:
        for user_id, (name, about, when) in zip((7, 3, 5), [("c", "about c", created[0]), ("a", "", created[1]),
                                                             ("renamed-b", "bee", created[2])]):
            connection.execute(insert(User).values(id=user_id, username=name, email=f"{name}@example.com",
                                                   password_hash="x", about_me=about, last_seen=when,
                                                   created_at=when))
    upgrade(SERVICES["users"].migrations, url)
    storage = STORAGE.open(engine)
    try:
        events = logged(storage)
        assert [(type(e), e.position, e.user_id, e.username, e.about_me, e.occurred_at) for e in events] == [
            (UserRegistered, 1, 3, "a", "", created[1]),
            (UserRegistered, 2, 5, "renamed-b", "bee", created[2]),
            (UserRegistered, 3, 7, "c", "about c", created[0])]
        assert storage.outbox_state() == (3, 0)  # the relay publishes the backfill too
        assert differences(storage) == []
        # The log goes on from there.
        fresh = register(storage, "d")
        assert [(e.position, e.user_id) for e in logged(storage)][-1] == (4, fresh["id"])
    finally:
        storage.close()
        dispose(engine)


def test_a_profile_edit_reads_the_row_locked_so_two_edits_at_once_log_what_the_table_gets(users_db, users_db_url):
    # Two edits of one user at once (two tabs): unlocked, both would read the same row, the
    # second would save only the field it changed and log the other as it was before the
    # first edit, and the log would no longer fold to the table. So the edit reads the row
    # FOR UPDATE (PostgreSQL; SQLite has one writer at a time) and builds its event from
    # the row as the previous edit left it.
    from sqlalchemy import event

    susan = register(users_db, "susan")["id"]
    statements = []
    bind = users_db.session.get_bind()
    listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(bind, "before_cursor_execute", listener)
    try:
        accounts.update_profile(users_db, susan, "sue", "hello")
    finally:
        event.remove(bind, "before_cursor_execute", listener)
    [read] = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM users" in s
              and "users.id =" in s]
    assert ("FOR UPDATE" in read) == users_db_url.startswith("postgresql"), read
    assert differences(users_db) == []
