"""Passwords with ``@``, ``/``, ``#`` or ``:`` work: given as parts (RABBITMQ_*, POSTGRES_*,
what docker-compose.yml passes), the broker and database URLs are built escaped
(kernel/settings.py), and the servers accept them."""
import uuid
from urllib.parse import urlparse

import pytest
from kombu import Connection
from sqlalchemy.engine import make_url

from deploy.startup import StartupError, check_broker, check_database, redact
from kernel.settings import amqp_uri, database_url

PASSWORD = "p@ss/w#rd:%2F"
PARTS = ("AMQP_URI", "RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_VHOST",
         "USERS_DATABASE_URL", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD")


@pytest.fixture
def parts(monkeypatch):
    for name in PARTS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_settings_the_defaults_are_the_local_servers(parts):
    assert amqp_uri() == "amqp://guest:guest@127.0.0.1:5672/"
    assert database_url("users") == "postgresql://postgres@127.0.0.1:5432/microblog_users"


def test_urls_built_from_parts_carry_any_password_intact(parts):
    for name, value in {"RABBITMQ_HOST": "rabbitmq", "RABBITMQ_USER": "mb#1", "RABBITMQ_PASSWORD": PASSWORD,
                        "RABBITMQ_VHOST": "prod/eu", "POSTGRES_HOST": "postgres", "POSTGRES_PORT": "6432",
                        "POSTGRES_USER": "mb@1", "POSTGRES_PASSWORD": PASSWORD}.items():
        parts.setenv(name, value)
    broker = Connection(amqp_uri())
    assert (broker.hostname, broker.port, broker.userid, broker.password, broker.virtual_host) == (
        "rabbitmq", 5672, "mb#1", PASSWORD, "prod/eu")
    url = make_url(database_url("notifications"))
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "postgres", 6432, "mb@1", PASSWORD, "microblog_notifications")
    assert PASSWORD not in redact(amqp_uri()) and PASSWORD not in redact(database_url("users"))
    # A full URL still wins over the parts.
    parts.setenv("AMQP_URI", "amqp://u:p@elsewhere:5672/")
    parts.setenv("USERS_DATABASE_URL", "postgresql://u@elsewhere/users")
    assert (amqp_uri(), database_url("users")) == ("amqp://u:p@elsewhere:5672/", "postgresql://u@elsewhere/users")


def test_the_broker_and_the_database_accept_such_a_password(parts, real_infra, rabbit_config, rabbit_manager,
                                                            postgres):
    vhost = urlparse(rabbit_config["AMQP_URI"]).path[1:]
    user = f"mbtest-{uuid.uuid4().hex[:8]}"
    rabbit_manager._put("users", user, json={"password": PASSWORD, "tags": ""})
    try:
        rabbit_manager.set_vhost_permissions(vhost, user, ".*", ".*", ".*")
        for name, value in {"RABBITMQ_USER": user, "RABBITMQ_PASSWORD": PASSWORD, "RABBITMQ_VHOST": vhost}.items():
            parts.setenv(name, value)
        check_broker(amqp_uri(), timeout=5)
        # The password spliced into a URL as it is (what docker-compose.yml used to do) fails.
        with pytest.raises(StartupError):
            check_broker(f"amqp://{user}:{PASSWORD}@127.0.0.1:5672/{vhost}", timeout=1)
    finally:
        rabbit_manager._delete("users", user)

    # PostgreSQL: a role with that password, reached through the built URL (the database is a
    # throw-away one: the built name, microblog_users, may be someone's real database).
    admin = make_url(postgres.create("passwords"))
    role = f"mbtest_{uuid.uuid4().hex[:8]}"
    from sqlalchemy import create_engine, text

    engine = create_engine(admin.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
    try:
        for name, value in {"POSTGRES_HOST": admin.host or "127.0.0.1", "POSTGRES_PORT": str(admin.port or 5432),
                            "POSTGRES_USER": role, "POSTGRES_PASSWORD": PASSWORD}.items():
            parts.setenv(name, value)
        built = make_url(database_url("users")).set(database=admin.database)
        assert built.password == PASSWORD
        check_database(built.render_as_string(hide_password=False), "USERS_DATABASE_URL", timeout=5)
    finally:
        with engine.connect() as connection:
            connection.execute(text(f"DROP ROLE {role}"))
        engine.dispose()
