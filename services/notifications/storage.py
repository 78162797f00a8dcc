"""The notifications service's storage: the projection's rows and its tracking row, one
recorder per database, picked once when the database is set up (``STORAGE``). What the
projector asks of it is described in ``kernel.projector``."""
from __future__ import annotations

import json
from typing import Iterable

from sqlalchemy import Connection, delete, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kernel.db import Recorder, Recorders, autocommit_engine_for
from services.notifications.models import PROJECTION, Notification, Tracking, rebuild_table
from services.notifications.projection import Key, Row

LIVE = Notification.__table__
_POSITION = select(Tracking.position).where(Tracking.projection == PROJECTION)
_MOVE = update(Tracking).where(Tracking.projection == PROJECTION)


def _rows(result) -> dict[Key, Row]:
    """Rows by key from a result with user_id, name, payload_json and timestamp; a row
    without a user_id (an outer join that matched nothing) is skipped."""
    return {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp)
            for r in result if r.user_id is not None}


def _values(row: Row) -> dict:
    return {"user_id": row.user_id, "name": row.name, "payload_json": json.dumps(row.data), "timestamp": row.timestamp}


class Notifications(Recorder):
    """What both databases do the same way."""

    insert = staticmethod(insert)  # the dialect's, for ON CONFLICT

    def tracked(self, lock: bool = False) -> int:
        """The last applied position. ``lock=True`` holds the tracking row until commit (and
        creates it at 0 if there is none), which is what makes two consumers take turns
        (SQLite: BEGIN IMMEDIATE does the same; SQLAlchemy renders no FOR UPDATE there)."""
        position = self.session.scalar(_POSITION.with_for_update() if lock else _POSITION)
        if position is None and lock:
            self.session.execute(insert(Tracking).values(projection=PROJECTION, position=0))
        return position or 0

    def load_rows(self, keys: Iterable[Key], table=LIVE) -> dict[Key, Row]:
        keys = list(set(keys))
        if not keys:
            return {}
        return _rows(self.session.execute(select(table.c.user_id, table.c.name, table.c.payload_json, table.c.timestamp)
                                          .where(tuple_(table.c.user_id, table.c.name).in_(keys))))

    def lock_and_load(self, keys: Iterable[Key]) -> tuple[int, dict[Key, Row]]:
        """``tracked(lock=True)``, then the rows of ``keys`` under that lock, so the rows
        are the ones as of the tracked position."""
        return self.tracked(lock=True), self.load_rows(keys)

    def save(self, rows: dict[Key, Row], position: int | None = None, table=LIVE) -> None:
        """Upsert ``rows`` into ``table`` and move the tracking row to ``position`` (if
        given), in the caller's transaction."""
        if rows:
            upsert = self.insert(table).values([_values(row) for row in rows.values()])
            self.session.execute(upsert.on_conflict_do_update(
                index_elements=[table.c.user_id, table.c.name],
                set_={"payload_json": upsert.excluded.payload_json, "timestamp": upsert.excluded.timestamp}))
        if position is not None:
            self.session.execute(_MOVE.values(position=position))

    def record(self, keys, step):
        """Under the tracking row's lock: read, ``step``, write, commit (``kernel.projector``)."""
        tracked, rows = self.lock_and_load(keys)
        position, changed = step(tracked, rows)
        if position != tracked:
            self.save(changed, position)
            self.commit()
        return tracked, rows, changed

    def since(self, user_id: int, timestamp: float) -> list[dict]:
        return self.since_many({user_id: timestamp})[user_id]

    def since_many(self, since_by_user: dict[int, float]) -> dict[int, list[dict]]:
        """For each user, their rows newer than its since, oldest first, in one query."""
        if not since_by_user:
            return {}
        rows = self.session.execute(
            select(LIVE.c.user_id, LIVE.c.name, LIVE.c.payload_json, LIVE.c.timestamp)
            .where(LIVE.c.user_id.in_(list(since_by_user)), LIVE.c.timestamp > min(since_by_user.values()))
            .order_by(LIVE.c.timestamp)
        )
        found: dict[int, list[dict]] = {user_id: [] for user_id in since_by_user}
        for r in rows:
            if r.timestamp > since_by_user[r.user_id]:
                found[r.user_id].append({"name": r.name, "data": json.loads(r.payload_json), "timestamp": r.timestamp})
        return found

    def all_rows(self) -> dict[Key, Row]:
        return _rows(self.session.execute(select(LIVE.c.user_id, LIVE.c.name, LIVE.c.payload_json, LIVE.c.timestamp)))

    # The replay (kernel.projector.rebuild): rows written beside the live table, then swapped in.

    def build_beside(self, rows: dict[Key, Row]) -> None:
        bind = self.session.connection()
        rebuild_table.drop(bind, checkfirst=True)
        rebuild_table.create(bind)
        values = [_values(row) for row in rows.values()]
        for start in range(0, len(values), 5000):
            self.session.execute(insert(rebuild_table), values[start:start + 5000])
        self.commit()

    def swap_in(self, changed: dict[Key, Row], position: int) -> None:
        """Holding the tracking row (``tracked(lock=True)``): add the rows the log changed
        since ``build_beside``, replace the live rows with the rebuilt ones and move the
        tracking row to ``position``, in one transaction."""
        self.save(changed, table=rebuild_table)
        self.session.execute(delete(LIVE))
        self.session.execute(insert(LIVE).from_select(list(rebuild_table.c.keys()), select(rebuild_table)))
        self.session.execute(_MOVE.values(position=position))
        rebuild_table.drop(self.session.connection())
        self.commit()


class SqliteNotifications(Notifications):
    """One writer at a time (BEGIN IMMEDIATE): every write takes the locked path."""

    insert = staticmethod(sqlite_insert)


# PostgreSQL's optimistic write (see ``read_current``): write the rows and move the tracking
# row in one statement, in autocommit, only if the tracking row is still the version read.
# Both statements are fixed text whatever the number of keys or rows (arrays, not one
# bound parameter per value), so they are parsed and compiled once: building and compiling
# a Core select per delivery cost a third of the consumer's CPU.
_SAVE_IF_CURRENT = text("""
WITH moved AS (
    UPDATE tracking SET position = :position
    WHERE projection = :projection AND xmin::text = :version
    RETURNING position
), upserted AS (
    INSERT INTO notifications (user_id, name, payload_json, timestamp)
    SELECT * FROM unnest(CAST(:user_ids AS integer[]), CAST(:names AS varchar[]),
                         CAST(:payloads AS text[]), CAST(:timestamps AS double precision[]))
    WHERE EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (user_id, name) DO UPDATE SET payload_json = excluded.payload_json, timestamp = excluded.timestamp
)
SELECT count(*) FROM moved
""")

_READ_CURRENT = text("""
WITH tracking_now AS (
    SELECT position AS tracked, xmin::text AS version FROM tracking WHERE projection = :projection
)
SELECT tracking_now.tracked, tracking_now.version, n.user_id, n.name, n.payload_json, n.timestamp
FROM tracking_now LEFT OUTER JOIN notifications AS n
  ON (n.user_id, n.name) IN (SELECT * FROM unnest(CAST(:user_ids AS integer[]), CAST(:names AS varchar[])))
""")


class PostgresNotifications(Notifications):
    """Optimistic: read without a lock, write if nobody moved the tracking row meanwhile;
    the locked path only for the first write (no tracking row yet)."""

    insert = staticmethod(pg_insert)

    def record(self, keys, step):
        with autocommit_engine_for(self.session.get_bind()).connect() as connection:
            while (current := self.read_current(connection, keys)) is not None:
                tracked, version, rows = current
                position, changed = step(tracked, rows)
                if position == tracked or self.save_if_current(connection, changed, position, version):
                    return tracked, rows, changed
        return super().record(keys, step)

    def read_current(self, connection: Connection, keys: Iterable[Key]) -> tuple[int, str, dict[Key, Row]] | None:
        """Without taking a lock: the tracked position, the tracking row's version (``xmin``)
        and the current rows of ``keys``, in one statement, so from one snapshot. ``None``
        when there is no tracking row yet.

        With ``save_if_current`` this is optimistic concurrency: two round trips and no
        transaction to open or close (``BEGIN``, lock-and-read, write, ``COMMIT`` is four),
        for the one consumer that is normally alone on the tracking row. Every change to the
        rows moves the tracking row in the same transaction (deliveries, the feed, the
        replay's swap), so an unchanged version means the rows read are still the rows.
        """
        keys = list(set(keys))
        result = connection.execute(_READ_CURRENT, {"projection": PROJECTION, "user_ids": [k[0] for k in keys],
                                                    "names": [k[1] for k in keys]}).all()
        if not result:
            return None
        return result[0].tracked, result[0].version, _rows(result)

    def save_if_current(self, connection: Connection, rows: dict[Key, Row], position: int, version: str) -> bool:
        """Write ``rows`` and move the tracking row to ``position``, in one statement on an
        autocommit ``connection``, if the tracking row is still at ``version`` (as
        ``read_current`` returned it); ``False``, writing nothing, if another consumer or the
        replay's swap changed it since. A concurrent writer holding the row makes this wait,
        then PostgreSQL re-checks the condition against the row it committed."""
        rows = list(rows.values())
        moved = connection.execute(_SAVE_IF_CURRENT, {
            "position": position, "projection": PROJECTION, "version": version,
            "user_ids": [row.user_id for row in rows], "names": [row.name for row in rows],
            "payloads": [json.dumps(row.data) for row in rows], "timestamps": [float(row.timestamp) for row in rows],
        }).scalar_one()
        return moved == 1


STORAGE = Recorders(postgresql=PostgresNotifications, sqlite=SqliteNotifications)
