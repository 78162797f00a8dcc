"""The messages service's commands: validate, then append the event and update the read
model in one transaction (``storage.commit_event``)."""
from __future__ import annotations

from typing import Callable

from kernel.errors import DependencyUnavailable, RecipientNotFound, ValidationFailed, whole_number
from kernel.events import IDEMPOTENCY_KEY_PATTERN, InboxRead, MessageSent

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


USER_ID_MAX = 2**31 - 1  # the users service's ids are 32-bit integers


def _user_id(value, what: str) -> int:
    return whole_number(value, f"{what} must be a user id.", 1, USER_ID_MAX)


def clean_key(key) -> str:
    """An idempotency key as a form or caller gives it: 8 to 64 letters, digits, ``-``, ``_``
    (a UUID's hex or string form fits)."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            "idempotency_key must be 8 to 64 letters, digits, '-' or '_' (a UUID, made once per action).",
            "idempotency_key",
        )
    return key


def _same_send(earlier: dict, sender_id: int, recipient_id: int, body: str) -> bool:
    return earlier["event_type"] == MessageSent.__name__ and earlier["data"] == {
        "sender_id": sender_id, "recipient_id": recipient_id, "body": body}


def _earlier_send(storage, scoped_key: str | None) -> dict | None:
    if scoped_key is None:
        return None
    try:
        return storage.find_by_key(scoped_key)
    finally:
        storage.rollback()  # end the read's transaction (SQLite holds its one connection)


def send_message(storage, sender_id, recipient_id, body, recipient_exists: Callable[[int], bool],
                 idempotency_key: str | None = None) -> dict:
    """Append MessageSent. With an ``idempotency_key`` (made once per user action, where the
    user acted), the send happens once whatever is repeated: a redelivered request, a retry
    after a timeout, a resubmitted form all return the first send's event. The same key
    with a different message is refused rather than answered with the other message."""
    sender_id = _user_id(sender_id, "sender")
    body = clean_body(body)
    scoped_key = f"{sender_id}:{clean_key(idempotency_key)}" if idempotency_key is not None else None
    if isinstance(recipient_id, bool) or not isinstance(recipient_id, int) or not 1 <= recipient_id <= USER_ID_MAX:
        raise RecipientNotFound(f"No user with id {recipient_id!r} to send a message to.")
    try:
        exists = recipient_exists(recipient_id)
    except DependencyUnavailable:
        # The users service is away: a repeat of a send already made needs no recipient
        # check, so it is still answered (a new send must wait for the check).
        earlier = _earlier_send(storage, scoped_key)
        if earlier is None:
            raise
        exists = True
    if not exists:
        raise RecipientNotFound(f"No user with id {recipient_id!r} to send a message to.")
    event = MessageSent(sender_id=sender_id, recipient_id=recipient_id, body=body, idempotency_key=scoped_key)
    result = storage.commit_event(event)
    if result["event_id"] != str(event.event_id) and not _same_send(result, sender_id, recipient_id, body):
        raise ValidationFailed("This form was already used to send a different message. "
                               "Please open the form again and resend.", "message")
    return result


def mark_inbox_read(storage, user_id) -> dict:
    user_id = _user_id(user_id, "user")
    return storage.commit_event(InboxRead(user_id=user_id))


def read_inbox(storage, user_id) -> tuple[int, dict | None]:
    """Mark the inbox read if anything in it is unread (a visit with nothing unread is no
    fact worth logging): the last position read before, and the ``InboxRead`` or None."""
    user_id = _user_id(user_id, "user")
    read_after = storage.last_read_position(user_id)
    return read_after, (storage.commit_event(InboxRead(user_id=user_id)) if storage.unread_count(user_id) else None)
