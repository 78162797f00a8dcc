"""Checks a command makes before it starts: is the broker there, is the database there.

Each failure becomes a ``StartupError`` carrying ONE line that says what is wrong and
where (the URL, its password hidden), which ``microblog`` prints instead of a traceback:

* a URL that cannot be parsed (exit 2: fix the setting);
* a broker or database that refuses us: wrong vhost, wrong password, missing database
  (exit 1, at once: waiting would not help);
* a broker or database that does not answer (exit 1, after ``STARTUP_TIMEOUT`` seconds of
  retrying, so a container started a moment before RabbitMQ or PostgreSQL still comes up).
"""
from __future__ import annotations

import time

from kernel.settings import env_float

# What a bad setting exits with (click's usage errors use it too); an unreachable or
# refusing server exits 1.
BAD_SETTING = 2
UNREACHABLE = 1


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int = UNREACHABLE):
        super().__init__(message)
        self.exit_code = exit_code


class BrokerUnreachable(StartupError):
    """The broker did not answer (as opposed to refusing us): waiting may fix it."""


def startup_timeout() -> float:
    """``STARTUP_TIMEOUT``: seconds a command keeps retrying a broker or database that does
    not answer before it gives up (default 10)."""
    return env_float("STARTUP_TIMEOUT", 10.0, minimum=0.1)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (works for AMQP and database URLs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        # Not even parseable: show only what follows the credentials.
        return url.rsplit("@", 1)[-1] if "@" in url else url


def first_line(exc: BaseException) -> str:
    """The reason an exception gives, on one line, without the DBAPI class prefix."""
    reason = getattr(exc, "orig", None) or exc
    text = getattr(reason, "reply_text", None) or str(reason) or type(reason).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(reason).__name__


# ---------------------------------------------------------------------------- the broker

def check_broker(uri: str, timeout: float | None = None, setting: str = "AMQP_URI") -> None:
    """Connect to the broker at ``uri`` (vhost and login included) and let go again.

    Connection refused, name not resolved, timeouts: retried for ``timeout`` seconds.
    A refused login or an unknown vhost: reported at once. Embedded (in-memory) URIs pass.
    """
    if "://" not in uri:
        raise StartupError(f"{setting} is not a broker URL (amqp://user:password@host:5672/vhost): "
                           f"{redact(uri)!r}", BAD_SETTING)
    from kombu import Connection

    timeout = startup_timeout() if timeout is None else timeout
    where = redact(uri)
    try:
        connection = Connection(uri, connect_timeout=min(5.0, timeout))
        connection.transport  # noqa: B018 - resolves the transport: an unknown one fails here
    except (ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"{setting} is not a usable broker URL ({where}): {first_line(exc)}", BAD_SETTING) from None
    if uri.split("://", 1)[0] not in ("amqp", "amqps", "pyamqp"):
        return  # kombu's other transports (the embedded in-memory one): nothing to reach
    started = time.monotonic()
    try:
        connection.ensure_connection(timeout=timeout, interval_start=0.2, interval_step=0.5, interval_max=2.0)
    except ValueError as exc:
        raise StartupError(f"{setting} is not a usable broker URL ({where}): {first_line(exc)}", BAD_SETTING) from None
    except Exception as exc:
        from amqp.exceptions import AccessRefused, NotAllowed

        kind = StartupError if isinstance(exc, (AccessRefused, NotAllowed)) else BrokerUnreachable
        raise kind(_broker_problem(exc, where, time.monotonic() - started)) from None
    finally:
        try:
            connection.release()
        except Exception:  # nothing was opened
            pass


def _broker_problem(exc: BaseException, where: str, waited: float) -> str:
    from amqp.exceptions import AccessRefused, NotAllowed

    if isinstance(exc, NotAllowed):
        # RabbitMQ's answer to an unknown vhost, or one this user may not use.
        return f"the broker at {where} refused the virtual host: {first_line(exc)}"
    if isinstance(exc, AccessRefused):
        return f"the broker at {where} refused the login (user or password): {first_line(exc)}"
    return f"cannot reach the broker at {where} (tried for {waited:.0f} s): {first_line(exc)}"


def describe_broker_error(exc: BaseException, uri: str) -> str | None:
    """One line for a broker connection error raised later (mid-command); None if ``exc``
    is not one."""
    from amqp.exceptions import ConnectionError as AmqpConnectionError
    from kombu.exceptions import OperationalError

    if isinstance(exc, (AmqpConnectionError, OperationalError, ConnectionError)):
        return _broker_problem(exc, redact(uri), 0).replace(" (tried for 0 s)", "")
    return None


# -------------------------------------------------------------------------- the database

# psycopg2's answers that waiting will not change.
_PERMANENT = ("does not exist", "authentication failed", "no password supplied", "permission denied",
              "no pg_hba.conf entry")


def check_database(url: str, setting: str, timeout: float | None = None) -> None:
    """Open one connection to the database at ``url`` and run ``SELECT 1``."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    from kernel.db import create_db_engine, dispose

    timeout = startup_timeout() if timeout is None else timeout
    where = redact(url)
    try:
        # Not watched: a start-up check reports its own failure, in one line (kernel.db.Outage
        # is for a running service).
        engine = create_db_engine(url, pool_size=1, watch=False)
    except (sa_exc.ArgumentError, ValueError, TypeError, ImportError) as exc:
        raise StartupError(f"{setting} is not a usable database URL ({where}): {first_line(exc)}",
                           BAD_SETTING) from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except (sa_exc.ArgumentError, ValueError, TypeError) as exc:
                raise StartupError(f"{setting} is not a usable database URL ({where}): {first_line(exc)}",
                                   BAD_SETTING) from None
            except sa_exc.DBAPIError as exc:
                reason = first_line(exc)
                if any(word in reason for word in _PERMANENT) or time.monotonic() >= deadline:
                    raise StartupError(f"cannot reach database {where}: {reason}") from None
                time.sleep(0.5)
    finally:
        dispose(engine)


def describe_database_error(exc: BaseException, url: str) -> str | None:
    """One line for a database error raised while a command runs (a migration, a replay);
    None if ``exc`` is not a connection-level one."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return f"cannot reach database {redact(url)}: {first_line(exc)}"
    if isinstance(exc, sa_exc.ArgumentError):
        return f"not a usable database URL ({redact(url)}): {first_line(exc)}"
    return None
