"""Alembic, driven from code: each service keeps its own migrations folder and database."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData


def upgrade(migrations_dir: Path, url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (idempotent)."""
    from kernel.db import create_db_engine

    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two instances of a service starting together must not both migrate:
                # the second waits here, then finds nothing left to do.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7202611240001)")
            config = Config()
            config.set_main_option("script_location", str(migrations_dir))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def run_env(context, target_metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``: migrations run on the connection
    ``upgrade`` hands over (the only way they are run)."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
