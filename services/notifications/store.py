"""Reading and writing the projection: rows and tracking row in one transaction."""
from __future__ import annotations

import functools
import json
from typing import Iterable

from sqlalchemy import Connection, Table, and_, insert, or_, select, text, tuple_, update
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
    return _rows(result)


def _rows(result) -> dict[Key, Row]:
    """Rows by key from a result with user_id, name, payload_json and timestamp; a row
    without a user_id (an outer join that matched nothing) is skipped."""
    return {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp)
            for r in result if r.user_id is not None}


def _postgres(session: Session) -> bool:
    return is_postgres(session.get_bind())


def is_postgres(bind) -> bool:
    return bind.dialect.name == "postgresql"


def lock_and_load(session: Session, keys: Iterable[Key], table: Table = LIVE,
                  projection: str = PROJECTION) -> tuple[int, dict[Key, Row]]:
    """``tracked_position(lock=True)``, then ``load_rows(keys)`` under that lock, so the
    rows are the ones as of the tracked position. For SQLite and for the first write of a
    PostgreSQL projection (no tracking row yet); PostgreSQL otherwise uses
    ``read_current`` and ``save_if_current``."""
    tracked = tracked_position(session, lock=True, projection=projection)
    return tracked, load_rows(session, keys, table)


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
    if rows is None:
        rows = load_rows(session, [key for event in events for key in keys_of(event)], table)
    position, changed = fold(events, tracked, rows)
    save_rows(session, changed, set(rows), position, table, projection)
    if changes is not None:
        changes.extend(changed.values())
    return position


def fold(events: list[Event], tracked: int, rows: dict[Key, Row]) -> tuple[int, dict[Key, Row]]:
    """The pure part of applying a contiguous run of events after ``tracked`` to the current
    ``rows`` (which it does not modify): the new position and the rows that changed. A hole
    raises ``Gap``."""
    current = dict(rows)
    changed: dict[Key, Row] = {}
    position = tracked
    for event in events:
        if event.position != position + 1:
            raise Gap(position, event.position)
        change = apply(current, event)
        current.update(change)
        changed.update(change)
        position = event.position
    return position, changed


# PostgreSQL's fast path (see ``read_current``): write the rows and move the tracking row
# in one statement, in autocommit, only if the tracking row is still the version read.
_SAVE_IF_CURRENT = """
WITH moved AS (
    UPDATE tracking SET position = :position
    WHERE projection = :projection AND xmin::text = :version
    RETURNING position
), upserted AS (
    INSERT INTO {table} (user_id, name, payload_json, timestamp)
    SELECT * FROM unnest(CAST(:user_ids AS integer[]), CAST(:names AS varchar[]),
                         CAST(:payloads AS text[]), CAST(:timestamps AS double precision[]))
    WHERE EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (user_id, name) DO UPDATE SET payload_json = excluded.payload_json, timestamp = excluded.timestamp
)
SELECT count(*) FROM moved
"""


_READ_CURRENT = """
WITH tracking_now AS (
    SELECT position AS tracked, xmin::text AS version FROM tracking WHERE projection = :projection
)
SELECT tracking_now.tracked, tracking_now.version, n.user_id, n.name, n.payload_json, n.timestamp
FROM tracking_now LEFT OUTER JOIN {table} AS n
  ON (n.user_id, n.name) IN (SELECT * FROM unnest(CAST(:user_ids AS integer[]), CAST(:names AS varchar[])))
"""


# Both statements are fixed text whatever the number of keys or rows (arrays, not one
# bound parameter per value), so they are parsed and compiled once: building and
# compiling a Core select per delivery cost a third of the consumer's CPU.
@functools.lru_cache(maxsize=4)
def _save_if_current_statement(table_name: str):
    return text(_SAVE_IF_CURRENT.format(table=table_name))


@functools.lru_cache(maxsize=4)
def _read_current_statement(table_name: str):
    return text(_READ_CURRENT.format(table=table_name))


def read_current(connection: Connection, keys: Iterable[Key], table: Table = LIVE,
                 projection: str = PROJECTION) -> tuple[int, str, dict[Key, Row]] | None:
    """PostgreSQL, without taking a lock: the tracked position, the tracking row's version
    (``xmin``) and the current rows of ``keys``, in one statement, so from one snapshot.
    ``None`` when there is no tracking row yet.

    With ``save_if_current`` this is optimistic concurrency: two round trips and no
    transaction to open or close (``BEGIN``, lock-and-read, write, ``COMMIT`` is four), for
    the one consumer that is normally alone on the tracking row. Every change to the rows
    moves the tracking row in the same transaction (deliveries, the feed, the replay's
    swap), so an unchanged version means the rows read are still the rows.
    """
    keys = list(set(keys))
    result = connection.execute(_read_current_statement(table.name), {
        "projection": projection,
        "user_ids": [user_id for user_id, _ in keys],
        "names": [name for _, name in keys],
    }).all()
    if not result:
        return None
    rows = _rows(result)
    return result[0].tracked, result[0].version, rows


def save_if_current(connection: Connection, rows: dict[Key, Row], position: int, version: str,
                    table: Table = LIVE, projection: str = PROJECTION) -> bool:
    """Write ``rows`` and move the tracking row to ``position``, in one statement on an
    autocommit ``connection``, if the tracking row is still at ``version`` (as
    ``read_current`` returned it); ``False``, writing nothing, if another consumer or the
    replay's swap changed it since. A concurrent writer holding the row makes this wait,
    then PostgreSQL re-checks the condition against the row it committed."""
    values = list(rows.values())
    moved = connection.execute(_save_if_current_statement(table.name), {
        "position": position,
        "projection": projection,
        "version": version,
        "user_ids": [row.user_id for row in values],
        "names": [row.name for row in values],
        "payloads": [json.dumps(row.data) for row in values],
        "timestamps": [float(row.timestamp) for row in values],
    }).scalar_one()
    return moved == 1


def since(session: Session, user_id: int, timestamp: float) -> list[dict]:
    rows = session.execute(
        select(LIVE.c.name, LIVE.c.payload_json, LIVE.c.timestamp)
        .where(LIVE.c.user_id == user_id, LIVE.c.timestamp > timestamp)
        .order_by(LIVE.c.timestamp)
    )
    return [{"name": r.name, "data": json.loads(r.payload_json), "timestamp": r.timestamp} for r in rows]


def since_many(session: Session, since_by_user: dict[int, float]) -> dict[int, list[dict]]:
    """``since`` for many users in one query: {user_id: rows newer than its since}."""
    if not since_by_user:
        return {}
    lowest = min(since_by_user.values())
    rows = session.execute(
        select(LIVE.c.user_id, LIVE.c.name, LIVE.c.payload_json, LIVE.c.timestamp)
        .where(LIVE.c.user_id.in_(list(since_by_user)), LIVE.c.timestamp > lowest)
        .order_by(LIVE.c.timestamp)
    )
    found: dict[int, list[dict]] = {user_id: [] for user_id in since_by_user}
    for r in rows:
        if r.timestamp > since_by_user[r.user_id]:
            found[r.user_id].append({"name": r.name, "data": json.loads(r.payload_json), "timestamp": r.timestamp})
    return found


def all_rows(session: Session, table: Table = LIVE) -> dict[Key, Row]:
    result = session.execute(select(table.c.user_id, table.c.name, table.c.payload_json, table.c.timestamp))
    return _rows(result)
