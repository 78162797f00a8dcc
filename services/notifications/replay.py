"""Rebuilding the projection from the messages feed, beside the live table, then swapping
it in; and verifying the live projection against a fresh replay.

The live table keeps serving throughout: the rebuild is folded in memory with the same
``apply`` as live processing, written to ``notifications_rebuild``, and swapped in by one
transaction that holds the tracking row (so the live consumer pauses for the swap only),
applies whatever the log gained meanwhile, and replaces the live rows.
"""
from __future__ import annotations

import json
from typing import Callable

from sqlalchemy import delete, insert, select, update

from kernel.events import Event
from services.notifications import store
from services.notifications.models import PROJECTION, REBUILD, Tracking, rebuild_table
from services.notifications.projection import Key, Row, fold

FEED_BATCH = 1000


def replay_rows(feed: Callable, progress: Callable[[int], None] | None = None, after: int = 0,
                rows: dict[Key, Row] | None = None) -> tuple[dict[Key, Row], int]:
    """Fold everything the feed has after ``after`` into ``rows``; returns (rows, position)."""
    rows = {} if rows is None else rows
    position = after
    while True:
        batch = [Event.from_dict(payload) for payload in feed(position, FEED_BATCH)]
        if not batch:
            return rows, position
        fold(batch, rows)
        position = batch[-1].position
        if progress:
            progress(position)


def _write_rebuild(session, rows: dict[Key, Row], position: int) -> None:
    bind = session.connection()
    rebuild_table.drop(bind, checkfirst=True)
    rebuild_table.create(bind)
    values = [
        {"user_id": r.user_id, "name": r.name, "payload_json": json.dumps(r.data), "timestamp": r.timestamp}
        for r in rows.values()
    ]
    for start in range(0, len(values), 5000):
        session.execute(insert(rebuild_table), values[start:start + 5000])
    if session.scalar(select(Tracking.position).where(Tracking.projection == REBUILD)) is None:
        session.execute(insert(Tracking).values(projection=REBUILD, position=position))
    else:
        session.execute(update(Tracking).where(Tracking.projection == REBUILD).values(position=position))


def rebuild(make_session: Callable, feed: Callable, progress: Callable[[int], None] | None = None) -> int:
    """Replay the whole feed into a new projection and swap it in; returns its position."""
    rows, position = replay_rows(feed, progress)
    session = make_session()
    try:
        _write_rebuild(session, rows, position)
        session.commit()

        # The swap: the live consumer waits on the tracking row while we finish.
        store.tracked_position(session, lock=True)
        while True:
            events = [Event.from_dict(p) for p in feed(position, FEED_BATCH)]
            if not events:
                break
            position = store.apply_events(session, events, position, table=rebuild_table, projection=REBUILD)
        live = store.LIVE
        session.execute(delete(live))
        session.execute(insert(live).from_select(
            ["user_id", "name", "payload_json", "timestamp"],
            select(rebuild_table.c.user_id, rebuild_table.c.name, rebuild_table.c.payload_json, rebuild_table.c.timestamp),
        ))
        session.execute(update(Tracking).where(Tracking.projection == PROJECTION).values(position=position))
        session.execute(delete(Tracking).where(Tracking.projection == REBUILD))
        rebuild_table.drop(session.connection())
        session.commit()
        return position
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def differences(make_session: Callable, feed: Callable, messages_unread: Callable[[list[int]], dict]) -> list[str]:
    """What differs between the live projection, a fresh replay of the feed, and the
    messages service's own unread counts, and any idempotency key that appears twice in
    the log (a user action that became two events). Empty when all agree."""
    session = make_session()
    try:
        live = store.all_rows(session)
        live_position = store.tracked_position(session)
    finally:
        session.close()
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

    replayed, _ = replay_rows(feed_up_to_live)
    for key in sorted(set(live) | set(replayed)):
        if live.get(key) != replayed.get(key):
            problems.append(f"user {key[0]} {key[1]}: live {_show(live.get(key))}, replay {_show(replayed.get(key))}")
    users = sorted({user for user, _ in set(live) | set(replayed)})
    theirs = messages_unread(users) if users else {}
    for user in users:
        ours = live.get((user, "unread_message_count"))
        ours_count = ours.data if ours else 0
        if theirs.get(str(user), 0) != ours_count:
            problems.append(f"user {user} unread_message_count: notifications {ours_count}, messages {theirs.get(str(user), 0)}")
    return problems


def _show(row: Row | None) -> str:
    return "absent" if row is None else f"{row.data!r} at {row.timestamp!r}"
