"""The messages service's commands: validate, append the event, update the read model,
commit, all in one transaction."""
from __future__ import annotations

from typing import Callable

from sqlalchemy.orm import Session

from kernel.db import autocommit_engine_for
from kernel.errors import RecipientNotFound, ValidationFailed
from kernel.events import InboxRead, MessageSent
from services.messages import inbox, log

MESSAGE_MAX = 140


def clean_body(body) -> str:
    if not isinstance(body, str) or not body.strip():
        raise ValidationFailed("Please write a message.", "message")
    body = body.strip()
    if len(body) > MESSAGE_MAX:
        raise ValidationFailed(f"Messages are at most {MESSAGE_MAX} characters.", "message")
    if "\x00" in body:
        raise ValidationFailed("The message contains a character that is not allowed.", "message")
    return body


def _user_id(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationFailed(f"{what} must be a user id.")
    return value


def _commit_event(session: Session, event):
    engine = session.get_bind()
    if engine.dialect.name == "postgresql":
        sql, params = inbox.apply_sql(event)
        with autocommit_engine_for(engine).connect() as connection:
            return log.append_in_one_statement(connection, event, sql, params)
    # SQLite (embedded): one connection, BEGIN IMMEDIATE; the plain transaction is as good.
    try:
        placed = log.append(session, event)
        inbox.apply(session, placed)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return placed


def send_message(session: Session, sender_id, recipient_id, body, recipient_exists: Callable[[int], bool]) -> dict:
    sender_id = _user_id(sender_id, "sender")
    body = clean_body(body)
    if isinstance(recipient_id, bool) or not isinstance(recipient_id, int) or not recipient_exists(recipient_id):
        raise RecipientNotFound(f"No user with id {recipient_id!r} to send a message to.")
    return _commit_event(session, MessageSent(sender_id=sender_id, recipient_id=recipient_id, body=body)).to_dict()


def mark_inbox_read(session: Session, user_id) -> dict:
    user_id = _user_id(user_id, "user")
    return _commit_event(session, InboxRead(user_id=user_id)).to_dict()
