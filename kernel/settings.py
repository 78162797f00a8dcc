"""Reading settings from environment variables, with errors a person can act on.

Each deployable has its own settings module built from these helpers; none of them
connects to anything.
"""
from __future__ import annotations

import os
from pathlib import Path


class SettingsError(RuntimeError):
    """An environment variable holds a value that cannot be used."""


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    return _env_number(name, default, minimum, int, "a whole number")


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    return _env_number(name, default, minimum, float, "a number")


def _env_number(name: str, default, minimum, kind: type, what: str):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def data_dir() -> Path:
    """Where embedded mode keeps its SQLite files (``MICROBLOG_DATA_DIR``, default ./data)."""
    return Path(env_str("MICROBLOG_DATA_DIR", "data")).resolve()


def amqp_uri() -> str:
    """The broker every deployable talks to: ``AMQP_URI`` if set, else built from
    ``RABBITMQ_USER``, ``RABBITMQ_PASSWORD``, ``RABBITMQ_HOST``, ``RABBITMQ_PORT`` and
    ``RABBITMQ_VHOST`` (each escaped, so a password may hold ``@``, ``/``, ``#`` or ``:``).
    Embedded mode overrides it in-process."""
    if os.environ.get("AMQP_URI", "").strip():
        return env_str("AMQP_URI", "")
    from urllib.parse import quote

    user = quote(env_str("RABBITMQ_USER", "guest"), safe="")
    password = quote(os.environ.get("RABBITMQ_PASSWORD") or "guest", safe="")
    host = env_str("RABBITMQ_HOST", "127.0.0.1")
    port = env_int("RABBITMQ_PORT", 5672, minimum=1)
    vhost = quote(os.environ.get("RABBITMQ_VHOST", "").strip(), safe="")  # empty: the default, /
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


def database_url(service: str) -> str:
    """``<SERVICE>_DATABASE_URL`` if set (each service owns its own database), else built
    from ``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_HOST``, ``POSTGRES_PORT`` and
    the database ``microblog_<service>`` (each escaped, so a password may hold ``@``, ``/``,
    ``#`` or ``:``)."""
    name = f"{service.upper()}_DATABASE_URL"
    if os.environ.get(name, "").strip():
        return env_str(name, "")
    from sqlalchemy.engine import URL

    return URL.create(
        "postgresql",
        username=env_str("POSTGRES_USER", "postgres"),
        password=os.environ.get("POSTGRES_PASSWORD") or None,
        host=env_str("POSTGRES_HOST", "127.0.0.1"),
        port=env_int("POSTGRES_PORT", 5432, minimum=1),
        database=f"microblog_{service}",
    ).render_as_string(hide_password=False)


def rpc_timeout() -> float:
    return env_float("RPC_TIMEOUT", 10.0, minimum=0.1)


def metrics_port() -> int:
    """``METRICS_PORT``: where a service process serves its Prometheus metrics (0 or unset: off)."""
    port = env_int("METRICS_PORT", 0, minimum=0)
    if port > 65535:
        raise SettingsError(f"METRICS_PORT must be a port number (1 to 65535, or 0 for off), got {port}")
    return port


def outbox_config() -> dict:
    """What a service with an event log adds (``kernel.outbox``)."""
    return {
        # How often the outbox relay looks for unpublished events when nothing woke it.
        "OUTBOX_POLL_INTERVAL": env_float("OUTBOX_POLL_INTERVAL", 1.0, minimum=0.01),
        # How long the relay waits after a wake-up to gather more events into one batch
        # (0: publish at once; measured best for send-to-visible latency).
        "OUTBOX_LINGER": env_float("OUTBOX_LINGER", 0.0, minimum=0.0),
    }


def service_config(service: str, **extra) -> dict:
    """The nameko config every service shares, from ``AMQP_URI``, ``<SERVICE>_DATABASE_URL``,
    ``<SERVICE>_DB_POOL_SIZE``, ``<SERVICE>_MAX_WORKERS``, ``METRICS_PORT`` and
    ``METRICS_REFRESH``, plus the service's own ``extra``."""
    prefix = service.upper()
    return {
        "AMQP_URI": amqp_uri(),
        f"{prefix}_DATABASE_URL": database_url(service),
        "DB_POOL_SIZE": env_int(f"{prefix}_DB_POOL_SIZE", 10, minimum=1),
        "max_workers": env_int(f"{prefix}_MAX_WORKERS", 10, minimum=1),
        "METRICS_PORT": metrics_port(),
        # How often the projection and outbox gauges are refreshed between scrapes.
        "METRICS_REFRESH": env_float("METRICS_REFRESH", 5.0, minimum=0.1),
        **extra,
    }
