"""Reading and writing the projection: rows and tracking row in one transaction."""
from __future__ import annotations

import json
from typing import Iterable

from sqlalchemy import Table, and_, false, insert, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
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
    if lock and _postgres(session):
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
            if _postgres(session)
            else or_(*(and_(table.c.user_id == u, table.c.name == n) for u, n in keys))
        )
    )
    return {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp) for r in result}


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def lock_and_load(session: Session, keys: Iterable[Key], table: Table = LIVE,
                  projection: str = PROJECTION) -> tuple[int, dict[Key, Row]]:
    """``tracked_position(lock=True)`` and ``load_rows(keys)``; on PostgreSQL usually in
    one round trip, which matters because each delivery's transaction holds the process's
    turn while it waits on the database.

    The catch: one statement reads the rows from its snapshot, taken before it waited for
    the lock, so if another consumer committed meanwhile the rows are stale (the locked
    tracking row itself is re-read at its latest version). The statement therefore also
    returns the tracking row's version (``xmin``) as the snapshot saw it and as it was
    locked; every change to the rows moves the tracking row in the same transaction, so
    equal versions mean the rows are current. Otherwise they are read again, now under
    the lock (tests/unit/test_notifications_projection.py,
    ``test_rows_read_while_waiting_for_the_lock_are_read_again``).
    """
    keys = list(set(keys))
    if not _postgres(session):
        return tracked_position(session, lock=True, projection=projection), load_rows(session, keys, table)
    version = literal_column("tracking.xmin::text")
    locked = (select(Tracking.position.label("tracked"), version.label("locked_version"))
              .where(Tracking.projection == projection).with_for_update().cte("tracking_locked"))
    seen = select(version).where(Tracking.projection == projection).scalar_subquery()
    matches = tuple_(table.c.user_id, table.c.name).in_(keys) if keys else false()
    result = session.execute(
        select(locked.c.tracked, locked.c.locked_version, seen.label("seen_version"),
               table.c.user_id, table.c.name, table.c.payload_json, table.c.timestamp)
        .select_from(locked.outerjoin(table, matches))
    ).all()
    if not result:  # no tracking row yet
        return tracked_position(session, lock=True, projection=projection), load_rows(session, keys, table)
    if result[0].locked_version != result[0].seen_version:
        return result[0].tracked, load_rows(session, keys, table)
    rows = {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp)
            for r in result if r.user_id is not None}
    return result[0].tracked, rows


def save_rows(session: Session, rows: dict[Key, Row], existing: set[Key], position: int, table: Table = LIVE,
              projection: str = PROJECTION) -> None:
    """Write the changed ``rows`` and move the tracking row to ``position``; on PostgreSQL
    one statement (an upsert of every row, with the tracking update in a CTE)."""
    move = update(Tracking).where(Tracking.projection == projection).values(position=position)
    if _postgres(session):
        if not rows:
            session.execute(move)
            return
        upsert = pg_insert(table).values([
            {"user_id": row.user_id, "name": row.name, "payload_json": json.dumps(row.data), "timestamp": row.timestamp}
            for row in rows.values()
        ])
        upsert = upsert.on_conflict_do_update(
            index_elements=[table.c.user_id, table.c.name],
            set_={"payload_json": upsert.excluded.payload_json, "timestamp": upsert.excluded.timestamp},
        )
        session.execute(upsert.add_cte(move.cte("tracking_moved")))
        return
    for key, row in rows.items():
        values = {"payload_json": json.dumps(row.data), "timestamp": row.timestamp}
        if key in existing:
            session.execute(update(table).where(table.c.user_id == row.user_id, table.c.name == row.name).values(**values))
        else:
            session.execute(insert(table).values(user_id=row.user_id, name=row.name, **values))
    session.execute(move)


def apply_events(session: Session, events: list[Event], tracked: int, table: Table = LIVE, projection: str = PROJECTION,
                 changes: list[Row] | None = None, rows: dict[Key, Row] | None = None) -> int:
    """Apply a contiguous run of events following ``tracked`` and move the tracking row,
    inside the caller's transaction. Events at or below ``tracked`` are skipped (duplicates);
    a hole raises ``Gap``. ``rows``, if given, are the current rows of (at least) every key
    the events touch, as ``lock_and_load`` returns them; otherwise they are read. Returns
    the new tracked position; the rows written are appended to ``changes`` if given."""
    events = [e for e in events if e.position > tracked]
    if not events:
        return tracked
    keys = [key for event in events for key in keys_of(event)]
    rows = dict(rows) if rows is not None else load_rows(session, keys, table)
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
    save_rows(session, changed, existing, position, table, projection)
    if changes is not None:
        changes.extend(changed.values())
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
