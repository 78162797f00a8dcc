"""The users service's rules, as plain functions over a session: on SQLite and PostgreSQL."""
import hashlib

import pytest
from sqlalchemy import select

from kernel.errors import EmailTaken, InvalidCredentials, UsernameTaken, UserNotFound, ValidationFailed
from services.users import accounts
from services.users.models import User

PASSWORD = "correct horse battery"


def test_register_hashes_the_password_and_hides_it(users_db):
    profile = accounts.register(users_db, " susan ", "Susan@Example.com", PASSWORD)
    assert profile["username"] == "susan"
    assert set(profile) == {"id", "username", "about_me", "last_seen", "created_at", "avatar"}
    assert profile["avatar"] == hashlib.md5(b"susan@example.com").hexdigest()  # Gravatar's key, never the email
    user = users_db.session.scalar(select(User))
    assert user.email == "susan@example.com"
    assert PASSWORD not in user.password_hash
    assert user.password_hash.startswith(("scrypt:", "pbkdf2:"))


def test_usernames_and_emails_are_unique_ignoring_case(users_db):
    accounts.register(users_db, "susan", "susan@example.com", PASSWORD)
    with pytest.raises(UsernameTaken) as taken:
        accounts.register(users_db, "SUSAN", "other@example.com", PASSWORD)
    assert taken.value.field == "username"
    with pytest.raises(EmailTaken) as taken:
        accounts.register(users_db, "john", "SUSAN@EXAMPLE.COM", PASSWORD)
    assert taken.value.field == "email"
    assert users_db.session.query(User).count() == 1


@pytest.mark.parametrize(
    "username, email, password, field",
    [
        ("", "a@example.com", PASSWORD, "username"),
        ("a" * 65, "a@example.com", PASSWORD, "username"),
        ("bad/name", "a@example.com", PASSWORD, "username"),
        ("nul\x00", "a@example.com", PASSWORD, "username"),
        ("ok", "not-an-email", PASSWORD, "email"),
        ("ok", "", PASSWORD, "email"),
        ("ok", "a@example.com", "short", "password"),
        ("ok", "a@example.com", "x" * 129, "password"),
        (None, "a@example.com", PASSWORD, "username"),
    ],
)
def test_bad_registrations_name_the_field_and_store_nothing(users_db, username, email, password, field):
    with pytest.raises(ValidationFailed) as error:
        accounts.register(users_db, username, email, password)
    assert error.value.field == field
    assert error.value.message
    assert users_db.session.query(User).count() == 0


def test_authenticate_accepts_the_right_password_only(users_db):
    accounts.register(users_db, "susan", "susan@example.com", PASSWORD)
    assert accounts.authenticate(users_db, "Susan", PASSWORD)["username"] == "susan"
    for username, password in (("susan", "wrong"), ("nobody", PASSWORD), ("", ""), (None, None), ("a\x00", "b")):
        with pytest.raises(InvalidCredentials):
            accounts.authenticate(users_db, username, password)


def test_lookups(users_db):
    susan = accounts.register(users_db, "susan", "susan@example.com", PASSWORD)
    john = accounts.register(users_db, "john", "john@example.com", PASSWORD)
    assert accounts.get_user(users_db, susan["id"])["username"] == "susan"
    assert accounts.get_user_by_username(users_db, "JOHN")["id"] == john["id"]
    assert set(accounts.get_users(users_db, [susan["id"], john["id"], 999, "x", True])) == {
        str(susan["id"]), str(john["id"])
    }
    for bad in (999, "1", None, True):
        with pytest.raises(UserNotFound):
            accounts.get_user(users_db, bad)
    for bad in ("nobody", "a" * 500, "x\x00", None):
        with pytest.raises(UserNotFound):
            accounts.get_user_by_username(users_db, bad)


def test_update_profile(users_db):
    susan = accounts.register(users_db, "susan", "susan@example.com", PASSWORD)
    accounts.register(users_db, "john", "john@example.com", PASSWORD)
    updated = accounts.update_profile(users_db, susan["id"], "Susan", "  hello  ")
    assert (updated["username"], updated["about_me"]) == ("Susan", "hello")
    with pytest.raises(UsernameTaken):
        accounts.update_profile(users_db, susan["id"], "john", "")
    with pytest.raises(ValidationFailed) as error:
        accounts.update_profile(users_db, susan["id"], "Susan", "x" * 141)
    assert error.value.field == "about_me"
    with pytest.raises(ValidationFailed):
        accounts.update_profile(users_db, susan["id"], "Susan", "nul\x00")
    assert accounts.update_profile(users_db, susan["id"], "Susan", "y" * 140)["about_me"] == "y" * 140
    with pytest.raises(UserNotFound):
        accounts.update_profile(users_db, 999, "ghost", "")


def test_record_seen_moves_last_seen_forward(users_db):
    susan = accounts.register(users_db, "susan", "susan@example.com", PASSWORD)
    later = accounts.record_seen(users_db, susan["id"])
    assert later["last_seen"] >= susan["last_seen"]
