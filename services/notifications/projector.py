"""Keeps the projection current: applies events from the broker exactly once in effect,
and fills any gap from the messages feed.

The broker is the fast wake-up; the feed is what makes it correct. Every change commits
with the tracking row (the last applied position), under that row's lock:

* an event at or below the tracked position is a duplicate: acknowledged, no effect;
* the next expected event is applied;
* an event past the next expected one means some were lost or are late: the missing run
  is read from the feed and applied in order first;
* two consumers take turns on the tracking row, so each event is applied by one of them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

from kernel.events import Event
from services.notifications import store

logger = logging.getLogger(__name__)

FEED_BATCH = 1000

Feed = Callable[[int, int], list[dict]]  # (after position, limit) -> event payloads


class Projector:
    def __init__(self, make_session: Callable, feed: Feed, turn=None, announce: Callable | None = None):
        self.make_session = make_session
        self.feed = feed
        self.turn = turn if turn is not None else contextlib.nullcontext()
        # Told of the rows each commit changed, after the commit (see service.py).
        self.announce = announce or (lambda rows: None)

    def _read_feed(self, after: int, up_to: int | None = None) -> list[Event]:
        events: list[Event] = []
        position = after
        while up_to is None or position < up_to:
            batch = [Event.from_dict(p) for p in self.feed(position, FEED_BATCH)]
            if not batch:
                break
            events.extend(batch)
            position = batch[-1].position
            if up_to is None:
                break  # one batch at a time when catching up to the head
        return [e for e in events if up_to is None or e.position <= up_to]

    def _apply(self, events: list[Event]) -> int:
        """Apply ``events`` (a contiguous run read from the feed) under the tracking row's
        lock; those another consumer applied meanwhile are skipped."""
        session = self.make_session()
        changes: list = []
        try:
            tracked = store.tracked_position(session, lock=True)
            new_position = store.apply_events(session, events, tracked, changes=changes)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        self.announce(changes)
        return new_position - tracked

    def _tracked(self) -> int:
        session = self.make_session()
        try:
            return store.tracked_position(session)
        finally:
            session.close()

    def handle(self, event: Event) -> int:
        """Apply ``event`` (and whatever precedes it that is missing); returns how many
        events were applied (0 for a duplicate).

        The common case (the next expected event) is one transaction. For a gap, the feed
        is read outside any transaction, so no database lock (or SQLite's one connection)
        is held while waiting for the messages service.
        """
        with self.turn:
            session = self.make_session()
            try:
                tracked = store.tracked_position(session, lock=True)
                if event.position <= tracked:
                    session.rollback()
                    return 0
                if event.position == tracked + 1:
                    changes: list = []
                    store.apply_events(session, [event], tracked, changes=changes)
                    session.commit()
                    self.announce(changes)
                    return 1
                session.rollback()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()
            logger.info("notifications: gap after %s (got %s); reading the feed", tracked, event.position)
            return self._apply(self._read_feed(tracked, up_to=event.position))

    def catch_up(self) -> int:
        """Apply everything the feed has past the tracked position; returns how many."""
        applied = 0
        while True:
            with self.turn:
                events = self._read_feed(self._tracked())
                if not events:
                    return applied
                applied += self._apply(events)
