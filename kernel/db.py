"""Database engines and the per-worker session DependencyProvider every service uses."""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path

import psycopg2
from nameko.extensions import DependencyProvider
from psycopg2.extensions import TransactionRollbackError, get_wait_callback
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from kernel.errors import DatabaseUnavailable
from kernel.outage import OutageLog

logger = logging.getLogger(__name__)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for a bare
    ``postgresql://``) and accept the ``postgres://`` spelling some hosts hand out."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def create_db_engine(url: str, pool_size: int = 10, watch: bool = True) -> Engine:
    """An engine tuned for running under eventlet.

    SQLite gets exactly one connection (pool_size=1, max_overflow=0): under eventlet a
    writer that yields mid-transaction would otherwise leave a second connection spinning
    on the busy timeout while blocking the loop. Workers queue for the connection instead.
    """
    url = normalise_url(url)
    if is_sqlite(url):
        engine = _sqlite_engine(url)
    else:
        engine = _postgres_engine(url, pool_size=pool_size, max_overflow=pool_size)
    if watch:
        watch_outages(engine)
    return engine


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (the documented
        # recipe): pysqlite's own implicit BEGIN would defer it past our first read.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: str, **options) -> Engine:
    engine = create_engine(url, connect_args=_connect_args(url), **options)
    _ping_connections_left_idle(engine)
    _connect_in_time(engine)
    return engine


# A database host that does not answer at all (dropped packets, not a refusal) would
# otherwise hold a worker in connect() for the kernel's TCP timeout, minutes.
CONNECT_TIMEOUT = 5


# An established connection to a host that stops answering (dropped packets, not a reset)
# would hold a worker until the kernel gives up retransmitting, about 15 minutes: TCP
# keepalives notice an idle one within ~25 s, and tcp_user_timeout a statement whose bytes
# go unacknowledged for 30 s. Either way the connection fails like a cut one.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 30000}


def _connect_args(url: str) -> dict:
    """The keepalives and the connect timeout, but for those the URL sets itself."""
    args = {**KEEPALIVES, "connect_timeout": CONNECT_TIMEOUT}
    return {key: value for key, value in args.items() if f"{key}=" not in url}


def _connect_in_time(engine: Engine) -> None:
    """Enforce ``connect_timeout`` under eventlet too. With eventlet's wait callback
    installed, psycopg2 connects asynchronously, and libpq leaves the timeout of an
    asynchronous connect to the caller: a host that accepts and never answers held a
    connect forever (measured). A connect past the timeout fails like a refused one."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, record, cargs, cparams):
        timeout = float(cparams.get("connect_timeout") or 0)
        if timeout <= 0 or get_wait_callback() is None:
            return None  # libpq enforces it (blocking connect), or there is none to enforce
        import eventlet

        expired = psycopg2.OperationalError(f"connection timed out after {timeout:g} s")
        with eventlet.Timeout(timeout, expired):
            return dialect.connect(*cargs, **cparams)


# A pooled connection used within this many seconds is trusted to be alive.
IDLE_PING_AFTER = 5.0


def _ping_connections_left_idle(engine: Engine) -> None:
    """Check a connection with ``SELECT 1`` on checkout only if it sat idle a while.

    ``pool_pre_ping`` pings on every checkout: a round trip per worker, a sixth of the
    messages service's CPU under load. A connection that was just used is alive; one that
    sat idle may have been cut (a database restart, a proxy's idle timeout), and a dead
    one is replaced before use (SQLAlchemy retries checkout on ``DisconnectionError``).
    """

    @event.listens_for(engine, "checkin")
    def _stamp(dbapi_connection, record):
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, proxy):
        if time.monotonic() - record.info.get("checked_in_at", 0.0) < IDLE_PING_AFTER:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as error:
            raise sa.DisconnectionError(str(error)) from error


_autocommit_siblings: "weakref.WeakKeyDictionary[Engine, Engine]" = weakref.WeakKeyDictionary()


def autocommit_engine_for(engine: Engine) -> Engine:
    """A sibling engine (same database, own small pool) whose connections are always in
    autocommit mode, for single statements that are their own transaction.

    Switching a pooled connection to autocommit and back costs a reset on every checkin;
    a pool that is autocommit from the start has nothing to reset.
    """
    sibling = _autocommit_siblings.get(engine)
    if sibling is None:
        sibling = _postgres_engine(engine.url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT",
                                   pool_reset_on_return=None, pool_size=engine.pool.size(),
                                   max_overflow=engine.pool.size())
        watch_outages(sibling)
        _autocommit_siblings[engine] = sibling
    return sibling


def dispose(engine: Engine) -> None:
    """Close an engine's pool and its autocommit sibling's, if it has one."""
    sibling = _autocommit_siblings.pop(engine, None)
    if sibling is not None:
        sibling.dispose()
    engine.dispose()


# --- Database outages -----------------------------------------------------------------
#
# A service whose database does not answer must say so ("unavailable", which the gateway
# turns into 503), retry what it owes (pending events) without burning the CPU, and log
# the outage once when it starts and once when it ends, not once per attempt.


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database cannot be reached right now" (try again later),
    as opposed to a fault of the statement or the data, which retrying would not cure.

    Connection refused or cut, a connection found dead, no connection to be had from the
    pool in time (all SQLAlchemy ``OperationalError``/``InterfaceError``/``TimeoutError``,
    or ``DBAPIError`` with ``connection_invalidated``), or ``DatabaseUnavailable`` itself.
    Not a deadlock or serialization failure, nor SQLite's schema errors ("no such table").
    """
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (DatabaseUnavailable, sa.DisconnectionError, sa.TimeoutError, sa.InterfaceError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, sa.OperationalError):
            return _driver_says_unreachable(exc.orig)
        if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError, sqlite3.OperationalError)):
            return _driver_says_unreachable(exc)
        exc, seen = exc.__cause__, seen + 1  # e.g. a DisconnectionError raised from the driver's error
    return False


def database_unavailable_reply(exc_info, service_name: str):
    """``exc_info``, with a database connection error (``is_database_unavailable``) replaced
    by ``DatabaseUnavailable``; anything else unchanged."""
    exc = exc_info[1]
    if isinstance(exc, DatabaseUnavailable) or not is_database_unavailable(exc):
        return exc_info
    error = DatabaseUnavailable(f"The {service_name} service cannot reach its database right now; "
                                "please try again shortly.")
    error.__cause__ = exc
    return type(error), error, exc_info[2]


# PostgreSQL error codes (SQLSTATE) that mean "the server cannot serve you right now", as
# opposed to a fault of the statement (a cancelled query, a lock not available, a full
# disk: retrying the same thing would not cure them, and they keep their traceback).
_UNREACHABLE_SQLSTATE_CLASSES = ("08",)  # connection exception
_UNREACHABLE_SQLSTATES = {
    "57P01", "57P02", "57P03",  # admin / crash shutdown, cannot connect now
    "53300",  # too many connections
    "3D000",  # the database does not exist (dropped, or not created yet)
}
# SQLite (embedded): the file cannot be opened or read, or another writer held it past the
# busy timeout. Not "no such table", "readonly database", syntax errors.
_UNREACHABLE_SQLITE = ("unable to open", "disk i/o error", "database is locked")


def _driver_says_unreachable(orig) -> bool:
    if isinstance(orig, TransactionRollbackError):  # deadlock, serialization failure: the statement's
        return False
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return any(marker in text for marker in _UNREACHABLE_SQLITE)
    if isinstance(orig, psycopg2.InterfaceError):  # "connection already closed"
        return True
    if isinstance(orig, psycopg2.OperationalError):
        code = getattr(orig, "pgcode", None)
        if code is None:  # libpq's own: refused, timed out, "server closed the connection"
            return True
        return code in _UNREACHABLE_SQLSTATES or code[:2] in _UNREACHABLE_SQLSTATE_CLASSES
    return orig is None


class Outage(OutageLog):
    """One database's reachability as this process sees it, shared by everything in the
    process that uses it (``outage_for``).

    ``failed(exc)`` on each failure: the first of an outage logs one line; each schedules
    the next attempt further away (exponential, capped at ``cap`` seconds). ``succeeded()``
    when the database answers again logs one line (how long it was down). Whatever retries
    on its own (pending events, a timer) waits ``due_in()`` seconds before trying again, so
    a process with many things to retry makes a few attempts per ``cap`` seconds, not a
    hot loop (see ``kernel.projector.Backoff``).
    """

    def __init__(self, label: str, base: float = 0.1, cap: float = 2.0, clock=time.monotonic, log=None):
        super().__init__(log or logger, label, clock)
        self.base = base
        self.cap = cap
        self.retry_at = 0.0
        self.engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()  # those that reach this database

    def failed(self, exc: BaseException | None = None, retrying: str = "") -> None:
        super().failed(exc)
        self.retry_at = self.clock() + min(self.base * 2 ** min(self.failures - 1, 30), self.cap)
        if exc is not None:
            _mark_reported(exc)

    def went_down(self, exc: BaseException | None, retrying: str) -> None:
        self.logger.warning("%s unreachable (%s); answering 'unavailable', retrying with a backoff of up to "
                            "%g s, until it answers", self.what, one_line(exc), self.cap)

    def came_back(self, lasted: float, failures: int) -> None:
        self.retry_at = 0.0
        self.logger.warning("%s answers again, after %.1f s unreachable (%d failed attempts)", self.what, lasted, failures)

    def due_in(self) -> float:
        """Seconds until the next attempt may be made (0 when up)."""
        if self.since is None:
            return 0.0
        return max(0.0, self.retry_at - self.clock())


def one_line(exc: BaseException | None, limit: int = 200) -> str:
    """A driver's error on one line, without SQLAlchemy's statement and background link."""
    if exc is None:
        return "no answer"
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mark_reported(exc: BaseException) -> None:
    """The outage has been logged: the traceback nameko logs for a failed worker is noise."""
    try:
        exc.outage_reported = True
    except AttributeError:  # an exception type without a __dict__
        pass


_outages: dict[str, Outage] = {}
_outages_lock = threading.Lock()


def outage_for(url, label: str | None = None) -> Outage:
    """The process's ``Outage`` of the database at ``url`` (one per database, whatever
    engines reach it)."""
    url = make_url(normalise_url(str(url)) if isinstance(url, str) else url)
    key = url.render_as_string(hide_password=True)
    with _outages_lock:
        outage = _outages.get(key)
        if outage is None:
            outage = _outages[key] = Outage(label or f"database {_describe(url)}")
        elif label and outage.what.startswith("database "):
            outage.what = label
        return outage


def _describe(url) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.database} at {url.host or 'localhost'}:{url.port or 5432}"


def watch_outages(engine: Engine) -> None:
    """Report the engine's connection failures to its database's ``Outage`` and a new
    connection made (the database answers) as the end of one."""
    outage = outage_for(engine.url)
    outage.engines.add(engine)

    @event.listens_for(engine, "handle_error")
    def _failed(context):
        exc = context.sqlalchemy_exception or context.original_exception
        if context.is_disconnect or is_database_unavailable(exc):
            outage.failed(exc)
            if context.original_exception is not None:
                _mark_reported(context.original_exception)
        if context.is_disconnect:
            # SQLAlchemy discards this engine's pooled connections (they predate the drop);
            # those of the other engines on the same database are just as dead: discard
            # them too, rather than find each one dead after the database is back.
            for other in list(outage.engines):
                if other is not engine:
                    other.dispose(close=False)

    @event.listens_for(engine, "connect")
    def _answered(dbapi_connection, record):
        outage.succeeded()

    @event.listens_for(engine, "after_cursor_execute")
    def _answered_a_statement(connection, cursor, statement, parameters, context, executemany):
        # A pooled connection that survived (a short cut) ends the outage too: without this
        # a service that made no new connection would stay "down" and not log the next one.
        if outage.down:
            outage.succeeded()


class _QuietWhileReported(logging.Filter):
    """nameko logs a traceback for every worker that raised. For a database that is not
    answering, the ``Outage`` has said so in one line: drop the rest. Any other
    "unavailable" error (one not reported: another service's database, a full pool) is
    kept, as one line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if getattr(exc, "outage_reported", False):
            return False
        if exc is not None and is_database_unavailable(exc):
            record.exc_info = record.exc_text = None
        return True


_quiet = _QuietWhileReported()


def quiet_worker_tracebacks_during_outages() -> None:
    """Install the filter on nameko's container logger (once per process)."""
    containers = logging.getLogger("nameko.containers")
    if _quiet not in containers.filters:
        containers.addFilter(_quiet)


class Recorders:
    """A service's storage: one class per database with the same methods, each built
    around a ``Session`` (``Recorder``). Which one is picked once, from the engine, when the
    database is set up; nothing after that asks which database it is talking to."""

    def __init__(self, **by_dialect: type):
        self.by_dialect = by_dialect  # e.g. postgresql=PostgresInbox, sqlite=SqliteInbox

    def for_engine(self, engine: Engine) -> type:
        try:
            return self.by_dialect[engine.dialect.name]
        except KeyError:
            raise RuntimeError(f"no storage for {engine.dialect.name} databases "
                               f"(supported: {', '.join(sorted(self.by_dialect))})") from None

    def open(self, engine: Engine, make_session=None):
        """A recorder on a new session of ``engine`` (outside nameko: the CLI, tests)."""
        make_session = make_session or sessionmaker(engine, expire_on_commit=False)
        return self.for_engine(engine)(make_session())


class Recorder:
    """Base of every storage class: holds the worker's ``Session`` and ends it like one."""

    def __init__(self, session: Session):
        self.session = session

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        self.session.close()


class Database(DependencyProvider):
    """Injects a SQLAlchemy ``Session`` per worker, closed when the worker ends; or, given
    ``storage`` (``Recorders``), the recorder for this database built around that session.

    The URL comes from the container config key given, so each service names its own
    database (``USERS_DATABASE_URL`` ...). Entry points commit explicitly; anything not
    committed when the worker ends is rolled back by ``close()``.
    """

    def __init__(self, url_key: str, pool_size_key: str = "DB_POOL_SIZE", storage: "Recorders | None" = None):
        self.url_key = url_key
        self.pool_size_key = pool_size_key
        self.storage = storage
        self.engine: Engine | None = None
        self.sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def setup(self):
        config = self.container.config
        try:
            url = config[self.url_key]
        except KeyError:
            raise RuntimeError(f"{self.container.service_name}: config has no {self.url_key}") from None
        self.engine = create_db_engine(url, pool_size=int(config.get(self.pool_size_key, 10)))
        self.make_session = sessionmaker(self.engine, expire_on_commit=False)
        # Without a storage, the bare session.
        self.recorder = self.storage.for_engine(self.engine) if self.storage is not None else (lambda session: session)
        self.outage = outage_for(self.engine.url, f"{self.container.service_name} database ({_describe(self.engine.url)})")
        quiet_worker_tracebacks_during_outages()

    def stop(self):
        if self.engine is not None:
            dispose(self.engine)

    kill = stop

    def open(self):
        """A new session, wrapped in the service's recorder if it has one (close it after)."""
        return self.recorder(self.make_session())

    def get_dependency(self, worker_ctx):
        session = self.sessions[worker_ctx] = self.make_session()
        return self.recorder(session)

    def worker_teardown(self, worker_ctx):
        session = self.sessions.pop(worker_ctx, None)
        if session is None:
            return
        try:
            session.close()
        except Exception as exc:
            # Closing rolls back, which fails on a connection the database dropped. Raised
            # here it would kill the whole container (nameko treats a failed teardown as
            # fatal): throw the connection away instead.
            try:
                session.invalidate()
            except Exception:  # nothing left to release
                pass
            if not is_database_unavailable(exc):
                logger.exception("%s: closing a database session failed", self.container.service_name)
