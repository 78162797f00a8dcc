"""Database engines and the per-worker session DependencyProvider every service uses."""
from __future__ import annotations

import time
import weakref
from pathlib import Path

from nameko.extensions import DependencyProvider
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for a bare
    ``postgresql://``) and accept the ``postgres://`` spelling some hosts hand out."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def create_db_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine tuned for running under eventlet.

    SQLite gets exactly one connection (pool_size=1, max_overflow=0): under eventlet a
    writer that yields mid-transaction would otherwise leave a second connection spinning
    on the busy timeout while blocking the loop. Workers queue for the connection instead.
    """
    url = normalise_url(url)
    if not is_sqlite(url):
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
        _ping_connections_left_idle(engine)
        return engine

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


# A pooled connection used within this many seconds is trusted to be alive.
IDLE_PING_AFTER = 5.0


def _ping_connections_left_idle(engine: Engine) -> None:
    """Check a connection with ``SELECT 1`` on checkout only if it sat idle a while.

    ``pool_pre_ping`` pings on every checkout: a round trip per worker, a sixth of the
    messages service's CPU under load. A connection that was just used is alive; one that
    sat idle may have been cut (a database restart, a proxy's idle timeout), and a dead
    one is replaced before use (SQLAlchemy retries checkout on ``DisconnectionError``).
    """
    from sqlalchemy import exc

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
            raise exc.DisconnectionError(str(error)) from error


_autocommit_siblings: "weakref.WeakKeyDictionary[Engine, Engine]" = weakref.WeakKeyDictionary()


def autocommit_engine_for(engine: Engine) -> Engine:
    """A sibling engine (same database, own small pool) whose connections are always in
    autocommit mode, for single statements that are their own transaction.

    Switching a pooled connection to autocommit and back costs a reset on every checkin;
    a pool that is autocommit from the start has nothing to reset.
    """
    sibling = _autocommit_siblings.get(engine)
    if sibling is None:
        sibling = create_engine(
            engine.url,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
            pool_size=engine.pool.size(),
            max_overflow=engine.pool.size(),
        )
        _ping_connections_left_idle(sibling)
        _autocommit_siblings[engine] = sibling
    return sibling


def dispose(engine: Engine) -> None:
    """Close an engine's pool and its autocommit sibling's, if it has one."""
    sibling = _autocommit_siblings.pop(engine, None)
    if sibling is not None:
        sibling.dispose()
    engine.dispose()


class Database(DependencyProvider):
    """Injects a SQLAlchemy ``Session`` per worker, closed when the worker ends.

    The URL comes from the container config key given, so each service names its own
    database (``USERS_DATABASE_URL`` ...). Entry points commit explicitly; anything not
    committed when the worker ends is rolled back by ``close()``.
    """

    def __init__(self, url_key: str, pool_size_key: str = "DB_POOL_SIZE"):
        self.url_key = url_key
        self.pool_size_key = pool_size_key
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

    def stop(self):
        if self.engine is not None:
            dispose(self.engine)

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx) -> Session:
        session = self.make_session()
        self.sessions[worker_ctx] = session
        return session

    def worker_teardown(self, worker_ctx):
        session = self.sessions.pop(worker_ctx, None)
        if session is not None:
            session.close()
