"""Reading and writing the projection: rows and tracking row in one transaction."""
from __future__ import annotations

import json
from typing import Iterable

from sqlalchemy import Table, and_, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session

from kernel.events import Event
from services.notifications.models import PROJECTION, Notification, Tracking
from services.notifications.projection import Key, Row, apply, keys_of

LIVE = Notification.__table__


class Gap(Exception):
    """An event arrived past the next expected position: the ones between are missing."""

    def __init__(self, tracked: int, position: int):
        super().__init__(f"expected position {tracked + 1}, got {position}")
        self.tracked = tracked


def tracked_position(session: Session, lock: bool = False, projection: str = PROJECTION) -> int:
    """The last applied position. ``lock=True`` holds the tracking row until commit, which
    is what makes two consumers take turns (SQLite: BEGIN IMMEDIATE does the same)."""
    query = select(Tracking.position).where(Tracking.projection == projection)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    position = session.scalar(query)
    if position is None:
        session.execute(insert(Tracking).values(projection=projection, position=0))
        return 0
    return position


def load_rows(session: Session, keys: Iterable[Key], table: Table = LIVE) -> dict[Key, Row]:
    keys = list(set(keys))
    if not keys:
        return {}
    result = session.execute(
        select(table.c.user_id, table.c.name, table.c.payload_json, table.c.timestamp).where(
            tuple_(table.c.user_id, table.c.name).in_(keys)
            if session.get_bind().dialect.name == "postgresql"
            else or_(*(and_(table.c.user_id == u, table.c.name == n) for u, n in keys))
        )
    )
    return {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp) for r in result}


def save_rows(session: Session, rows: dict[Key, Row], existing: set[Key], table: Table = LIVE) -> None:
    for key, row in rows.items():
        values = {"payload_json": json.dumps(row.data), "timestamp": row.timestamp}
        if key in existing:
            session.execute(update(table).where(table.c.user_id == row.user_id, table.c.name == row.name).values(**values))
        else:
            session.execute(insert(table).values(user_id=row.user_id, name=row.name, **values))


def apply_events(session: Session, events: list[Event], tracked: int, table: Table = LIVE, projection: str = PROJECTION,
                 changes: list[Row] | None = None) -> int:
    """Apply a contiguous run of events following ``tracked`` and move the tracking row,
    inside the caller's transaction. Events at or below ``tracked`` are skipped (duplicates);
    a hole raises ``Gap``. Returns the new tracked position; the rows written are appended
    to ``changes`` if given."""
    events = [e for e in events if e.position > tracked]
    if not events:
        return tracked
    keys = [key for event in events for key in keys_of(event)]
    rows = load_rows(session, keys, table)
    existing = set(rows)
    changed: dict[Key, Row] = {}
    position = tracked
    for event in events:
        if event.position != position + 1:
            raise Gap(position, event.position)
        change = apply(rows, event)
        rows.update(change)
        changed.update(change)
        position = event.position
    save_rows(session, changed, existing, table)
    if changes is not None:
        changes.extend(changed.values())
    session.execute(update(Tracking).where(Tracking.projection == projection).values(position=position))
    return position


def since(session: Session, user_id: int, timestamp: float) -> list[dict]:
    rows = session.execute(
        select(LIVE.c.name, LIVE.c.payload_json, LIVE.c.timestamp)
        .where(LIVE.c.user_id == user_id, LIVE.c.timestamp > timestamp)
        .order_by(LIVE.c.timestamp)
    )
    return [{"name": r.name, "data": json.loads(r.payload_json), "timestamp": r.timestamp} for r in rows]


def all_rows(session: Session, table: Table = LIVE) -> dict[Key, Row]:
    result = session.execute(select(table.c.user_id, table.c.name, table.c.payload_json, table.c.timestamp))
    return {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp) for r in result}
