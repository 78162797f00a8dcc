"""The event log: append (serialised, gap-free) and read by position."""
from __future__ import annotations

import json

from sqlalchemy import select, update
from sqlalchemy.orm import Session

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
    session.add(
        LoggedEvent(
            position=position,
            event_id=str(placed.event_id),
            event_type=placed.event_type(),
            version=placed.version,
            occurred_at=placed.occurred_at,
            data=json.dumps(placed.event_data()),
        )
    )
    session.flush()
    return placed


def to_event(row: LoggedEvent) -> Event:
    return Event.from_dict(
        {
            "event_type": row.event_type,
            "version": row.version,
            "event_id": row.event_id,
            "position": row.position,
            "occurred_at": row.occurred_at.isoformat(),
            "data": json.loads(row.data),
        }
    )


def read_after(session: Session, position: int, limit: int = FEED_BATCH_MAX) -> list[Event]:
    """Events with position > ``position``, oldest first, at most ``limit`` (capped at 1000)."""
    limit = max(1, min(int(limit), FEED_BATCH_MAX))
    rows = session.scalars(
        select(LoggedEvent).where(LoggedEvent.position > position).order_by(LoggedEvent.position).limit(limit)
    )
    return [to_event(row) for row in rows]


def head(session: Session) -> int:
    """Position of the last committed event (0 for an empty log)."""
    return session.scalar(select(Counter.position).where(Counter.name == "log_head")) or 0
