"""What the users feed rebuilds: {user id: (username, about_me)}, by folding it.

Nothing in this repository builds a read model from the users' events yet (the gateway's
caches of names come next). Rather than a ``microblog replay users`` with nothing to
rebuild, the smallest honest replay is this fold, the pure function any such cache will
apply, checked against the users table: ``microblog verify`` folds the whole feed and
reports every account whose name or about_me differs, so a command that changed a profile
without logging it (or logged something it did not do) is caught.
"""
from __future__ import annotations

from kernel.events import ProfileChanged, UserRegistered

Profiles = dict[int, tuple[str, str]]


def fold(events, profiles: Profiles | None = None) -> Profiles:
    """``profiles`` (left unchanged) after ``events``, in position order: each
    ``UserRegistered``/``ProfileChanged`` carries the whole public profile after it."""
    profiles = dict(profiles or {})
    for event in events:
        if isinstance(event, (UserRegistered, ProfileChanged)):
            profiles[event.user_id] = (event.username, event.about_me)
    return profiles


def _feed(storage, upto: int, batch: int):
    position = 0
    while position < upto and (events := storage.read_after(position, batch)):
        yield from (event for event in events if event.position <= upto)
        position = events[-1].position


def differences(storage, batch: int = 1000, attempts: int = 5) -> list[str]:
    """Every account on which the folded feed and the users table disagree.

    A profile changes only together with its event (one transaction, which moves the
    log's head): if the head is the same before and after reading the table, the table is
    exactly what the feed up to that head gives, even while people register meanwhile."""
    try:
        for _ in range(attempts):
            head = storage.head()
            table = storage.profiles()
            if storage.head() == head:
                break
        profiles = fold(_feed(storage, head, batch))
    finally:
        storage.rollback()
    return [f"user {user_id}: the feed gives {profiles.get(user_id)!r}, the users table {table.get(user_id)!r}"
            for user_id in sorted(profiles.keys() | table.keys()) if profiles.get(user_id) != table.get(user_id)]
