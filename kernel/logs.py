"""Logging of a service's expected errors: one line each, with the caller's input clipped.

nameko logs every exception an entry point raises with its traceback (``error handling
worker ...`` through ``logger.exception``, or ``(expected) error handling worker ...`` with
``exc_info``). For the errors a service raises on purpose, the ``ServiceError``s of
``kernel.errors`` (an unknown user, a form field refused, ...), the traceback says
nothing, and the message carries whatever the caller sent: a 5,000-character name made
a 5,000-character log entry, and a newline in it a forged log line.

``install()`` (called where services start: ``microblog serve <service>`` and the embedded
runner) puts a filter on nameko's container logger that rewrites those records as one
line: ``(expected) users.get_user_by_username: UserNotFound: User aaaa…(+4,900 chars) not
found.``, at WARNING. Any other exception keeps its record and its traceback.
"""
from __future__ import annotations

import logging

from kernel.errors import ServiceError

# How much of one piece of user input a message or log line carries.
INPUT_MAX = 100
# How much of an expected error's message a log line carries (messages may quote input).
MESSAGE_MAX = 300

CONTAINER_LOGGER = "nameko.containers"


def clip(value, limit: int = INPUT_MAX) -> str:
    """``value`` as text fit for one log line: control characters escaped (no forged
    lines), and cut to ``limit`` characters with a note of how many were left out."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit:,} chars)"
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text


def _entry_point(record: logging.LogRecord) -> str:
    """``service.method`` of the nameko worker a container record is about."""
    worker = record.args[0] if isinstance(record.args, tuple) and record.args else None
    service = getattr(worker, "service_name", None)
    method = getattr(getattr(worker, "entrypoint", None), "method_name", None)
    return f"{service}.{method}" if service and method else "a worker"


class ExpectedErrors(logging.Filter):
    """Turns a container's record of a ``ServiceError`` into one clipped line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceError):
            record.msg = "(expected) %s: %s: %s"
            record.args = (_entry_point(record), type(exc).__name__, clip(str(exc), MESSAGE_MAX))
            record.exc_info = record.exc_text = record.stack_info = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def install() -> None:
    """Put the filter on nameko's container logger, once per process."""
    logger = logging.getLogger(CONTAINER_LOGGER)
    if not any(isinstance(f, ExpectedErrors) for f in logger.filters):
        logger.addFilter(ExpectedErrors())
