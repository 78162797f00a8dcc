"""The messages service's storage: its event log and the inbox read model built from it,
one recorder per database (``kernel.db.Recorders`` picks one when the database is set up).

The inbox's rules, as SQL that reads log rows (position, event_type, occurred_at, data)
from ``{source}``: a ``MessageSent`` to U becomes a row of U's inbox (its id is the
event's position); an ``InboxRead`` of U moves U's ``last_read_position`` up to it. The
same statements apply one new event (in the append's transaction) and replay the whole
log into the tables beside the live ones, so live processing and a replay cannot differ.
Each database has its own spelling of them (JSON access, ``GREATEST``), nothing else.
"""
from __future__ import annotations

import functools
import math

from sqlalchemy import MetaData, Table, delete, func, insert, select, text, update

from kernel.clock import as_utc
from kernel.db import Recorders
from kernel.eventlog import PostgresLog, SqliteLog, counters
from services.messages.models import InboxMessage, InboxState

PER_PAGE = 25
REPLAY_STEP = 50_000  # positions per replay statement (the progress bar moves per step)

MESSAGES = InboxMessage.__table__
STATES = InboxState.__table__
# Where a replay builds the read model before swapping it in (no index: only the replay
# writes them and only the swap reads them).
_beside = MetaData()
MESSAGES_REBUILD = Table("inbox_messages_rebuild", _beside, *(c._copy() for c in MESSAGES.columns))
STATES_REBUILD = Table("inbox_state_rebuild", _beside, *(c._copy() for c in STATES.columns))

_REPLAY_SOURCE = ("(SELECT position, event_type, occurred_at, data FROM event_log "
                  "WHERE position > :after AND position <= :upto) AS source")


class Inbox:
    """The read model's queries (the same on every database)."""

    def last_read_position(self, user_id: int) -> int:
        return self.session.scalar(select(STATES.c.last_read_position).where(STATES.c.user_id == user_id)) or 0

    def unread_count(self, user_id: int) -> int:
        """MessageSent to the user after their latest InboxRead, in log order."""
        return self.session.scalar(
            select(func.count()).select_from(MESSAGES)
            .where(MESSAGES.c.recipient_id == user_id, MESSAGES.c.id > self.last_read_position(user_id)))

    def unread_counts(self, user_ids) -> dict[str, int]:
        """``unread_count`` of many users (keys are ids as strings: JSON keys are strings)."""
        return {str(user_id): self.unread_count(user_id) for user_id in user_ids}

    def page_of(self, user_id: int, page: int, per_page: int = PER_PAGE) -> dict:
        """One page of received messages, newest first. Page numbers start at 1."""
        total = self.session.scalar(select(func.count()).select_from(MESSAGES).where(MESSAGES.c.recipient_id == user_id))
        pages = max(1, math.ceil(total / per_page))
        rows = []
        if page <= pages:  # past the end there is nothing to fetch (and the offset could overflow)
            rows = self.session.execute(
                select(MESSAGES.c.id, MESSAGES.c.sender_id, MESSAGES.c.body, MESSAGES.c.sent_at)
                .where(MESSAGES.c.recipient_id == user_id)
                .order_by(MESSAGES.c.id.desc()).limit(per_page).offset((page - 1) * per_page))
        return {
            "messages": [{"id": m.id, "sender_id": m.sender_id, "body": m.body, "sent_at": _iso(m.sent_at)}
                         for m in rows],
            "page": page,
            "per_page": per_page,
            "pages": pages,
            "total": total,
            "has_prev": page > 1,
            "has_next": page < pages,
        }

    def message_for(self, user_id: int, message_id: int) -> dict | None:
        """One message, if ``user_id`` sent or received it; else None."""
        m = self.session.execute(
            select(MESSAGES).where(MESSAGES.c.id == message_id,
                                   (MESSAGES.c.sender_id == user_id) | (MESSAGES.c.recipient_id == user_id))).first()
        if m is None:
            return None
        return {"id": m.id, "sender_id": m.sender_id, "recipient_id": m.recipient_id, "body": m.body,
                "sent_at": _iso(m.sent_at)}

    def snapshot(self) -> tuple[list, list]:
        """Every row of the read model, in a stable order (to compare with a replay)."""
        messages = [(m.id, m.sender_id, m.recipient_id, m.body, _iso(m.sent_at))
                    for m in self.session.execute(select(MESSAGES).order_by(MESSAGES.c.id))]
        states = [(s.user_id, s.last_read_position)
                  for s in self.session.execute(select(STATES).order_by(STATES.c.user_id))]
        return messages, states

    # -- replay: build beside the live tables, then swap -----------------------------

    def _project(self, source: str, messages: Table, states: Table, params: dict) -> None:
        for statement in _statements(tuple(self.RULES.values()), source, messages.name, states.name):
            self.session.execute(statement, params)

    def rebuild(self, progress=None) -> int:
        """Replay the whole log into tables beside the live ones, then swap them in; returns
        the position replayed to. Sends go on meanwhile: they wait only for the swap, which
        holds the ``log_head`` row (so no position is handed out), applies what the log
        gained since the build, and replaces the live rows, in one transaction."""
        bind = self.session.connection()
        for table in (MESSAGES_REBUILD, STATES_REBUILD):
            table.drop(bind, checkfirst=True)
            table.create(bind)
        upto = self.head()
        self.session.commit()
        built = self._replay_into_rebuild(0, upto, progress)
        try:
            # The swap. An UPDATE takes the row lock on every database (SQLite: the write lock).
            head = self.session.execute(update(counters).where(counters.c.name == "log_head")
                                        .values(position=counters.c.position).returning(counters.c.position)).scalar_one()
            self._project(_REPLAY_SOURCE, MESSAGES_REBUILD, STATES_REBUILD, {"after": built, "upto": head})
            for live, beside in ((MESSAGES, MESSAGES_REBUILD), (STATES, STATES_REBUILD)):
                self.session.execute(delete(live))
                self.session.execute(insert(live).from_select(list(beside.c.keys()), select(beside)))
                beside.drop(self.session.connection())
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        return head

    def _replay_into_rebuild(self, after: int, upto: int, progress) -> int:
        position = after
        while position < upto:
            step = min(upto, position + REPLAY_STEP)
            self._project(_REPLAY_SOURCE, MESSAGES_REBUILD, STATES_REBUILD, {"after": position, "upto": step})
            self.session.commit()
            position = step
            if progress:
                progress(position)
        return position


@functools.lru_cache(maxsize=16)
def _statements(rules: tuple[str, ...], source: str, messages: str, states: str) -> tuple:
    # Parsed once: the same objects then hit SQLAlchemy's compiled-statement cache.
    return tuple(text(sql.format(source=source, messages=messages, states=states)) for sql in rules)


def _iso(moment) -> str:
    return as_utc(moment).isoformat()


class PostgresMessages(Inbox, PostgresLog):
    RULES = {
        "MessageSent":
        "INSERT INTO {messages} (id, sender_id, recipient_id, body, sent_at) "
        "SELECT position, CAST(data::json->>'sender_id' AS integer), CAST(data::json->>'recipient_id' AS integer), "
        "data::json->>'body', occurred_at FROM {source} WHERE event_type = 'MessageSent'",
        "InboxRead":
        "INSERT INTO {states} (user_id, last_read_position) "
        "SELECT CAST(data::json->>'user_id' AS integer), max(position) FROM {source} "
        "WHERE event_type = 'InboxRead' GROUP BY 1 "
        "ON CONFLICT (user_id) DO UPDATE SET last_read_position = "
        "GREATEST({states}.last_read_position, EXCLUDED.last_read_position)",
    }
    # In the append's own statement, the rule of the event's type, reading the new row from
    # ``logged`` (only that rule: the other would be planned for nothing, ~0.05 ms a send).
    PROJECTIONS = {event_type: (sql.format(source="logged", messages=MESSAGES.name, states=STATES.name),)
                   for event_type, sql in RULES.items()}

    # Append the event and update the inbox, one statement in its own transaction; returns
    # the logged event's payload, or the earlier event's if its idempotency key is already
    # logged.
    commit_event = PostgresLog.append_with_projections


class SqliteMessages(Inbox, SqliteLog):
    RULES = {
        "MessageSent":
        "INSERT INTO {messages} (id, sender_id, recipient_id, body, sent_at) "
        "SELECT position, json_extract(data, '$.sender_id'), json_extract(data, '$.recipient_id'), "
        "json_extract(data, '$.body'), occurred_at FROM {source} WHERE event_type = 'MessageSent'",
        "InboxRead":
        "INSERT INTO {states} (user_id, last_read_position) "
        "SELECT json_extract(data, '$.user_id'), max(position) FROM {source} "
        "WHERE event_type = 'InboxRead' GROUP BY 1 "
        "ON CONFLICT (user_id) DO UPDATE SET last_read_position = "
        "max({states}.last_read_position, excluded.last_read_position)",
    }

    def commit_event(self, event) -> dict:
        """As on PostgreSQL, in one transaction: the one connection is taken with BEGIN
        IMMEDIATE, so nobody appends the same key between the look-up and the append."""
        try:
            earlier = self.find_by_key(event.idempotency_key)
            if earlier is not None:
                self.session.rollback()
                return earlier
            placed = self.append(event)
            self._project(_REPLAY_SOURCE, MESSAGES, STATES, {"after": placed.position - 1, "upto": placed.position})
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        return placed.to_dict()


STORAGE = Recorders(postgresql=PostgresMessages, sqlite=SqliteMessages)
