"""Test fixtures shared by every level.

Real RabbitMQ (with its management API, which nameko's ``rabbit_config`` uses to make a
vhost per test) and PostgreSQL: every test that needs them is marked ``real``
(automatically, below), so ``-m "not real"`` selects the rest on purpose. ``make test``
checks for the servers first (tests/preflight.py) and stops with what to run when one is
missing; under CI (``MICROBLOG_REQUIRE_REAL=1``, set by .ci/run) their absence fails each
test; elsewhere such tests are skipped, with the reason in the summary and a banner.
"""
import eventlet

eventlet.monkey_patch()  # before anything opens a socket or starts a thread (nameko's fixtures need it)

import os  # noqa: E402
import socket  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import pytest  # noqa: E402

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

REQUIRE_REAL = os.environ.get("MICROBLOG_REQUIRE_REAL") == "1"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
TEST_SECRET = "test-secret-key-not-for-production"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def pytest_addoption(parser):
    parser.addoption("--no-real", action="store_true", help="skip tests that need RabbitMQ and PostgreSQL")


# Nameko's --rabbit-amqp-uri / --rabbit-api-uri may also come from the environment (as for
# tests/preflight.py), so `RABBIT_API_URI=... make test` reaches both.
_URI_DEFAULTS = {"RABBIT_AMQP_URI": "pyamqp://guest:guest@localhost:5672/", "RABBIT_API_URI": "http://guest:guest@localhost:15672"}


def pytest_configure(config):
    for option, default in _URI_DEFAULTS.items():
        if os.environ.get(option) and config.getoption(option) == default:
            setattr(config.option, option, os.environ[option])


# Parametrised fixtures whose value picks the real servers (the fixture then asks for
# ``real_infra`` itself, so it is not in the test's static fixture closure).
REAL_PARAMS = {"postgres", "real"}


def _needs_real(item) -> bool:
    if "real_infra" in item.fixturenames:
        return True
    callspec = getattr(item, "callspec", None)
    fixtures = item._fixtureinfo.name2fixturedefs
    return callspec is not None and any(
        isinstance(value, str) and value in REAL_PARAMS for name, value in callspec.params.items() if name in fixtures
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _needs_real(item):
            item.add_marker(pytest.mark.real)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "real" in report.keywords]
    if not skipped:
        return
    reasons = sorted({str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
                      for report in skipped})
    terminalreporter.write_sep("!", f"{len(skipped)} TESTS THAT NEED RABBITMQ/POSTGRESQL WERE SKIPPED", red=True, bold=True)
    for reason in reasons:
        terminalreporter.write_line(f"  {reason.removeprefix('Skipped: ')}", red=True)
    terminalreporter.write_line("  `make test` sets up what it can and says what to run; "
                                "`make test-embedded` runs only the other tests, on purpose.", red=True)


@pytest.fixture(scope="session")
def real_infra(request):
    """Guard for tests that need the real servers: skip (locally) or fail (CI) without them."""
    missing = []
    if request.config.getoption("--no-real"):
        pytest.skip("--no-real given")
    if not _reachable(request.config.getoption("RABBIT_AMQP_URI"), 5672):
        missing.append("RabbitMQ (AMQP)")
    if not _reachable(request.config.getoption("RABBIT_API_URI"), 15672):
        missing.append("RabbitMQ management API (rabbitmq-plugins enable rabbitmq_management)")
    if not _reachable(PG_ADMIN_URL, 5432):
        missing.append("PostgreSQL")
    if missing:
        message = "not reachable: " + ", ".join(missing)
        if REQUIRE_REAL:
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)


class PostgresDatabases:
    """Creates throw-away PostgreSQL databases and drops them at the end of the session."""

    def __init__(self, admin_url: str):
        from sqlalchemy import create_engine

        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self.created = []

    def create(self, label: str) -> str:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = f"mbtest_{label}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self):
        from sqlalchemy import text

        with self.admin.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres(real_infra):
    databases = PostgresDatabases(PG_ADMIN_URL)
    yield databases
    databases.drop_all()


def _migrated_pg_url(postgres, service: str) -> str:
    from deploy.registry import SERVICES
    from kernel.migrations import upgrade

    url = postgres.create(service)
    upgrade(SERVICES[service].migrations, url)
    return url


@pytest.fixture(scope="session")
def users_pg_url(postgres):
    """One migrated users database for the session; tests empty it before use."""
    return _migrated_pg_url(postgres, "users")


@pytest.fixture(scope="session")
def messages_pg_url(postgres):
    return _migrated_pg_url(postgres, "messages")


@pytest.fixture(scope="session")
def notifications_pg_url(postgres):
    return _migrated_pg_url(postgres, "notifications")


def empty_tables(url: str) -> None:
    """Delete every row of every table but Alembic's, and restart id sequences."""
    from sqlalchemy import inspect, text

    from kernel.db import create_db_engine

    engine = create_db_engine(url, pool_size=1)
    with engine.begin() as connection:
        tables = [t for t in inspect(connection).get_table_names() if t != "alembic_version"]
        if connection.dialect.name == "postgresql":
            if tables:
                connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))
        if "counters" in tables:  # an event log's named positions start again at 0 (messages, users)
            connection.execute(text("INSERT INTO counters (name, position) VALUES ('log_head', 0), ('published', 0)"))
        if "tracking" in tables:
            connection.execute(text("INSERT INTO tracking (projection, position) VALUES ('notifications', 0)"))
    engine.dispose()


def _service_db_url(request, tmp_path, service: str) -> str:
    """A migrated, empty database of ``service``: SQLite (embedded mode) or PostgreSQL."""
    if request.param == "sqlite":
        from deploy.registry import SERVICES
        from kernel.migrations import upgrade

        url = f"sqlite:///{tmp_path / (service + '.db')}"
        upgrade(SERVICES[service].migrations, url)
        return url
    url = request.getfixturevalue(f"{service}_pg_url")
    empty_tables(url)
    return url


def _session(url):
    from sqlalchemy.orm import sessionmaker

    from kernel.db import create_db_engine

    engine = create_db_engine(url, pool_size=4)
    return engine, sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(params=["sqlite", "postgres"])
def users_db_url(request, tmp_path):
    return _service_db_url(request, tmp_path, "users")


@pytest.fixture(params=["sqlite", "postgres"])
def messages_db_url(request, tmp_path):
    return _service_db_url(request, tmp_path, "messages")


@pytest.fixture(params=["sqlite", "postgres"])
def notifications_db_url(request, tmp_path):
    return _service_db_url(request, tmp_path, "notifications")


@pytest.fixture
def users_db(users_db_url):
    """A recorder (the storage class its dialect picks) of an empty users database: what
    the service's ``Database`` dependency injects per worker; ``.session`` for the ORM."""
    from kernel.db import dispose
    from services.users.storage import STORAGE

    engine, make_session = _session(users_db_url)
    storage = STORAGE.open(engine, make_session)
    yield storage
    storage.close()
    dispose(engine)


@pytest.fixture
def messages_db(messages_db_url):
    """(engine, sessionmaker) of an empty messages database."""
    from kernel.db import dispose

    engine, make_session = _session(messages_db_url)
    yield engine, make_session
    dispose(engine)
