"""The event log of an event-sourced service: append with gap-free positions, read by
position (the feed: ``events_after``, ``head``), and the outbox relay's rounds.

Every service that publishes events keeps two tables in its own database (created by its
migrations): ``event_log``, one row per event, append-only, and ``counters``, the named
positions ``log_head`` (last appended) and ``published`` (last relayed).

Positions are gap-free and follow commit order: an append takes the ``log_head`` row's
lock (``UPDATE ... RETURNING``) and keeps it until its transaction ends, so position N+1
is handed out only once N has committed or rolled back (a rollback gives its number back).
A reader that has seen N has therefore seen everything before it.

Storage is picked once per database (``kernel.db.Recorders``): a service's recorder
subclasses ``SqliteLog`` or ``PostgresLog`` and adds its own read model.
"""
from __future__ import annotations

import functools
import json

from sqlalchemy import (BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, insert, select, text,
                        update)
from sqlalchemy.exc import IntegrityError

from kernel.clock import as_utc
from kernel.db import Recorder, autocommit_engine_for
from kernel.events import Event

FEED_BATCH_MAX = 1000
REPLAY_BATCH_MAX = 10_000  # events_after_json: a replay reads the whole log in few round trips
_POSITION = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()
event_log = Table(
    "event_log", metadata,
    Column("position", _POSITION, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),  # JSON of the event's own fields
    # "<actor id>:<key>" of the user action that caused the event: each at most once.
    Column("idempotency_key", String(100), nullable=True, unique=True),
)
counters = Table(
    "counters", metadata,
    Column("name", String(32), primary_key=True),
    Column("position", _POSITION, nullable=False),
)
_PAYLOAD_COLUMNS = tuple(event_log.c)


def row_values(event: Event, position: int) -> dict:
    """The ``event_log`` row of ``event`` at ``position``."""
    return {
        "position": position,
        "event_id": str(event.event_id),
        "event_type": event.event_type(),
        "version": event.version,
        "occurred_at": event.occurred_at,
        "data": json.dumps(event.event_data()),
        "idempotency_key": event.idempotency_key,
    }


def payload(row) -> dict:
    """A log row as ``Event.to_dict`` makes it (what the feed and the broker carry)."""
    found = {
        "event_type": row.event_type,
        "version": row.version,
        "event_id": row.event_id,
        "position": row.position,
        "occurred_at": as_utc(row.occurred_at).isoformat(),
        "data": json.loads(row.data),
    }
    if row.idempotency_key is not None:
        found["idempotency_key"] = row.idempotency_key
    return found


class EventLog(Recorder):
    """What every database does the same way (plain SQLAlchemy Core)."""

    def append(self, event: Event) -> Event:
        """Add ``event`` inside the session's transaction; returns it with its position.
        The caller commits (and holds the ``log_head`` lock until then)."""
        position = self.session.execute(
            update(counters).where(counters.c.name == "log_head")
            .values(position=counters.c.position + 1).returning(counters.c.position)
        ).scalar_one()
        # A Core insert, not the ORM: this is the hot path of every command.
        self.session.execute(insert(event_log), [row_values(event, position)])
        return event.with_position(position)

    def find_by_key(self, idempotency_key: str | None) -> dict | None:
        """The logged event (a payload) that ``idempotency_key`` names, if any."""
        if idempotency_key is None:
            return None
        row = self.session.execute(
            select(*_PAYLOAD_COLUMNS).where(event_log.c.idempotency_key == idempotency_key)).first()
        return payload(row) if row is not None else None

    def events_after(self, position, limit: int = FEED_BATCH_MAX) -> list[dict]:
        """The feed: payloads of the events after ``position``, oldest first, at most
        ``limit`` (capped at ``FEED_BATCH_MAX``)."""
        limit = max(1, min(int(limit), FEED_BATCH_MAX))
        rows = self.session.execute(
            select(*_PAYLOAD_COLUMNS).where(event_log.c.position > position)
            .order_by(event_log.c.position).limit(limit))
        return [payload(row) for row in rows]

    # The statement of ``events_after_json``: a recorder's own (its database's JSON spelling).
    _EVENTS_JSON = None

    def events_after_json(self, position: int, limit: int = REPLAY_BATCH_MAX) -> str:
        """``events_after`` as one JSON text (the array of the same payloads, ``occurred_at``
        spelt as ``isoformat`` spells it), made by the database, and up to
        ``REPLAY_BATCH_MAX`` events: what a replay reads. Decoding one string is C work;
        a list of dicts through nameko's JSON costs microseconds per event each way."""
        limit = max(1, min(int(limit), REPLAY_BATCH_MAX))
        return self.session.execute(self._EVENTS_JSON, {"after": position, "limit": limit}).scalar_one()

    def read_after(self, position: int, limit: int = FEED_BATCH_MAX) -> list[Event]:
        return [Event.from_dict(found) for found in self.events_after(position, limit)]

    def counter(self, name: str) -> int:
        return self.session.scalar(select(counters.c.position).where(counters.c.name == name)) or 0

    def head(self) -> int:
        """Position of the last committed event (0 for an empty log)."""
        return self.counter("log_head")

    def outbox_state(self) -> tuple[int, int]:
        """(head, published), read in one transaction that is then ended."""
        try:
            return self.head(), self.counter("published")
        finally:
            self.session.rollback()

    # Each database's recorder adds ``relay_round(limit, publish)``: read up to ``limit``
    # events past ``published``, ``publish(payloads)`` them (it returns once the broker has
    # them, or raises) and record them as published, in one transaction. It returns how
    # many; ``None`` if another relay holds the turn.


def _events_json(quote: str, occurred_at: str, order: str = "") -> text:
    """The statement of ``events_after_json`` in a database's spelling: ``quote`` makes a
    JSON string of a text, ``occurred_at`` spells the time as ``isoformat`` does (UTC,
    without "+00:00"). ``data`` is already JSON text, and ``event_type`` and ``event_id``
    need no escaping (``append`` writes a class name and a UUID's text); the
    ``idempotency_key`` only when set."""
    event = (f"""'{{"event_type":"' || event_type || '","version":' || version || ',"event_id":"' || event_id """
             f"""|| '","position":' || position || ',"occurred_at":"' || {occurred_at} || '+00:00","data":' || data """
             f"""|| CASE WHEN idempotency_key IS NULL THEN '' ELSE ',"idempotency_key":' || {quote}(idempotency_key) END """
             """|| '}'""")
    return text(f"SELECT '[' || coalesce({'string_agg' if order else 'group_concat'}({event}, ','{order}), '') || ']' "
                "FROM (SELECT * FROM event_log WHERE position > :after ORDER BY position LIMIT :limit) AS batch")


class SqliteLog(EventLog):
    """Embedded mode: one process, one connection, so transactions never overlap."""

    # SQLAlchemy stores a time as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here); ``isoformat``
    # leaves out a zero fraction. (SQLite concatenates in the batch's order.)
    _EVENTS_JSON = _events_json("json_quote", "replace(replace(occurred_at, ' ', 'T'), '.000000', '')")

    def relay_round(self, limit: int, publish) -> int | None:
        published = select(counters.c.position).where(counters.c.name == "published").scalar_subquery()
        try:
            payloads = self.events_after(published, limit)
            if payloads:
                publish(payloads)
                self.session.execute(update(counters).where(counters.c.name == "published")
                                     .values(position=payloads[-1]["position"]))
            self.session.commit()
            return len(payloads)
        except BaseException:
            self.session.rollback()
            raise


# PostgreSQL: take the next position, log the event and run the service's read-model
# statements in ONE statement, on an autocommit connection, so it is its own transaction:
# the ``log_head`` lock is held for the statement and its commit only, never across round
# trips to a busy client (no convoy of senders behind a lock holder waiting for the CPU).
#
# An event whose idempotency key is already logged is not appended: the statement returns
# the earlier event's position (``appended`` false) and changes nothing. Two statements
# racing with one key both find none; the second waits for the ``log_head`` lock and its
# insert then fails on the unique index (the whole statement is undone): ``append_with``
# answers that with the first event too.
_APPEND_WITH = """
WITH existing AS (
    SELECT position FROM event_log WHERE idempotency_key = :idempotency_key
), next AS (
    UPDATE counters SET position = position + 1
    WHERE name = 'log_head' AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING position
), logged AS (
    INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data, idempotency_key)
    SELECT position, :event_id, :event_type, :version, :occurred_at, :data, :idempotency_key FROM next
    RETURNING position, event_type, occurred_at, data
){projections}
SELECT position, true AS appended FROM logged
UNION ALL
SELECT position, false AS appended FROM existing
"""

# The relay's round as one transaction in two round trips: on an autocommit connection
# psycopg2 sends no BEGIN of its own; here BEGIN rides with the locking read and COMMIT
# with the counter update. ``SKIP LOCKED``: a second relay (another instance of the
# service) skips the round rather than queue behind the first.
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


class PostgresLog(EventLog):
    _EVENTS_JSON = _events_json("to_json", "replace(to_char(occurred_at AT TIME ZONE 'UTC', "
                                           """'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')""", " ORDER BY position")

    # Read-model statements that run in the append's statement, by event type, as CTEs
    # reading the new row from ``logged`` (position, event_type, occurred_at, data).
    PROJECTIONS: dict[str, tuple[str, ...]] = {}

    def _autocommit(self):
        return autocommit_engine_for(self.session.get_bind()).connect()

    def append_with_projections(self, event: Event) -> dict:
        """Append ``event`` and apply ``PROJECTIONS`` in one statement, its own transaction.
        Returns the event's payload; if its idempotency key is already logged, the earlier
        event's payload, appending nothing."""
        with self._autocommit() as connection:
            try:
                values = row_values(event, 0)
                del values["position"]
                statement = _append_statement(self.PROJECTIONS.get(event.event_type(), ()))
                position, appended = connection.execute(statement, values).one()
            except IntegrityError as error:
                if "idempotency_key" not in str(getattr(error, "orig", error)):
                    raise
                appended = False
            if appended:
                return event.with_position(position).to_dict()
            row = connection.execute(
                select(*_PAYLOAD_COLUMNS).where(event_log.c.idempotency_key == event.idempotency_key)).one()
            return payload(row)

    def relay_round(self, limit: int, publish) -> int | None:
        with self._autocommit() as connection:
            ended = False
            try:
                rows = connection.execute(_BEGIN_LOCK_AND_READ, {"limit": max(1, int(limit))}).all()
                if not rows:
                    return None  # another relay holds the ``published`` row
                payloads = [payload(row) for row in rows if row.position is not None]
                if payloads:
                    publish(payloads)
                    connection.execute(_RECORD_AND_COMMIT, {"position": payloads[-1]["position"]})
                    ended = True
                return len(payloads)
            finally:
                if not ended:
                    _rollback(connection)


@functools.lru_cache(maxsize=32)
def _append_statement(projections: tuple[str, ...]):
    # Parsed once per event type: the same object then hits SQLAlchemy's compiled cache.
    parts = "".join(f", projected_{i} AS (\n    {sql}\n)" for i, sql in enumerate(projections))
    return text(_APPEND_WITH.format(projections=parts))


def _rollback(connection) -> None:
    """End a round's transaction. The autocommit pool does not reset its connections, so
    one whose rollback fails is discarded rather than returned holding the row lock."""
    try:
        connection.exec_driver_sql("ROLLBACK")
    except Exception:  # the connection is broken: the server ends the transaction with it
        connection.invalidate()
    except BaseException:
        connection.invalidate()
        raise
