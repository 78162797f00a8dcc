"""The projection's apply step: a pure function of (current rows, event) -> changed rows.

Unread count of user U = the number of MessageSent to U after U's latest InboxRead, in log
order. Timestamps come from the events (never from the clock at apply time), so a replay
gives exactly the rows that live processing gave; and they strictly increase per user.
"""
from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

from kernel.events import Event, InboxRead, MessageSent

UNREAD_MESSAGE_COUNT = "unread_message_count"
# Float resolution at today's Unix times is ~2.4e-7 s, so one microsecond is representable.
TIMESTAMP_STEP = 1e-6

Key = tuple[int, str]  # (user_id, name)


class Row(NamedTuple):
    """A tuple, not a frozen dataclass: a replay makes one per changed row, and a frozen
    dataclass's ``__init__`` costs twice as much (0.53 against 0.25 us)."""

    user_id: int
    name: str
    data: object
    timestamp: float

    @property
    def key(self) -> Key:
        return (self.user_id, self.name)


def _next_timestamp(event: Event, previous: Row | None) -> float:
    moment = event.occurred_at.timestamp()
    if previous is not None and moment <= previous.timestamp:
        return previous.timestamp + TIMESTAMP_STEP
    return moment


def apply(rows: Mapping[Key, Row], event: Event) -> dict[Key, Row]:
    """The rows ``event`` changes, given the current ``rows`` (only those it needs)."""
    if isinstance(event, MessageSent):
        user_id, change = event.recipient_id, lambda count: count + 1
    elif isinstance(event, InboxRead):
        user_id, change = event.user_id, lambda count: 0
    else:
        return {}
    key = (user_id, UNREAD_MESSAGE_COUNT)
    current = rows.get(key)
    before = current.data if current else 0  # absent means 0
    count = change(before)
    if count == before:
        return {}  # nothing to tell
    return {key: Row(user_id, UNREAD_MESSAGE_COUNT, count, _next_timestamp(event, current))}


def keys_of(event: Event) -> list[Key]:
    """The rows ``apply`` may read or change for ``event`` (to load them beforehand)."""
    if isinstance(event, MessageSent):
        return [(event.recipient_id, UNREAD_MESSAGE_COUNT)]
    if isinstance(event, InboxRead):
        return [(event.user_id, UNREAD_MESSAGE_COUNT)]
    return []


def fold(events: Iterable[Event], rows: dict[Key, Row] | None = None) -> dict[Key, Row]:
    """Apply events in order to ``rows`` (empty by default); the replay, in memory."""
    rows = {} if rows is None else rows
    for event in events:
        rows.update(apply(rows, event))
    return rows
