"""Engines: a connection cut while idle in the pool is replaced, not handed to a worker."""
from sqlalchemy import text

from kernel import db


def test_a_connection_killed_while_idle_is_replaced_on_checkout(real_infra, users_pg_url, monkeypatch):
    engine = db.create_db_engine(users_pg_url, pool_size=1)
    try:
        with engine.connect() as connection:
            backend = connection.scalar(text("SELECT pg_backend_pid()"))
        admin = db.create_db_engine(users_pg_url, pool_size=1)
        with admin.connect() as connection:
            assert connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        admin.dispose()
        monkeypatch.setattr(db, "IDLE_PING_AFTER", 0.0)  # as if it had sat idle for long
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT pg_backend_pid()")) != backend
    finally:
        engine.dispose()


def test_sqlite_engines_have_one_connection_and_wal(tmp_path):
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'x' / 'a.db'}")
    try:
        assert engine.pool.size() == 1 and engine.pool._max_overflow == 0
        with engine.connect() as connection:
            assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        engine.dispose()


def test_postgres_urls_are_pinned_to_psycopg2():
    assert db.normalise_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert db.normalise_url("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert db.normalise_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert db.normalise_url("sqlite:///x.db") == "sqlite:///x.db"
