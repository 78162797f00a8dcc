"""The tracking projector: keeps a projection current from a feed of events, applying each
exactly once in effect, and rebuilds it from the feed beside the live rows.

A projection gives a pure ``apply(rows, event) -> changed rows`` and ``keys_of(event)``
(the rows ``apply`` reads), and a recorder (its storage: ``kernel.db.Recorder``) with:

* ``tracked()``: the last applied position;
* ``record(keys, step)``: read the tracked position and the rows of ``keys``, call
  ``step(tracked, rows) -> (position, changed rows)`` (pure; called again if another
  consumer moved the tracking row meanwhile), and commit the changed rows with the tracking
  row moved to ``position``, atomically and only if it is still at ``tracked``; returns
  ``(tracked, rows, changed)`` of the step that committed;
* ``build_beside(rows)`` and ``swap_in(changed, position)`` for ``rebuild``.

The broker is the fast wake-up; the feed is what makes it correct. Every change commits
with the tracking row, and only if that row is as it was read:

* an event at or below the tracked position is a duplicate: acknowledged, no effect;
* the next expected event is applied;
* an event past the next expected one means some were lost or are late: the missing run
  is read from the feed and applied in order first;
* two consumers take turns on the tracking row, so each event is applied by one of them.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from typing import Callable, Iterator

from kernel.db import Outage, is_database_unavailable
from kernel.errors import DependencyUnavailable
from kernel.events import EVENT_TYPES, Event, _parse_time, _plain_fields

logger = logging.getLogger(__name__)

FEED_BATCH = 1000
REPLAY_BATCH = 10_000
# Before reading the feed for a gap, look again after each of these (seconds): see handle().
GAP_WAITS = (0.002, 0.004, 0.008, 0.016, 0.032)

Feed = Callable[[int, int], list[dict]]  # (after position, limit) -> event payloads


class Gap(Exception):
    """An event arrived past the next expected position: the ones between are missing."""

    def __init__(self, tracked: int, position: int):
        super().__init__(f"expected position {tracked + 1}, got {position}")
        self.tracked = tracked


def fold(events: list[Event], tracked: int, rows: dict, apply: Callable) -> tuple[int, dict]:
    """Apply a contiguous run of events after ``tracked`` to the current ``rows`` (which it
    does not modify): the new position and the rows that changed. A hole raises ``Gap``."""
    current = dict(rows)
    changed: dict = {}
    position = tracked
    for event in events:
        if event.position != position + 1:
            raise Gap(position, event.position)
        change = apply(current, event)
        current.update(change)
        changed.update(change)
        position = event.position
    return position, changed


class Turn:
    """What the projectors of one process share: a lock they take one at a time (in
    arrival order, given a FIFO lock such as eventlet's ``Semaphore``), and the events
    delivered to them that are not yet known to be committed, by position."""

    def __init__(self, lock=None):
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.pending: dict[int, Event] = {}
        self.applied_from_deliveries = 0  # since the last take_activity()

    def take_activity(self) -> bool:
        """Whether deliveries applied anything since the last call."""
        active, self.applied_from_deliveries = self.applied_from_deliveries > 0, 0
        return active


@contextlib.contextmanager
def _opened(open_store: Callable):
    """``open_store()``'s recorder, rolled back if the block fails, closed after it."""
    store = open_store()
    try:
        yield store
    except BaseException:
        store.rollback()
        raise
    finally:
        store.close()


class Projector:
    """``open_store()`` gives a recorder (closed after use); ``projection`` has ``apply``
    and ``keys_of``; ``announce(rows)`` is told of the rows each commit changed, after it."""

    def __init__(self, open_store: Callable, feed: Feed, projection, turn: Turn | None = None,
                 announce: Callable | None = None, gap_waits: tuple[float, ...] = GAP_WAITS):
        self.open_store = open_store
        self.feed = feed
        self.projection = projection
        self.turn = turn if turn is not None else Turn()
        self.announce = announce or (lambda rows: None)
        self.gap_waits = gap_waits

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

    def _apply(self, events: list[Event], announced: list) -> int:
        """Apply ``events`` (a contiguous run read from the feed) as one batch, the way
        deliveries are applied (``_commit_run``); those another consumer applied meanwhile
        are skipped. The rows changed are added to ``announced`` once committed, for the
        caller to announce after its turn. Returns how many this call applied."""
        changes: list = []
        tracked, batch = self._commit_run({event.position: event for event in events}, changes)
        reached = tracked + len(batch)
        if events and reached < events[-1].position:  # the run has a hole, or starts past the tracked position
            raise Gap(reached, min(e.position for e in events if e.position > reached))
        announced.extend(changes)
        return len(batch)

    def handle(self, event: Event) -> int:
        """Apply ``event`` (and whatever precedes it that is missing); returns how many
        events this call applied (0 when another call's batch, or an earlier delivery,
        already committed it).

        Deliveries wait here for the process's turn; meanwhile they are visible in
        ``turn.pending``, so the caller that holds the turn applies every consecutive event
        that has arrived, in one transaction, and the others find theirs committed. (One
        transaction per event made the turn the bottleneck near 100 events/s.) An event
        leaves ``turn.pending`` only once committed, so a caller returning 0 means "applied".

        A gap (an event past the next expected one, the missing ones not pending here) is
        usually a delivery still on its way: the other event type's queue, or another
        instance of the service, which the broker gives every other event. So before
        reading the feed this call waits a little, out of the turn, looking again after
        each of ``gap_waits`` (about 60 ms in all): the missing events are normally applied
        meanwhile, by another delivery here (whose batch then takes this event too) or by
        the other instance. Reading the feed for every such gap (one RPC each, in the turn)
        made two instances at 100 events/s fall up to 2 s behind. The feed is read outside
        any transaction, so no database lock (or SQLite's one connection) is held while
        waiting for the feed's service.
        """
        self.turn.pending[event.position] = event
        applied = 0
        waits = iter(self.gap_waits)
        while True:
            wait = next(waits, None)
            announced: list = []
            try:
                with self.turn.lock:
                    applied += self._handle_in_turn(event, announced, read_feed=wait is None)
            finally:
                # Outside the turn: the next batch need not wait for these publishes.
                if announced:
                    self.announce(announced)
            if event.position not in self.turn.pending or wait is None:
                return applied
            time.sleep(wait)

    def _handle_in_turn(self, event: Event, announced: list, read_feed: bool = True) -> int:
        pending = self.turn.pending
        if event.position not in pending:
            return 0  # a batch of another caller's committed it
        # The batch comes from what is pending now: deliveries that arrive while the
        # database answers touch rows this read does not cover; the next batch has them.
        changes: list = []
        tracked, batch = self._commit_run(dict(pending), changes)
        for position in [p for p in pending if p <= tracked]:
            del pending[position]  # committed earlier (here, by the feed or elsewhere)
        for done in batch:
            del pending[done.position]
        announced.extend(changes)
        self.turn.applied_from_deliveries += len(batch)
        if event.position not in pending or not read_feed:
            return len(batch)
        tracked += len(batch)
        logger.info("projector: gap after %s (got %s); reading the feed", tracked, event.position)
        applied = self._apply(self._read_feed(tracked, up_to=event.position), announced)
        pending.pop(event.position, None)
        self.turn.applied_from_deliveries += applied
        return len(batch) + applied

    def _commit_run(self, candidates: dict[int, Event], changes: list) -> tuple[int, list[Event]]:
        """Commit the run of ``candidates`` that follows the tracked position. Returns the
        tracked position it followed and the run (empty if the next event is not among
        them); the rows written, and the current rows of events delivered again, are added
        to ``changes``."""
        keys = [k for e in candidates.values() for k in self.projection.keys_of(e)]

        def step(tracked: int, rows: dict) -> tuple[int, dict]:
            return fold(_run_after(tracked, candidates), tracked, rows, self.projection.apply)

        with _opened(self.open_store) as store:
            tracked, rows, changed = store.record(keys, step)
        changes.extend(changed.values())
        # The current rows of events delivered again (at or below the tracked position), to
        # announce again: a process killed after its commit and before its announce gets
        # its event back unacknowledged, and without this the gateways' open streams would
        # not hear of that change until the user's next one. A row announced twice is
        # harmless (a gateway writes a row only if it is newer than what a stream has).
        repeats = {k for p, e in candidates.items() if p <= tracked for k in self.projection.keys_of(e)}
        changes.extend(rows[k] for k in repeats if k in rows and k not in changed)
        return tracked, _run_after(tracked, candidates)

    def catch_up(self) -> int:
        """Apply what the feed has past the tracked position, batch by batch, until a batch
        comes back short (the head as of that read); returns how many. It does not chase a
        head that moves: under load that would keep taking the turn and apply from the feed
        what deliveries are about to bring."""
        applied = 0
        while True:
            announced: list = []
            with self.turn.lock:
                with _opened(self.open_store) as store:
                    tracked = store.tracked()
                events = self._read_feed(tracked)
                if events:
                    applied += self._apply(events, announced)
            if announced:
                self.announce(announced)
            if len(events) < FEED_BATCH:
                return applied

    def check(self) -> int:
        """The periodic look at the feed, for a lost event that no later delivery reveals
        as a gap. If deliveries applied anything since the last look, the next one would
        reveal a gap, so this look is skipped: a lost last event is found within two
        intervals, and a busy projection is not raced by its own catch-up."""
        return 0 if self.turn.take_activity() else self.catch_up()


def _run_after(tracked: int, events: dict[int, Event]) -> list[Event]:
    """The consecutive events from position ``tracked + 1`` on."""
    run: list[Event] = []
    while tracked + 1 + len(run) in events:
        run.append(events[tracked + 1 + len(run)])
    return run


class Backoff:
    """How deliveries and the feed check retry while the projection's database, or the
    feed, does not answer: each attempt first waits until that outage's next attempt is
    due (shared by the whole process, so ten deliveries retry together a few times per
    ``Outage.cap`` seconds, not in a hot loop; a delivery waits before it takes a worker,
    see ``services.notifications.service.ProjectedEventHandler``), and a failure is reported
    to its ``Outage`` (one log line per outage) before the caller lets the event be
    redelivered. Nothing is lost meanwhile: the broker keeps the events, and the tracking
    row (applied only with the rows it covers) and the feed catch-up apply each exactly
    once after."""

    # Any other failure (a bug, data this code cannot apply) is not an outage, but its
    # event comes back at once (requeue_on_error): retries of it back off too, doubling
    # from FAULT_BASE to FAULT_CAP seconds, so a poison event costs a traceback every few
    # seconds, not a hot loop.
    FAULT_BASE = 0.1
    FAULT_CAP = 5.0

    def __init__(self, database: Outage, feed: Outage, clock=time.monotonic):
        self.database = database
        self.feed = feed
        self.clock = clock
        self.faults = 0
        self._fault_retry_at = 0.0
        self._released = threading.Event()  # green under eventlet's monkey patching

    def outage_of(self, exc: BaseException) -> Outage | None:
        """Which outage ``exc`` reports: the projection's own database, the feed (its
        service unavailable, or that service's database), or neither (a real bug: raise)."""
        if isinstance(exc, DependencyUnavailable):  # from the feed RPC, DatabaseUnavailable included
            return self.feed
        if is_database_unavailable(exc):
            return self.database
        return None

    def due_in(self) -> float:
        """Seconds until the next attempt is due (0 when both answer, or once released)."""
        if self._released.is_set():
            return 0.0
        return max(self.database.due_in(), self.feed.due_in(), self._fault_retry_at - self.clock(), 0.0)

    def wait(self) -> None:
        delay = self.due_in()
        if delay > 0:
            self._released.wait(delay)

    def attempt(self, work: Callable, wait: bool = True):
        """``work()`` once the next attempt is due (``wait=False``: the caller waited);
        an outage's error is reported, marked (see ``kernel.db.Outage``) and raised."""
        if wait:
            self.wait()
        try:
            result = work()
        except Exception as exc:
            outage = self.outage_of(exc)
            if outage is None:
                self.faults += 1
                self._fault_retry_at = self.clock() + min(self.FAULT_BASE * 2 ** min(self.faults - 1, 30),
                                                          self.FAULT_CAP)
                raise
            if outage is self.feed or not getattr(exc, "outage_reported", False):
                outage.failed(exc)  # the engine reports its own errors (kernel.db.watch_outages)
            raise
        self.feed.succeeded()
        self.database.succeeded()
        self.faults, self._fault_retry_at = 0, 0.0
        return result

    def release(self) -> None:
        """The service is stopping: no more waiting (the outages, shared by the process,
        are left as they are)."""
        self._released.set()


# --- Replay ---------------------------------------------------------------------------
#
# A projection is rebuilt beside the live rows: folded in memory with the same ``apply``
# as live processing, written beside the live table, and swapped in by one transaction
# that holds the tracking row (so the live consumer pauses for the swap only), applies
# whatever the log gained meanwhile, and replaces the live rows.


def json_feed(read: Callable[[int, int], str]) -> Feed:
    """The feed of a replay, from ``read(after, limit)`` that answers with the batch as one
    JSON text (``events_after_json``): decoded in one C call, where nameko's decoder of a
    list of payloads calls a Python hook per dict.

    If ``read`` has ``call_async`` (a nameko proxy's method), a full batch also asks for the
    next two (where they start if the log has no hole), which the service makes while the
    replay folds; the call that asks for one takes its reply. With one call at a time the
    replay waited for the service's whole chain (database, service, broker) on every batch,
    and was as fast as that chain, not as its own fold."""
    ahead: dict = {}  # (after, limit) -> its reply, on its way
    ask = getattr(read, "call_async", None)

    def feed(after: int, limit: int) -> list[dict]:
        nonlocal ahead
        reply = ahead.pop((after, limit), None)
        payloads = json.loads(reply.result() if reply else read(after, limit))
        guesses = [(payloads[-1]["position"] + n * limit, limit) for n in (0, 1)] if ask and len(payloads) == limit else []
        # A guess nobody asked for is dropped, its reply unread.
        ahead = {guess: ahead.get(guess) or ask(*guess) for guess in guesses}
        return payloads
    return feed


def batches(feed: Feed, after: int = 0, size: int = FEED_BATCH) -> Iterator[list[dict]]:
    """The feed's payloads after ``after``, batch by batch until an empty one."""
    while batch := feed(after, size):
        yield batch
        after = batch[-1]["position"]


def replay(feed: Feed, apply: Callable, progress: Callable[[int], None] | None = None, after: int = 0,
           rows: dict | None = None) -> tuple[dict, int]:
    """Fold everything the feed has after ``after`` into ``rows``; returns (rows, position)."""
    rows = {} if rows is None else rows
    position = after
    with _without_cycle_collection():
        for payloads in batches(feed, after, REPLAY_BATCH):
            for payload in payloads:
                event = _replayed(payload)
                if event.position != position + 1:
                    raise Gap(position, event.position)
                rows.update(apply(rows, event))
                position = event.position
            if progress:
                progress(position)
    return rows, position


def _replayed(payload: dict) -> Event:
    """``Event.from_dict(payload)`` for a replay's fold, but ``event_id`` stays its text:
    the fold never reads it, and parsing it into a ``UUID`` was a sixth of the replaying
    process. A payload that is not plain (as ``append`` writes them) goes through
    ``from_dict``: its checks, its errors."""
    try:
        cls, data, key = EVENT_TYPES[payload["event_type"]], payload["data"], payload.get("idempotency_key")
        if (payload["version"] == cls.version and type(data) is dict and data.keys() == _plain_fields(cls)
                and type(payload["position"]) is int and (key is None or type(key) is str)):
            event = object.__new__(cls)
            event.__dict__.update(data, event_id=payload["event_id"], position=payload["position"],
                                  occurred_at=_parse_time(payload["occurred_at"]), idempotency_key=key)
            return event
    except (KeyError, TypeError, ValueError):
        pass
    return Event.from_dict(payload)


@contextlib.contextmanager
def _without_cycle_collection():
    """A replay makes millions of objects (payloads, events, rows) in batches that stay
    alive until folded, and none in a cycle: reference counting frees them. The cycle
    collector would only traverse them again and again (measured: a quarter of the
    replay's own time), so it is paused meanwhile (process-wide) and resumes after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rebuild(open_store: Callable, feed: Feed, apply: Callable, progress: Callable[[int], None] | None = None) -> int:
    """Replay the whole feed into a new projection and swap it in; returns its position."""
    rows, position = replay(feed, apply, progress)
    with _opened(open_store) as store:
        store.build_beside(rows)
        store.tracked(lock=True)  # the swap: the live consumer waits on the tracking row while we finish
        changed: dict = {}
        while events := [Event.from_dict(p) for p in feed(position, REPLAY_BATCH)]:
            position, change = fold(events, position, rows, apply)
            rows.update(change)
            changed.update(change)
        store.swap_in(changed, position)
        return position
