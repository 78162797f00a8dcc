"""A database that does not answer: what counts as "unavailable", its typed RPC reply, the
outage's two log lines and its backoff (kernel.db, kernel.rpc, the notifications
projector's Backoff). The whole system through a cut: tests/fault/test_database_outage.py."""
import logging
import socket
import sqlite3
import sys

import psycopg2
import pytest
from nameko.exceptions import RemoteError
from psycopg2.extensions import TransactionRollbackError
from sqlalchemy import exc as sa
from sqlalchemy import text

from kernel import db, memory_transport
from kernel.errors import DatabaseUnavailable, DependencyUnavailable, UserNotFound
from kernel.rpc import rpc
from kernel.rpc_pool import RpcPool
from kernel.projector import Backoff


def _refused_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere"


def _operational(orig) -> sa.OperationalError:
    return sa.OperationalError("SELECT 1", {}, orig)


# What counts as unavailable.

def test_a_refused_connection_is_unavailable_and_reported_once():
    engine = db.create_db_engine(_refused_url(), pool_size=1)
    outage = db.outage_for(engine.url)
    try:
        with pytest.raises(sa.OperationalError) as raised:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        assert db.is_database_unavailable(raised.value)
        assert outage.down and raised.value.outage_reported  # the engine reported it
    finally:
        engine.dispose()


@pytest.mark.parametrize("error, unavailable", [
    (_operational(psycopg2.OperationalError("server closed the connection unexpectedly")), True),
    (sa.InterfaceError("SELECT 1", {}, psycopg2.InterfaceError("connection already closed")), True),
    (sa.TimeoutError("QueuePool limit of size 10 overflow 10 reached"), True),
    (sa.DisconnectionError("gone"), True),
    (_operational(sqlite3.OperationalError("database is locked")), True),
    (_operational(sqlite3.OperationalError("unable to open database file")), True),
    (DatabaseUnavailable("users database"), True),
    (_operational(TransactionRollbackError("deadlock detected")), False),
    (_operational(sqlite3.OperationalError("no such table: users")), False),
    (_operational(sqlite3.OperationalError("attempt to write a readonly database")), False),
    (sa.IntegrityError("INSERT", {}, psycopg2.IntegrityError("duplicate key")), False),
    (sa.ProgrammingError("SELEC", {}, psycopg2.ProgrammingError("syntax error")), False),
    (DependencyUnavailable("messages did not answer within 10 s"), False),
    (ValueError("bad"), False),
])
def test_what_counts_as_the_database_being_unavailable(error, unavailable):
    assert db.is_database_unavailable(error) is unavailable


@pytest.mark.parametrize("statement", [
    "SET statement_timeout = 1; SELECT pg_sleep(1)",  # QueryCanceled (57014)
    "SELECT 1/0",  # DataError
])
def test_a_statement_the_server_refuses_is_not_an_outage(real_infra, statement):
    # PostgreSQL answered: the statement failed, not the database. A 503 "try again later"
    # would hide a fault that retrying does not cure, and its traceback must stay.
    from tests.conftest import PG_ADMIN_URL

    engine = db.create_db_engine(PG_ADMIN_URL, pool_size=1, watch=False)
    try:
        with pytest.raises(sa.DBAPIError) as raised:
            with engine.connect() as connection:
                connection.exec_driver_sql(statement)
        assert raised.value.orig.pgcode is not None
        assert not db.is_database_unavailable(raised.value)
    finally:
        engine.dispose()


def test_an_error_raised_from_a_connection_error_is_unavailable():
    try:
        try:
            raise psycopg2.OperationalError("could not connect")
        except psycopg2.OperationalError as cause:
            raise RuntimeError("while saving") from cause
    except RuntimeError as error:
        assert db.is_database_unavailable(error)


# The typed reply.

def test_the_reply_turns_a_connection_error_into_database_unavailable():
    error = _operational(psycopg2.OperationalError("could not connect to server: Connection refused"))
    kind, value, _ = db.database_unavailable_reply((type(error), error, None), "users")
    assert kind is DatabaseUnavailable and value.__cause__ is error
    assert "users service cannot reach its database" in str(value)
    assert "Connection refused" not in str(value)  # the caller learns what, not the driver's details
    other = UserNotFound("No user with id 3.")
    assert db.database_unavailable_reply((UserNotFound, other, None), "users")[1] is other


class DatabaseService:
    name = "dbdown"
    db = db.Database("DBDOWN_DATABASE_URL")

    @rpc
    def read(self):
        return self.db.execute(text("SELECT 1")).scalar()

    @rpc
    def missing(self):
        raise UserNotFound("No user with id 3.")


def test_every_entry_point_answers_database_unavailable_typed(container_factory):
    memory_transport.register()
    config = {"AMQP_URI": "embedded://", "DBDOWN_DATABASE_URL": _refused_url()}
    container = container_factory(DatabaseService, config)
    container.start()
    pool = RpcPool({"AMQP_URI": "embedded://"}, size=1, timeout=5)
    try:
        with pytest.raises(DatabaseUnavailable, match="dbdown service cannot reach its database") as raised:
            pool.dbdown.read()
        assert not isinstance(raised.value, RemoteError)
        assert isinstance(raised.value, DependencyUnavailable)  # what the gateway answers 503 for
        with pytest.raises(UserNotFound):  # other errors pass unchanged
            pool.dbdown.missing()
        with pytest.raises(DatabaseUnavailable):  # and the container lives on
            pool.dbdown.read()
    finally:
        pool.stop()


# The outage: two log lines, a capped backoff.

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_an_outage_logs_once_when_it_starts_and_once_when_it_ends(caplog):
    clock = Clock()
    outage = db.Outage("notifications database (x at h:5432)", clock=clock)
    caplog.set_level(logging.WARNING, logger="kernel.db")
    error = _operational(psycopg2.OperationalError("connection refused\n\tIs the server running?"))
    for _ in range(500):
        outage.failed(error)
        clock.now += 0.01
    clock.now += 7
    outage.succeeded()
    outage.succeeded()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable (connection refused Is the server running?)" in lines[0] and "\n" not in lines[0]
    assert "answers again, after 12.0 s unreachable (500 failed attempts)" in lines[1]
    assert error.outage_reported


def test_retries_back_off_exponentially_up_to_the_cap():
    clock = Clock()
    outage = db.Outage("db", base=0.1, cap=2.0, clock=clock)
    assert outage.due_in() == 0
    delays = []
    for _ in range(8):
        outage.failed()
        delays.append(round(outage.due_in(), 3))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    outage.succeeded()
    assert outage.due_in() == 0 and not outage.down


def test_a_stopping_service_stops_waiting_and_leaves_the_shared_outage_alone():
    database, feed = db.Outage("db", base=30, cap=30), db.Outage("feed")
    database.failed()
    stopping, running = Backoff(database, feed), Backoff(database, feed)
    stopping.release()
    assert stopping.due_in() == 0
    stopping.wait()  # would take 30 s
    assert running.due_in() > 29 and database.down


def test_a_backoff_caps_the_attempts_of_many_deliveries():
    """Ten deliveries retrying for 10 s of a database outage make a few attempts each, not
    a hot loop (the service measured 10 CPU-s per 10-20 s before)."""
    clock = Clock()
    database, feed = db.Outage("db", clock=clock), db.Outage("feed", clock=clock)
    backoff = Backoff(database, feed)
    attempts = []

    def sleep_until_due():
        clock.now += backoff.due_in()

    backoff.wait = sleep_until_due  # the clock stands still but for the waits

    def apply():
        attempts.append(clock.now)
        clock.now += 0.001  # what a refused connection costs
        raise _operational(psycopg2.OperationalError("could not connect"))

    while clock.now < 110:
        for _delivery in range(10):
            with pytest.raises(sa.OperationalError):
                backoff.attempt(apply)
    assert database.down and not feed.down
    assert len(attempts) < 10 * 10, len(attempts)
    assert backoff.attempt(lambda: "applied") == "applied"
    assert not database.down


def test_the_backoff_tells_a_feed_outage_from_a_bug():
    database, feed = db.Outage("db"), db.Outage("feed")
    backoff = Backoff(database, feed)
    assert backoff.outage_of(DatabaseUnavailable("messages")) is feed
    assert backoff.outage_of(DependencyUnavailable("messages did not answer")) is feed
    assert backoff.outage_of(_operational(psycopg2.OperationalError("x"))) is database
    assert backoff.outage_of(KeyError("position")) is None
    with pytest.raises(KeyError):
        backoff.attempt(lambda: {}["position"])
    assert not database.down and not feed.down


def test_a_poison_event_is_retried_with_a_backoff_not_in_a_hot_loop():
    # A bug, or an event this code cannot apply, raises on every delivery and comes back
    # at once (requeue_on_error): its retries wait too, up to FAULT_CAP seconds apart.
    clock = Clock()
    database, feed = db.Outage("db", clock=clock), db.Outage("feed", clock=clock)
    backoff = Backoff(database, feed, clock=clock)
    attempts = []

    def sleep_until_due():
        clock.now += backoff.due_in()

    backoff.wait = sleep_until_due

    def apply():
        attempts.append(clock.now)
        clock.now += 0.001
        raise KeyError("position")

    end = clock.now + 60
    while clock.now < end:
        with pytest.raises(KeyError):  # still raised: the event goes back to the queue
            backoff.attempt(apply)
    assert len(attempts) < 25, len(attempts)
    assert max(b - a for a, b in zip(attempts, attempts[1:])) <= Backoff.FAULT_CAP + 0.01
    assert not database.down and not feed.down  # a bug is not reported as an outage
    assert backoff.attempt(lambda: "applied") == "applied"
    assert backoff.due_in() == 0


# Logs and teardown.

def _record(exc) -> logging.LogRecord:
    try:
        raise exc
    except Exception:
        return logging.LogRecord("nameko.containers", logging.ERROR, __file__, 1,
                                 "error handling worker %s: %s", ("ctx", exc), sys.exc_info())


def test_worker_tracebacks_of_a_reported_outage_are_dropped_others_kept():
    quiet = db._QuietWhileReported()
    reported = _operational(psycopg2.OperationalError("refused"))
    db._mark_reported(reported)
    assert not quiet.filter(_record(reported))
    unreported = _record(DatabaseUnavailable("The messages service cannot reach its database"))
    assert quiet.filter(unreported) and unreported.exc_info is None  # one line, no traceback
    bug = _record(KeyError("x"))
    assert quiet.filter(bug) and bug.exc_info is not None


def test_a_session_that_cannot_roll_back_does_not_fail_the_worker():
    class DeadSession:
        invalidated = False

        def close(self):
            raise _operational(psycopg2.OperationalError("server closed the connection unexpectedly"))

        def invalidate(self):
            self.invalidated = True

    class Worker:
        pass

    provider, worker = db.Database("X"), Worker()
    session = provider.sessions[worker] = DeadSession()
    provider.worker_teardown(worker)  # nameko would kill the container if this raised
    assert session.invalidated


def test_a_database_that_accepts_and_never_answers_fails_the_connect_in_time():
    """Under eventlet psycopg2 connects asynchronously and libpq leaves connect_timeout to
    the caller: without kernel.db's own timeout this connect waited forever."""
    import time

    import eventlet

    with socket.socket() as silent:  # the kernel completes the handshake; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = db.create_db_engine(f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=1", pool_size=1)
        started = time.monotonic()
        try:
            with eventlet.Timeout(10), pytest.raises(sa.OperationalError) as raised:
                with engine.connect():
                    pass
        finally:
            engine.dispose()
    assert time.monotonic() - started < 3
    assert db.is_database_unavailable(raised.value) and "timed out" in str(raised.value)


def test_a_statement_that_succeeds_on_a_pooled_connection_ends_the_outage(tmp_path):
    # Otherwise a process whose pool survived a short cut stays "down", and logs nothing
    # when the next outage starts.
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    outage = db.outage_for(engine.url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        outage.failed(sqlite3.OperationalError("disk I/O error"))
        assert outage.down
        with engine.connect() as connection:  # the same pooled connection: no "connect" event
            connection.execute(text("SELECT 1"))
        assert not outage.down
    finally:
        engine.dispose()
