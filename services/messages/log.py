"""The event log: append (serialised, gap-free) and read by position."""
from __future__ import annotations

import functools
import json

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kernel.clock import as_utc
from kernel.events import Event
from services.messages.models import Counter, LoggedEvent

FEED_BATCH_MAX = 1000


def append(session: Session, event: Event) -> Event:
    """Add ``event`` to the log inside the caller's transaction; returns it with its position.

    ``UPDATE counters ... RETURNING`` takes the row lock on ``log_head`` and keeps it until
    the caller commits or rolls back, so appends are serialised: position N+1 is handed out
    only after N has committed (commit order = position order, no gaps).
    """
    position = session.execute(
        update(Counter).where(Counter.name == "log_head").values(position=Counter.position + 1).returning(Counter.position)
    ).scalar_one()
    placed = event.with_position(position)
    # A Core insert, not session.add(): this is the hot path of every command, and the
    # ORM's unit of work costs more CPU than the statement itself.
    session.execute(
        insert(LoggedEvent),
        [
            {
                "position": position,
                "event_id": str(placed.event_id),
                "event_type": placed.event_type(),
                "version": placed.version,
                "occurred_at": placed.occurred_at,
                "data": json.dumps(placed.event_data()),
                "idempotency_key": placed.idempotency_key,
            }
        ],
    )
    return placed


def find_by_key(session_or_connection, idempotency_key: str | None) -> dict | None:
    """The logged event (as ``Event.to_dict`` makes it) that ``idempotency_key`` names, if any."""
    if idempotency_key is None:
        return None
    row = session_or_connection.execute(
        select(*_PAYLOAD_COLUMNS).where(_LOG.c.idempotency_key == idempotency_key)
    ).first()
    return _payload(row) if row is not None else None


# PostgreSQL: take the next position, log the event and update the read model in ONE
# statement, run in autocommit, so it is its own transaction. The ``log_head`` row lock is
# then held for the statement and its commit only, never across round trips to a busy
# client: appends stay serialised (commit order = position order, no gaps) without a
# convoy of senders queueing behind a lock holder that is waiting for the CPU.
#
# An event whose idempotency key is already in the log is not appended: the statement
# returns the earlier event's position instead (``appended`` false), and nothing else
# changes. Two statements racing with the same key both find none in their snapshot; the
# second then waits for the ``log_head`` lock, and its insert fails on the unique index
# once the first has committed (the whole statement, counter included, is undone):
# ``append_in_one_statement`` answers that with the first event too.
_APPEND_CTE = """
WITH existing AS (
    SELECT position FROM event_log WHERE idempotency_key = :idempotency_key
), next AS (
    UPDATE counters SET position = position + 1
    WHERE name = 'log_head' AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING position
), logged AS (
    INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data, idempotency_key)
    SELECT position, :event_id, :event_type, :version, :occurred_at, :data, :idempotency_key FROM next
    RETURNING position
), projected AS (
    {projection}
)
SELECT position, true AS appended FROM logged
UNION ALL
SELECT position, false AS appended FROM existing
"""


@functools.lru_cache(maxsize=16)
def _append_statement(projection_sql: str):
    # Built once per event type: text() parses its string, and the same object hits
    # SQLAlchemy's compiled-statement cache every time.
    return text(_APPEND_CTE.format(projection=projection_sql))


def append_in_one_statement(connection, event: Event, projection_sql: str, projection_params: dict) -> Event | dict:
    """Append ``event`` and run ``projection_sql`` (an INSERT that reads the new position
    from the CTE ``logged``) atomically. ``connection`` must be in autocommit mode.

    Returns the placed event; or, if the log already holds an event with the same
    idempotency key, that event's payload (a dict) and appends nothing."""
    statement = _append_statement(projection_sql)
    params = {
        "event_id": str(event.event_id),
        "event_type": event.event_type(),
        "version": event.version,
        "occurred_at": event.occurred_at,
        "data": json.dumps(event.event_data()),
        "idempotency_key": event.idempotency_key,
        **projection_params,
    }
    try:
        position, appended = connection.execute(statement, params).one()
    except IntegrityError as error:
        earlier = find_by_key(connection, event.idempotency_key) if _is_key_conflict(error) else None
        if earlier is None:
            raise
        return earlier
    if not appended:
        return find_by_key(connection, event.idempotency_key)
    return event.with_position(position)


def _is_key_conflict(error: IntegrityError) -> bool:
    return "idempotency_key" in str(getattr(error, "orig", error))


_LOG = LoggedEvent.__table__
# What ``_payload`` reads from a row (the relay's locking read names the same in its SQL).
_PAYLOAD_COLUMNS = (_LOG.c.position, _LOG.c.event_id, _LOG.c.event_type, _LOG.c.version, _LOG.c.occurred_at,
                    _LOG.c.data, _LOG.c.idempotency_key)


def _payload(row) -> dict:
    payload = {
        "event_type": row.event_type,
        "version": row.version,
        "event_id": row.event_id,
        "position": row.position,
        "occurred_at": as_utc(row.occurred_at).isoformat(),
        "data": json.loads(row.data),
    }
    if row.idempotency_key is not None:
        payload["idempotency_key"] = row.idempotency_key
    return payload


def read_payloads_after(session: Session, position, limit: int = FEED_BATCH_MAX) -> list[dict]:
    """Like ``read_after``, as the dicts ``Event.to_dict`` makes, straight from the rows
    (a Core query: the relay and the feed read every event, so this path stays lean).
    ``position`` may also be a scalar subquery."""
    limit = max(1, min(int(limit), FEED_BATCH_MAX))
    rows = session.execute(
        select(*_PAYLOAD_COLUMNS)
        .where(_LOG.c.position > position)
        .order_by(_LOG.c.position)
        .limit(limit)
    )
    return [_payload(row) for row in rows]


def read_unpublished(session: Session, limit: int) -> list[dict]:
    """For the outbox relay on SQLite (one writer, so nothing to lock): the events after
    the ``published`` counter, oldest first. PostgreSQL uses ``begin_relay_round``."""
    published = select(Counter.position).where(Counter.name == "published").scalar_subquery()
    return read_payloads_after(session, published, limit)


# PostgreSQL: the relay's round as one transaction in two round trips instead of four. On a
# connection in autocommit mode psycopg2 sends no BEGIN of its own (a round trip of its
# own otherwise); here BEGIN rides with the locking read and COMMIT with the counter update.
_BEGIN_LOCK_AND_READ = text("""BEGIN;
WITH published_locked AS (
    SELECT position AS published FROM counters WHERE name = 'published' FOR UPDATE SKIP LOCKED
)
SELECT event_log.position, event_log.event_id, event_log.event_type, event_log.version,
       event_log.occurred_at, event_log.data, event_log.idempotency_key
FROM published_locked LEFT OUTER JOIN event_log ON event_log.position > published_locked.published
ORDER BY event_log.position
LIMIT :limit""")
_RECORD_AND_COMMIT = text("UPDATE counters SET position = :position WHERE name = 'published'; COMMIT")


def begin_relay_round(connection, limit: int) -> list[dict] | None:
    """On an autocommit ``connection``: open a transaction, lock the ``published`` counter
    row and read the events after it, oldest first. ``None`` if another relay holds the
    row (``FOR UPDATE SKIP LOCKED``), ``[]`` if there is nothing to publish: the relay
    must tell the two apart, or an event whose wake-up found the row taken could wait a
    whole poll interval. Whatever it returns, end the transaction with ``end_relay_round``
    or ``abort_relay_round``."""
    rows = connection.execute(_BEGIN_LOCK_AND_READ, {"limit": max(1, int(limit))}).all()
    if not rows:
        return None  # the row is held by another relay
    return [_payload(row) for row in rows if row.position is not None]


def end_relay_round(connection, position: int) -> None:
    """Record ``position`` as published and commit the round."""
    connection.execute(_RECORD_AND_COMMIT, {"position": position})


def abort_relay_round(connection) -> None:
    """Roll the round back. The pool does not reset these connections (they are autocommit),
    so one whose rollback fails is discarded rather than returned holding the row lock."""
    try:
        connection.exec_driver_sql("ROLLBACK")
    except Exception:  # the connection is broken: the server ends the transaction with it
        connection.invalidate()
    except BaseException:
        connection.invalidate()
        raise


def read_after(session: Session, position: int, limit: int = FEED_BATCH_MAX) -> list[Event]:
    """Events with position > ``position``, oldest first, at most ``limit`` (capped at 1000)."""
    return [Event.from_dict(payload) for payload in read_payloads_after(session, position, limit)]


def head(session: Session) -> int:
    """Position of the last committed event (0 for an empty log)."""
    return session.scalar(select(Counter.position).where(Counter.name == "log_head")) or 0
