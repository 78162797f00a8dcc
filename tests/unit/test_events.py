"""Event contracts: round trips, dispatch by type, and refusal of what does not fit."""
import dataclasses
import uuid
from datetime import datetime, timezone

import pytest

from kernel.events import Event, EventContractError, InboxRead, MessageSent


def test_message_sent_round_trips_through_a_dict():
    event = MessageSent(sender_id=1, recipient_id=2, body="hello <b>")
    payload = event.to_dict()
    assert payload["event_type"] == "MessageSent"
    assert payload["version"] == 1
    assert payload["data"] == {"sender_id": 1, "recipient_id": 2, "body": "hello <b>"}
    assert Event.from_dict(payload) == event
    assert MessageSent.from_dict(payload) == event


def test_positions_are_assigned_by_copy_not_mutation():
    event = InboxRead(user_id=5)
    placed = event.with_position(42)
    assert (event.position, placed.position) == (0, 42)
    assert placed.event_id == event.event_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        placed.position = 43


def test_from_dict_dispatches_on_type():
    payload = InboxRead(user_id=7, position=3).to_dict()
    event = Event.from_dict(payload)
    assert isinstance(event, InboxRead) and event.user_id == 7 and event.position == 3


def test_naive_times_are_read_as_utc():
    payload = InboxRead(user_id=1).to_dict()
    payload["occurred_at"] = "2026-11-24T10:00:00"
    assert Event.from_dict(payload).occurred_at == datetime(2026, 11, 24, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.update(event_type="MessageDeleted"), "unknown event type"),
        (lambda p: p.update(version=2), "version 2 is not supported"),
        (lambda p: p["data"].pop("body"), "malformed MessageSent"),
        (lambda p: p["data"].update(extra=1), "malformed MessageSent"),
        (lambda p: p.update(event_id="not-a-uuid"), "malformed MessageSent"),
        (lambda p: p.update(occurred_at=12), "occurred_at"),
    ],
)
def test_payloads_that_do_not_fit_the_contract_are_refused(mutate, message):
    payload = MessageSent(sender_id=1, recipient_id=2, body="x").to_dict()
    mutate(payload)
    with pytest.raises(EventContractError, match=message):
        Event.from_dict(payload)


def test_a_subclass_refuses_another_type():
    with pytest.raises(EventContractError, match="expected InboxRead"):
        InboxRead.from_dict(MessageSent(sender_id=1, recipient_id=2, body="x").to_dict())


def test_event_ids_are_unique_uuids():
    ids = {InboxRead(user_id=1).event_id for _ in range(100)}
    assert len(ids) == 100 and all(isinstance(i, uuid.UUID) for i in ids)


def test_from_dict_builds_the_same_event_with_or_without_every_field_given():
    from kernel.events import NotificationChanged

    event = MessageSent(sender_id=1, recipient_id=2, body="x", position=9, idempotency_key="1:abcdefgh")
    built = Event.from_dict(event.to_dict())
    assert built == event and vars(built) == vars(event) and hash(built) == hash(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.body = "y"
    # A field with a default may be left out (an older publisher): __init__ fills it in.
    payload = NotificationChanged(user_id=1, name="n", timestamp=1.5, value=3).to_dict()
    del payload["data"]["value"]
    assert Event.from_dict(payload).value is None


@pytest.mark.parametrize("payload", [[], {"event_type": ["MessageSent"]}, {"event_type": None}])
def test_payloads_that_are_not_events_at_all_are_refused(payload):
    with pytest.raises(EventContractError):
        Event.from_dict(payload)
