"""The event log: append (serialised, gap-free) and read by position."""
from __future__ import annotations

import functools
import json

from sqlalchemy import insert, select, text, update
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
            }
        ],
    )
    return placed


# PostgreSQL: take the next position, log the event and update the read model in ONE
# statement, run in autocommit, so it is its own transaction. The ``log_head`` row lock is
# then held for the statement and its commit only, never across round trips to a busy
# client: appends stay serialised (commit order = position order, no gaps) without a
# convoy of senders queueing behind a lock holder that is waiting for the CPU.
_APPEND_CTE = """
WITH next AS (
    UPDATE counters SET position = position + 1 WHERE name = 'log_head' RETURNING position
), logged AS (
    INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data)
    SELECT position, :event_id, :event_type, :version, :occurred_at, :data FROM next
    RETURNING position
), projected AS (
    {projection}
)
SELECT position FROM logged
"""


@functools.lru_cache(maxsize=16)
def _append_statement(projection_sql: str):
    # Built once per event type: text() parses its string, and the same object hits
    # SQLAlchemy's compiled-statement cache every time.
    return text(_APPEND_CTE.format(projection=projection_sql))


def append_in_one_statement(connection, event: Event, projection_sql: str, projection_params: dict) -> Event:
    """Append ``event`` and run ``projection_sql`` (an INSERT that reads the new position
    from the CTE ``logged``) atomically. ``connection`` must be in autocommit mode."""
    statement = _append_statement(projection_sql)
    params = {
        "event_id": str(event.event_id),
        "event_type": event.event_type(),
        "version": event.version,
        "occurred_at": event.occurred_at,
        "data": json.dumps(event.event_data()),
        **projection_params,
    }
    position = connection.execute(statement, params).scalar_one()
    return event.with_position(position)


_LOG = LoggedEvent.__table__


def _payload(row) -> dict:
    return {
        "event_type": row.event_type,
        "version": row.version,
        "event_id": row.event_id,
        "position": row.position,
        "occurred_at": as_utc(row.occurred_at).isoformat(),
        "data": json.loads(row.data),
    }


def read_payloads_after(session: Session, position, limit: int = FEED_BATCH_MAX) -> list[dict]:
    """Like ``read_after``, as the dicts ``Event.to_dict`` makes, straight from the rows
    (a Core query: the relay and the feed read every event, so this path stays lean).
    ``position`` may also be a scalar subquery."""
    limit = max(1, min(int(limit), FEED_BATCH_MAX))
    rows = session.execute(
        select(_LOG.c.position, _LOG.c.event_id, _LOG.c.event_type, _LOG.c.version, _LOG.c.occurred_at, _LOG.c.data)
        .where(_LOG.c.position > position)
        .order_by(_LOG.c.position)
        .limit(limit)
    )
    return [_payload(row) for row in rows]


def lock_published_and_read(session: Session, limit: int) -> list[dict] | None:
    """For the outbox relay, in one round trip: lock the ``published`` counter row and
    read the events after it, oldest first. ``None`` if another relay holds the row
    (PostgreSQL, ``FOR UPDATE SKIP LOCKED``), ``[]`` if there is nothing to publish: the
    relay must tell the two apart, or an event whose wake-up found the row taken could
    wait a whole poll interval. On SQLite (one writer) the row is simply read."""
    published = select(Counter.position.label("published")).where(Counter.name == "published")
    if session.get_bind().dialect.name != "postgresql":
        return read_payloads_after(session, published.scalar_subquery(), limit)
    locked = published.with_for_update(skip_locked=True).cte("published_locked")
    rows = session.execute(
        select(_LOG.c.position, _LOG.c.event_id, _LOG.c.event_type, _LOG.c.version, _LOG.c.occurred_at, _LOG.c.data)
        .select_from(locked.outerjoin(_LOG, _LOG.c.position > locked.c.published))
        .order_by(_LOG.c.position)
        .limit(max(1, int(limit)))
    ).all()
    if not rows:
        return None  # the CTE found the row locked: it returned nothing to join
    return [_payload(row) for row in rows if row.position is not None]


def read_after(session: Session, position: int, limit: int = FEED_BATCH_MAX) -> list[Event]:
    """Events with position > ``position``, oldest first, at most ``limit`` (capped at 1000)."""
    return [Event.from_dict(payload) for payload in read_payloads_after(session, position, limit)]


def head(session: Session) -> int:
    """Position of the last committed event (0 for an empty log)."""
    return session.scalar(select(Counter.position).where(Counter.name == "log_head")) or 0
