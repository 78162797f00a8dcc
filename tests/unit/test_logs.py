"""Expected errors of a service are logged as one clipped line; unexpected ones keep their traceback.

A users service in a nameko container on the embedded transport and SQLite (no servers
needed), its entry points called through ``entrypoint_hook``, which runs them the way an
RPC does (nameko's container logs the outcome).
"""
import logging

import pytest
from nameko.testing.services import entrypoint_hook

from kernel import logs
from kernel.errors import UserNotFound, ValidationFailed
from tests.helpers import PASSWORD

LONG_NAME = "a" * 5000


@pytest.fixture
def users_container(tmp_path, container_factory):
    from deploy.registry import SERVICES
    from kernel import memory_transport
    from kernel.migrations import upgrade
    from services.users.service import UsersService

    memory_transport.register()
    url = f"sqlite:///{tmp_path / 'users.db'}"
    upgrade(SERVICES["users"].migrations, url)
    logs.install()
    container = container_factory(UsersService, {"AMQP_URI": "embedded://", "DB_POOL_SIZE": 1,
                                                 "USERS_DATABASE_URL": url})
    container.start()
    return container


def _container_records(caplog):
    return [r for r in caplog.records if r.name == logs.CONTAINER_LOGGER and r.levelno >= logging.WARNING]


def test_an_expected_error_is_one_line_with_the_input_clipped(users_container, caplog):
    caplog.set_level(logging.INFO)
    with entrypoint_hook(users_container, "get_user_by_username") as get_user_by_username:
        with pytest.raises(UserNotFound):
            get_user_by_username(LONG_NAME + "\nFORGED line")
    [record] = _container_records(caplog)
    line = caplog.handler.format(record)
    assert record.exc_info is None and "Traceback" not in line
    assert "\n" not in line and "FORGED" not in line
    assert len(line) < 400, line
    assert record.levelno == logging.WARNING
    assert "(expected) users.get_user_by_username: UserNotFound: User " + "a" * 100 + "…(+" in line


def test_validation_errors_and_unknown_ids_are_one_line_too(users_container, caplog):
    caplog.set_level(logging.INFO)
    with entrypoint_hook(users_container, "register") as register:
        with pytest.raises(ValidationFailed):
            register(LONG_NAME, "susan@example.com", PASSWORD)
    with entrypoint_hook(users_container, "get_user") as get_user:
        with pytest.raises(UserNotFound):
            get_user("9" * 5000)
    records = _container_records(caplog)
    assert len(records) == 2
    for record in records:
        line = caplog.handler.format(record)
        assert record.exc_info is None and "Traceback" not in line and len(line) < 400, line
    assert "users.register: ValidationFailed: Usernames are at most 64 characters." in caplog.text
    assert "users.get_user: UserNotFound: No user with id '" + "9" * 99 + "…(+" in caplog.text


def test_an_unexpected_error_keeps_its_traceback(users_container, caplog, monkeypatch):
    from services.users import accounts

    def broken(session, user_id):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(accounts, "get_user", broken)
    caplog.set_level(logging.INFO)
    with entrypoint_hook(users_container, "get_user") as get_user:
        with pytest.raises(ZeroDivisionError):
            get_user(1)
    [record] = _container_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "Traceback" in caplog.text and "ZeroDivisionError: a bug" in caplog.text


def test_clip_escapes_control_characters_and_says_how_much_it_cut():
    assert logs.clip("short") == "short"
    assert logs.clip("x" * 150) == "x" * 100 + "…(+50 chars)"
    assert logs.clip("a\nb\x00c") == "a\\nb\\x00c"
    assert logs.clip(12345) == "12345"


def test_install_is_idempotent():
    logs.install()
    logs.install()
    logger = logging.getLogger(logs.CONTAINER_LOGGER)
    assert sum(isinstance(f, logs.ExpectedErrors) for f in logger.filters) == 1
