"""Alembic, driven from code: each service keeps its own migrations folder and database."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData


def alembic_config(migrations_dir: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    # Passed as an attribute, not an ini option, so a '%' in a password needs no escaping.
    config.attributes["url"] = url
    return config


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
            config = alembic_config(migrations_dir, url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def run_env(context, target_metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
        if context.is_offline_mode():
            context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
            with context.begin_transaction():
                context.run_migrations()
            return
        from kernel.db import create_db_engine

        engine = create_db_engine(url, pool_size=1)
        with engine.begin() as connection:
            _run_online(context, connection, target_metadata)
        engine.dispose()
        return
    _run_online(context, connection, target_metadata)


def _run_online(context, connection, target_metadata: MetaData) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
