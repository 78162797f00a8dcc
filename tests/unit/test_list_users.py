"""Finding people (``list_users``, the ``/explore`` page's one RPC): newest first, pages,
a case-insensitive name prefix matched literally; on SQLite and PostgreSQL."""
import pytest

from kernel.errors import ValidationFailed
from services.users import accounts

PASSWORD = "correct horse battery"


def _register(users_db, *names):
    return [accounts.register(users_db, name, f"{name}@example.com", PASSWORD, hasher=lambda p: "not-a-hash")
            for name in names]


def _names(page):
    return [user["username"] for user in page["users"]]


def test_everyone_newest_first_as_public_profiles(users_db):
    profiles = _register(users_db, "susan", "john", "Sam")
    page = accounts.list_users(users_db)
    assert _names(page) == ["Sam", "john", "susan"]
    assert page["users"] == list(reversed(profiles))  # public profiles only: no email, no hash
    assert (page["page"], page["has_prev"], page["has_next"]) == (1, False, False)


def test_pages_of_per_page_know_whether_another_follows(users_db):
    _register(users_db, *(f"user{n}" for n in range(5)))
    pages = [accounts.list_users(users_db, page, per_page=2) for page in (1, 2, 3, 4)]
    assert [_names(p) for p in pages] == [["user4", "user3"], ["user2", "user1"], ["user0"], []]
    assert [(p["has_prev"], p["has_next"]) for p in pages] == [(False, True), (True, True), (True, False),
                                                               (True, False)]
    exact = accounts.list_users(users_db, 2, per_page=2, q="user")
    assert exact["has_next"] is True
    _register(users_db, "x")
    assert accounts.list_users(users_db, 3, q="user", per_page=2)["has_next"] is False


def test_the_prefix_ignores_case_and_spaces_around_it(users_db):
    _register(users_db, "Susan", "susanna", "john", "asusan")
    assert _names(accounts.list_users(users_db, q="SUS")) == ["susanna", "Susan"]
    assert _names(accounts.list_users(users_db, q="  su ")) == ["susanna", "Susan"]
    assert _names(accounts.list_users(users_db, q="susan")) == ["susanna", "Susan"]
    assert _names(accounts.list_users(users_db, q="susann")) == ["susanna"]
    assert _names(accounts.list_users(users_db, q="")) == ["asusan", "john", "susanna", "Susan"]
    assert _names(accounts.list_users(users_db, q=None)) == ["asusan", "john", "susanna", "Susan"]
    assert _names(accounts.list_users(users_db, q="nobody")) == []


def test_like_metacharacters_in_the_prefix_are_literal(users_db):
    _register(users_db, "a_b", "axb", "a.b", "ab")
    assert _names(accounts.list_users(users_db, q="a_")) == ["a_b"]  # not "any one character"
    assert _names(accounts.list_users(users_db, q="a.")) == ["a.b"]
    for q in ("%", "a%", "%b", "\\", "a\\", "a b", "é", "a\x00", "'; --"):
        assert accounts.list_users(users_db, q=q)["users"] == [], q
    # The storage escapes on its own too, for a prefix that reaches it.
    assert users_db.newest_users("%", 0, 10) == []
    assert [u.username for u in users_db.newest_users("_", 0, 10)] == []
    assert [u.username for u in users_db.newest_users("a\\", 0, 10)] == []
    assert [u.username for u in users_db.newest_users("A_", 0, 10)] == ["a_b"]


@pytest.mark.parametrize("page", [0, -1, 2**31, "1", 1.0, None, True])
def test_bad_pages_are_refused(users_db, page):
    with pytest.raises(ValidationFailed) as error:
        accounts.list_users(users_db, page)
    assert error.value.field == "page"


def test_the_last_page_number_is_allowed_and_empty(users_db):
    _register(users_db, "susan")
    page = accounts.list_users(users_db, 2**31 - 1)
    assert page["users"] == [] and page["has_prev"] and not page["has_next"]


@pytest.mark.parametrize("q", ["a" * 65, 5, ["su"], b"su"])
def test_bad_searches_are_refused(users_db, q):
    with pytest.raises(ValidationFailed) as error:
        accounts.list_users(users_db, 1, q)
    assert error.value.field == "q"


def test_a_search_as_long_as_a_username_is_allowed(users_db):
    name = "a" * 64
    _register(users_db, name)
    assert _names(accounts.list_users(users_db, q=name)) == [name]
    assert _names(accounts.list_users(users_db, q=" " + name + " ")) == [name]


def test_the_rpc_entry_point(users_db):
    from nameko.testing.services import worker_factory

    from services.users.service import UsersService

    service = worker_factory(UsersService, db=users_db)
    susan = service.register("susan", "susan@example.com", PASSWORD)
    assert service.list_users() == {"users": [susan], "page": 1, "per_page": 25, "has_prev": False,
                                    "has_next": False}
    assert service.list_users(1, "SU")["users"] == [susan]
    assert service.list_users(2, "su")["users"] == []
    with pytest.raises(ValidationFailed):
        service.list_users("2")
