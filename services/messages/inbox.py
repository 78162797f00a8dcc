"""The inbox read model: how each event changes it (``apply``), queries, and replay."""
from __future__ import annotations

import math

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from kernel.clock import as_utc
from kernel.events import Event, InboxRead, MessageSent
from services.messages import log
from services.messages.models import InboxMessage, InboxState

PER_PAGE = 25


def apply_message_sent(session: Session, event: MessageSent) -> None:
    session.execute(
        insert(InboxMessage),
        [
            {
                "id": event.position,
                "sender_id": event.sender_id,
                "recipient_id": event.recipient_id,
                "body": event.body,
                "sent_at": event.occurred_at,
            }
        ],
    )


def apply_inbox_read(session: Session, event: InboxRead) -> None:
    state = session.get(InboxState, event.user_id)
    if state is None:
        session.add(InboxState(user_id=event.user_id, last_read_position=event.position))
    else:
        state.last_read_position = max(state.last_read_position, event.position)


def apply(session: Session, event: Event) -> None:
    if isinstance(event, MessageSent):
        apply_message_sent(session, event)
    elif isinstance(event, InboxRead):
        apply_inbox_read(session, event)
    else:  # a new event type must be handled here before it is appended
        raise TypeError(f"the inbox does not know {event.event_type()}")


# The same changes as ``apply``, as SQL for PostgreSQL's one-statement append
# (log.append_in_one_statement). Replay uses ``apply``; the replay tests compare both.
_SQL_APPLY = {
    MessageSent: (
        "INSERT INTO inbox_messages (id, sender_id, recipient_id, body, sent_at) "
        "SELECT position, :sender_id, :recipient_id, :body, :occurred_at FROM logged",
        lambda event: {"sender_id": event.sender_id, "recipient_id": event.recipient_id, "body": event.body},
    ),
    InboxRead: (
        "INSERT INTO inbox_state (user_id, last_read_position) SELECT :user_id, position FROM logged "
        "ON CONFLICT (user_id) DO UPDATE SET last_read_position = "
        "GREATEST(inbox_state.last_read_position, EXCLUDED.last_read_position)",
        lambda event: {"user_id": event.user_id},
    ),
}


def apply_sql(event: Event) -> tuple[str, dict]:
    sql, params = _SQL_APPLY[type(event)]
    return sql, params(event)


def last_read_position(session: Session, user_id: int) -> int:
    return session.scalar(select(InboxState.last_read_position).where(InboxState.user_id == user_id)) or 0


def unread_count(session: Session, user_id: int) -> int:
    """MessageSent to the user after their latest InboxRead, in log order."""
    return session.scalar(
        select(func.count())
        .select_from(InboxMessage)
        .where(InboxMessage.recipient_id == user_id, InboxMessage.id > last_read_position(session, user_id))
    )


def unread_counts(session: Session, user_ids) -> dict[str, int]:
    """``unread_count`` of many users (keys are ids as strings: JSON keys are strings)."""
    return {str(user_id): unread_count(session, user_id) for user_id in user_ids}


def page_of(session: Session, user_id: int, page: int, per_page: int = PER_PAGE) -> dict:
    """One page of received messages, newest first. Page numbers start at 1."""
    total = session.scalar(select(func.count()).select_from(InboxMessage).where(InboxMessage.recipient_id == user_id))
    pages = max(1, math.ceil(total / per_page))
    rows = []
    if page <= pages:  # past the end there is nothing to fetch (and the offset could overflow)
        rows = session.scalars(
            select(InboxMessage)
            .where(InboxMessage.recipient_id == user_id)
            .order_by(InboxMessage.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    return {
        "messages": [
            {"id": m.id, "sender_id": m.sender_id, "body": m.body, "sent_at": _iso(m.sent_at)} for m in rows
        ],
        "page": page,
        "pages": pages,
        "total": total,
        "has_prev": page > 1,
        "has_next": page < pages,
    }


def _iso(moment) -> str:
    return as_utc(moment).isoformat()


def replay(session: Session, progress=None) -> int:
    """Rebuild the read model from the log, in one transaction; returns events applied."""
    session.execute(delete(InboxMessage))
    session.execute(delete(InboxState))
    applied, position = 0, 0
    while True:
        batch = log.read_after(session, position)
        if not batch:
            break
        for event in batch:
            apply(session, event)
            position = event.position
        applied += len(batch)
        session.flush()
        if progress:
            progress(applied)
    session.commit()
    return applied


def snapshot(session: Session) -> tuple[list, list]:
    """Every row of the read model, in a stable order (for comparing with a replay)."""
    messages = [
        (m.id, m.sender_id, m.recipient_id, m.body, _iso(m.sent_at))
        for m in session.scalars(select(InboxMessage).order_by(InboxMessage.id))
    ]
    states = [(s.user_id, s.last_read_position) for s in session.scalars(select(InboxState).order_by(InboxState.user_id))]
    return messages, states
