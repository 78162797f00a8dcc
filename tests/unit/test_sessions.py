"""Server-side sessions: the users service's rules (SQLite and PostgreSQL) and the
gateway's per-process cache of recent checks."""

import pytest
from sqlalchemy import func, select

from kernel.errors import UserNotFound, ValidationFailed
from services.users import accounts
from services.users.models import UserSession

PASSWORD = "correct horse battery"


@pytest.fixture
def susan(users_db):
    return accounts.register(users_db, "susan", "susan@example.com", PASSWORD, hasher=lambda p: "h:" + p)["id"]


def test_a_session_is_live_until_it_ends(users_db, susan):
    opened = accounts.open_session(users_db, susan, 3600)
    token = opened["token"]
    assert accounts.check_session(users_db, susan, token)["username"] == "susan"
    # When it ends, so that a gateway keeping the answer a while never keeps it past that.
    assert accounts.check_session(users_db, susan, token)["session_expires_at"] == opened["expires_at"]
    assert accounts.end_session(users_db, susan, token) > 0  # its SessionEnded's position
    assert accounts.check_session(users_db, susan, token) is None
    assert accounts.end_session(users_db, susan, token) == 0  # twice is harmless


def test_sessions_are_independent(users_db, susan):
    first = accounts.open_session(users_db, susan, 3600)["token"]
    second = accounts.open_session(users_db, susan, 3600)["token"]
    assert first != second
    accounts.end_session(users_db, susan, first)
    assert accounts.check_session(users_db, susan, second) is not None


def test_a_token_is_no_good_for_another_user_or_altered(users_db, susan):
    john = accounts.register(users_db, "john", "john@example.com", PASSWORD, hasher=lambda p: "h:" + p)["id"]
    token = accounts.open_session(users_db, susan, 3600)["token"]
    assert accounts.check_session(users_db, john, token) is None
    assert accounts.end_session(users_db, john, token) == 0  # john cannot end susan's
    assert accounts.check_session(users_db, susan, token) is not None
    for bad in (token + "x", token[:-1], "", "x" * 5000, None, 5, [token]):
        assert accounts.check_session(users_db, susan, bad) is None, bad
    for bad_id in (None, "1", True, 1.0, 10**30):
        assert accounts.check_session(users_db, bad_id, token) is None


def test_expired_sessions_are_refused_and_cleared_at_the_next_sign_in(users_db, susan, monkeypatch):
    from datetime import timedelta

    # One second (50 ms was a race with a slow disk: the session could expire before its
    # first check); the clock is then moved past it, so nothing waits.
    token = accounts.open_session(users_db, susan, 1)["token"]
    assert accounts.check_session(users_db, susan, token) is not None
    later = accounts.utcnow() + timedelta(seconds=2)
    monkeypatch.setattr(accounts, "utcnow", lambda: later)  # the accounts' clock moves on: no waiting
    assert accounts.check_session(users_db, susan, token) is None
    accounts.open_session(users_db, susan, 3600)
    assert users_db.session.scalar(select(func.count()).select_from(UserSession)) == 1


def test_only_a_hash_of_the_token_is_stored(users_db, susan):
    token = accounts.open_session(users_db, susan, 3600)["token"]
    [row] = users_db.session.scalars(select(UserSession))
    assert token not in row.token_hash and len(row.token_hash) == 64


def test_opening_a_session_checks_its_arguments(users_db, susan):
    with pytest.raises(UserNotFound):
        accounts.open_session(users_db, susan + 1, 3600)
    for lifetime in (0, -1, "3600", None, True):
        with pytest.raises(ValidationFailed):
            accounts.open_session(users_db, susan, lifetime)


@pytest.mark.parametrize("raw, parsed", [
    ("5:abc", (5, "abc")), ("5", None), ("5:", None), (":abc", None), ("5:a:b", None),
    ("x:abc", None), ("²:abc", None), ("9" * 19 + ":abc", None), (None, None), (5, None),
])
def test_parse_session_id(raw, parsed):
    from gateway.session_user import parse_session_id

    assert parse_session_id(raw) == parsed
