"""Event contracts shared by the producers (messages, users) and every consumer.

Events are frozen dataclasses with explicit ``to_dict``/``from_dict``: nothing crosses the
broker or the feed as an ad-hoc dict. ``event_type`` is the class name and doubles as the
nameko event type on the wire.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

# An idempotency key as a form or an RPC caller makes it: 8 to 64 letters, digits, "-" or
# "_" (a UUID's hex or string form fits). The log stores it scoped to its actor.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")


class EventContractError(ValueError):
    """A payload does not match any known event contract."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        raise EventContractError(f"occurred_at must be an ISO-8601 string, not {value!r}")
    # Naive times are read as UTC so that two services never disagree about a moment.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Fields every event carries. ``position`` is 0 until the log assigns one.

    ``idempotency_key`` (envelope metadata, optional) names the user action that caused
    the event, scoped to its actor ("<user id>:<key from the form or caller>"): the log
    holds each key at most once, so a repeated command returns the first event instead of
    appending a second. It travels in the payload only when set (readers that predate it
    ignore it).
    """

    version: ClassVar[int] = 1

    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    position: int = 0
    occurred_at: datetime = field(default_factory=_utcnow)
    idempotency_key: str | None = None

    @classmethod
    def event_type(cls) -> str:
        return cls.__name__

    def with_position(self, position: int) -> "Event":
        return dataclasses.replace(self, position=position)

    def event_data(self) -> dict[str, Any]:
        """The event-specific fields (everything but the envelope)."""
        envelope = {f.name for f in dataclasses.fields(Event)}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in envelope
        }

    def to_dict(self) -> dict[str, Any]:
        payload = {
            "event_type": self.event_type(),
            "version": self.version,
            "event_id": str(self.event_id),
            "position": self.position,
            "occurred_at": self.occurred_at.isoformat(),
            "data": self.event_data(),
        }
        if self.idempotency_key is not None:
            payload["idempotency_key"] = self.idempotency_key
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Event":
        """Build the right event class from a payload made by ``to_dict``.

        Called on ``Event`` it dispatches on ``event_type``; called on a subclass it also
        checks the payload is of that type.
        """
        if not isinstance(payload, dict):
            raise EventContractError(f"an event payload must be a dict, not {type(payload).__name__}")
        type_name = payload.get("event_type")
        event_cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
        if event_cls is None:
            raise EventContractError(f"unknown event type {type_name!r}")
        if cls is not Event and event_cls is not cls:
            raise EventContractError(f"expected {cls.__name__}, got {type_name}")
        version = payload.get("version")
        if version != event_cls.version:
            raise EventContractError(
                f"{type_name} version {version!r} is not supported (this code reads version {event_cls.version})"
            )
        key = payload.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise EventContractError(f"idempotency_key must be a string, not {type(key).__name__}")
        try:
            envelope = {"event_id": uuid.UUID(str(payload["event_id"])), "position": int(payload["position"]),
                        "occurred_at": _parse_time(payload["occurred_at"]), "idempotency_key": key}
            data = payload["data"]
            if type(data) is dict and data.keys() == _plain_fields(event_cls):
                # Each field given, and no other: set them as ``__init__`` would, without
                # its keyword matching (a replay reads a million events).
                event = object.__new__(event_cls)
                event.__dict__.update(data, **envelope)
                return event
            return event_cls(**envelope, **data)
        except (KeyError, TypeError, ValueError) as exc:
            raise EventContractError(f"malformed {type_name} payload: {exc}") from None


@functools.cache
def _plain_fields(cls: type[Event]) -> frozenset[str] | None:
    """The event-specific fields of ``cls`` if ``__init__`` does nothing but set the
    fields (no ``__post_init__``), else None."""
    if hasattr(cls, "__post_init__"):
        return None
    return frozenset(f.name for f in dataclasses.fields(cls)) - {f.name for f in dataclasses.fields(Event)}


@dataclass(frozen=True, kw_only=True)
class MessageSent(Event):
    """User ``sender_id`` sent ``body`` to user ``recipient_id``."""

    sender_id: int
    recipient_id: int
    body: str


@dataclass(frozen=True, kw_only=True)
class InboxRead(Event):
    """User ``user_id`` opened their inbox: everything received so far counts as read."""

    user_id: int


@dataclass(frozen=True, kw_only=True)
class UserRegistered(Event):
    """An account was opened (producer: users; consumers: the gateway's caches of names).
    Public fields only: never the email or the password hash. Accounts that existed before
    the users log did were logged by its migration with their name at that time."""

    user_id: int
    username: str
    about_me: str


@dataclass(frozen=True, kw_only=True)
class ProfileChanged(Event):
    """User ``user_id`` edited their profile: the whole public profile after the edit
    (producer: users; consumers: the gateway's caches). Appended only when the username or
    about_me actually changed."""

    user_id: int
    username: str
    about_me: str


@dataclass(frozen=True, kw_only=True)
class SessionEnded(Event):
    """User ``user_id`` signed out of one of their sessions (producer: users; consumers:
    the gateways, which then check that user's sessions with the service again). It names
    no session: a token, or its hash, never leaves the users service."""

    user_id: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (MessageSent, InboxRead, UserRegistered, ProfileChanged, SessionEnded)}


@dataclass(frozen=True, kw_only=True)
class NotificationChanged(Event):
    """A user's notification row changed (published by the notifications service after
    commit; not part of the messages log, so ``position`` stays 0). Gateways use it to
    answer "nothing new" polls without asking the service, and push the change to open
    streams.

    ``value`` is the row's new data (the poll's ``data``), so a gateway pushes the change
    without asking the service. Optional within version 1: a payload without it (from an
    older publisher) still reads, and the gateway then re-reads the user's rows."""

    user_id: int
    name: str
    timestamp: float
    value: Any = None


EVENT_TYPES[NotificationChanged.__name__] = NotificationChanged
