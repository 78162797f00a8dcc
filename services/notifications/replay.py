"""Rebuilding the projection from the messages feed (``kernel.projector.rebuild``, beside
the live table, then swapped in), and verifying the live projection against a fresh
replay."""
from __future__ import annotations

import contextlib
from typing import Callable

from kernel import projector
from services.notifications.projection import UNREAD_MESSAGE_COUNT, Row, apply


def rebuild(open_store: Callable, feed: Callable, progress: Callable[[int], None] | None = None) -> int:
    """Replay the whole feed into a new projection and swap it in; returns its position."""
    return projector.rebuild(open_store, feed, apply, progress)


def differences(open_store: Callable, feed: Callable, messages_unread: Callable[[list[int]], dict]) -> list[str]:
    """What differs between the live projection, a fresh replay of the feed, and the
    messages service's own unread counts, and any idempotency key that appears twice in
    the log (a user action that became two events). Empty when all agree."""
    with contextlib.closing(open_store()) as store:
        live, live_position = store.all_rows(), store.tracked()
    first_seen: dict[str, int] = {}  # idempotency key -> position of its first event
    problems = []

    def feed_up_to_live(after, limit):
        payloads = [p for p in feed(after, limit) if p["position"] <= live_position]
        for payload in payloads:
            key = payload.get("idempotency_key")
            if key is None:
                continue
            if key in first_seen:
                # One user action, two events: the log itself is wrong, whatever the projection says.
                problems.append(f"idempotency key {key} appears twice in the log: positions "
                                f"{first_seen[key]} and {payload['position']}")
            else:
                first_seen[key] = payload["position"]
        return payloads

    replayed, _ = projector.replay(feed_up_to_live, apply)
    for key in sorted(set(live) | set(replayed)):
        if live.get(key) != replayed.get(key):
            problems.append(f"user {key[0]} {key[1]}: live {_show(live.get(key))}, replay {_show(replayed.get(key))}")
    users = sorted({user for user, _ in set(live) | set(replayed)})
    theirs = messages_unread(users) if users else {}
    for user in users:
        ours = live.get((user, UNREAD_MESSAGE_COUNT))
        ours_count = ours.data if ours else 0
        if theirs.get(str(user), 0) != ours_count:
            problems.append(f"user {user} unread_message_count: notifications {ours_count}, messages {theirs.get(str(user), 0)}")
    return problems


def _show(row: Row | None) -> str:
    return "absent" if row is None else f"{row.data!r} at {row.timestamp!r}"
