"""The gateway's hub: one per process, the map user -> open streams, fed by the broadcast.

The notifications service broadcasts ``NotificationChanged`` (user, name, value,
timestamp) after each commit; every gateway process hears it on an exclusive queue of its
own (``gateway.freshness.ChangeListener``). The hub hands each change to the open streams
of that user, and keeps the process's memory (``gateway.memory.Known``: profiles,
sessions, notification rows) current with it and with the users service's events.

Why nothing is missed:
* a stream registers here *before* it reads its user's rows, so a change committed during
  that read is already on its way to it; a row is written only if its timestamp is past
  the stream's last id (timestamps strictly increase per user), so the read and the
  broadcast may overlap without a row going out twice or an older value after a newer one;
* a change whose broadcast carries no value (an older publisher), and every change while
  the listener was disconnected, are caught by a re-read: when the listener (re)connects
  every open stream re-reads its user's rows after its last id; the consumer is bound
  before that, so a change committed after the re-read started is heard;
* the notifications service keeps a change it could not broadcast and publishes it again
  (``services.notifications.service``).

Coalescing: a stream keeps, per notification name, only the newest row it has not yet
written, so two quick changes may go out as one event carrying the latest value.

Nothing here blocks on a client: the listener only files rows and sets a stream's flag;
each stream's own greenlet (or thread) writes to its socket. A slow reader holds up only
itself.
"""
from __future__ import annotations

import logging
import math
import select
import threading

from gateway.freshness import ChangeListener
from gateway.memory import Known
from kernel.events import SessionEnded
from kernel.metrics import OPEN_STREAMS
from kernel.outage import OutageLog
from kernel.rpc_pool import ServiceUnavailable

logger = logging.getLogger(__name__)

REREAD_BATCH = 500  # users per notifications_since_many call
REREAD_RETRY = 2.0  # seconds before re-reading again when the service did not answer
STREAMS_PER_USER = 32  # open streams one user may hold in a process; past it the oldest ends
READ_WAIT = 30.0  # seconds a stream's first read waits for a shared call (the RPC has its own timeout)


class Stream:
    """One open stream: its user, the last timestamp written and the rows waiting; the
    session it was opened with (its token), and when that session expires."""

    __slots__ = ("user_id", "last", "pending", "closed", "wake", "fd", "token", "ends_at")

    def __init__(self, user_id: int, last: float, token: str | None = None, ends_at: float = math.inf):
        self.user_id = user_id
        self.last = last  # the id of the last event written (or the start point)
        self.pending: dict[str, dict] = {}  # name -> newest row not yet written
        self.closed = False  # the client went away, its session ended, or the process is stopping
        self.wake = threading.Event()
        self.fd: int | None = None
        self.token = token  # checked again when the user signs out anywhere (SessionEnded)
        self.ends_at = ends_at  # Unix time: the session's expiry, when the stream ends


class Hub:
    """One per gateway process (``app.extensions["hub"]``)."""

    def __init__(self, amqp_uri: str | None, read_many=None, known: Known | None = None):
        """``read_many(pairs)``: the notifications service's ``notifications_since_many``
        ([[user_id, since], ...] -> [[user_id, rows], ...]), for re-reads; ``known``: the
        process's memory, which the events keep current."""
        self.known = known or Known(rpc=None)
        self.listener = ChangeListener(amqp_uri, self) if amqp_uri else None
        self.read_many = read_many
        self._streams: dict[int, dict[Stream, None]] = {}  # user -> their streams, oldest first
        self._lock = threading.Lock()
        self.closing = False
        self._hangups: HangupWatch | None = None
        # Re-reads: every user's (after a reconnect) or some users' (a change announced
        # without its value). One thread does them for the whole process, in batches.
        self._reread_all = False
        self._reread_users: set[int] = set()
        self._recheck_users: set[int] = set()  # a sign-out was heard: their streams' sessions
        self._reread_wake = threading.Event()
        self._reread_thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._reread_outage = OutageLog(logger, "open streams: re-reading notifications")
        self._recheck_outage = OutageLog(logger, "open streams: checking sessions after a sign-out")
        self._reads = ReadBatcher(read_many)

    # -- what the listener calls ------------------------------------------------------
    def connection_up(self) -> None:
        self.known.connection_up()
        # Changes may have been missed while disconnected (or before the first connect):
        # every open stream re-reads its rows after its last id.
        with self._lock:
            self._reread_all = True
        self._reread_wake.set()

    def connection_down(self) -> None:
        self.known.connection_down()

    def users_event(self, event) -> None:
        if isinstance(event, SessionEnded):
            self.known.session_ended(event.user_id, event.position)
            # The event names no session: every stream of that user opened with one has
            # its session checked again (by the re-read thread), and ends if it is over.
            with self._lock:
                if any(stream.token is not None for stream in self._streams.get(event.user_id, ())):
                    self._recheck_users.add(event.user_id)
                    self._reread_wake.set()
        else:
            self.known.profile_changed(event.user_id, event.username, event.about_me, event.position)

    def changed(self, user_id: int, name: str, timestamp: float, value=None, has_value: bool = True) -> None:
        self.known.notification_changed(user_id, name, timestamp, value, has_value)
        with self._lock:
            streams = self._streams.get(user_id)
            if not streams:
                return
            if not has_value:
                self._reread_users.add(user_id)
                self._reread_wake.set()
                return
            row = {"name": name, "data": value, "timestamp": timestamp}
            for stream in streams:
                if _offer(stream, row):
                    stream.wake.set()

    # -- what a stream calls ----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.known.notifications.connected

    def start(self) -> None:
        """Started on first use, in the process that serves (after gunicorn's fork)."""
        if self.listener is not None:
            self.listener.ensure_started()
        if self._reread_thread is None and self.read_many is not None:
            with self._start_lock:
                if self._reread_thread is None:
                    self._reread_thread = threading.Thread(target=self._reread_loop, name="stream-rereads", daemon=True)
                    self._reread_thread.start()

    def open(self, user_id: int, since: float, sock=None, token: str | None = None,
             ends_at: float = math.inf) -> Stream:
        self.start()
        stream = Stream(user_id, since, token, ends_at)
        with self._lock:
            streams = self._streams.setdefault(user_id, {})
            streams[stream] = None
            OPEN_STREAMS.inc()
            # One account cannot hold a worker's connections: past the cap its oldest
            # stream ends (a browser shares one stream across its tabs; a dropped one
            # comes back with Last-Event-ID).
            for oldest in list(streams)[:max(0, len(streams) - STREAMS_PER_USER)]:
                oldest.closed = True
                oldest.wake.set()
            if self.closing:
                stream.closed = True
        if sock is not None:
            self._watch(stream, sock)
        return stream

    def read_since(self, user_id: int, since: float) -> list[dict]:
        """The poll's read for a stream that opens: the user's rows newer than ``since``.
        Reads that arrive together share one ``notifications_since_many`` call (a gateway
        restart brings every browser back at once: thousands of opens). Alone, a read is
        one call with no added wait. The service's errors are raised to each caller."""
        return self._reads.read(user_id, since)

    def add_rows(self, stream: Stream, rows: list[dict]) -> None:
        """Rows read from the service for ``stream`` (its first read, or a re-read)."""
        with self._lock:
            for row in rows:
                _offer(stream, row)

    def take(self, stream: Stream) -> list[dict]:
        """The rows to write now, oldest first; ``stream.last`` moves to the newest. The
        stream's ``wake`` is cleared: anything filed after this sets it again."""
        with self._lock:
            if not stream.closed:
                stream.wake.clear()
            rows = sorted((row for row in stream.pending.values() if row["timestamp"] > stream.last),
                          key=lambda row: row["timestamp"])
            stream.pending.clear()
            if rows:
                stream.last = rows[-1]["timestamp"]
            return rows

    def close(self, stream: Stream) -> None:
        with self._lock:
            streams = self._streams.get(stream.user_id)
            if streams is not None and stream in streams:
                del streams[stream]
                OPEN_STREAMS.dec()
                if not streams:
                    del self._streams[stream.user_id]
        if stream.fd is not None and self._hangups is not None:
            self._hangups.forget(stream)

    def count(self) -> int:
        with self._lock:
            return sum(len(streams) for streams in self._streams.values())

    def shutdown(self) -> None:
        """The process is stopping: every stream ends now (browsers reconnect elsewhere
        with ``Last-Event-ID``), and new ones end as soon as they start."""
        with self._lock:
            self.closing = True
            for streams in self._streams.values():
                for stream in streams:
                    stream.closed = True
                    stream.wake.set()

    def stop(self) -> None:
        self.shutdown()
        self._reread_wake.set()
        if self.listener is not None:
            self.listener.stop()

    # -- re-reads -------------------------------------------------------------------------
    def _reread_loop(self) -> None:
        while not self.closing:
            self._reread_wake.wait()
            self._reread_wake.clear()
            if self.closing:
                return
            with self._lock:
                users = list(self._streams) if self._reread_all else [u for u in self._reread_users if u in self._streams]
                self._reread_all = False
                self._reread_users.clear()
                pairs = [[user_id, min(stream.last for stream in self._streams[user_id])] for user_id in users]
                sessions = {(user_id, stream.token) for user_id in self._recheck_users
                            for stream in self._streams.get(user_id, ()) if stream.token is not None}
                self._recheck_users.clear()
            checked = self._recheck(sessions)  # both, whatever the other's outcome: each
            reread = self._reread(pairs)  # keeps only its own failures for the next round
            if not (checked and reread):
                threading.Event().wait(REREAD_RETRY)
                self._reread_wake.set()

    def _recheck(self, sessions: set[tuple[int, str]]) -> bool:
        """Check ``sessions`` (user, token) with the users service (a sign-out of that
        user was heard); streams whose session is over end. False if the service did not
        answer (those not checked are kept for the next round)."""
        for user_id, token in sessions:
            try:
                live = self.known.session_ends_at(user_id, token) is not None
            except Exception as exc:  # the service (or broker) is away: check these again
                self._recheck_outage.failed(exc, f"checking them again in {REREAD_RETRY} s")
                with self._lock:
                    self._recheck_users.update(user for user, _ in sessions)
                return False
            self._recheck_outage.succeeded()
            if not live:
                with self._lock:
                    for stream in self._streams.get(user_id, ()):
                        if stream.token == token:
                            stream.closed = True
                            stream.wake.set()
        return True

    def _reread(self, pairs: list[list]) -> bool:
        """Read the rows of ``pairs`` ([user, since]) and offer them to those users'
        streams. False if the service did not answer (the rest are kept for next round)."""
        for start in range(0, len(pairs), REREAD_BATCH):
            batch = pairs[start:start + REREAD_BATCH]
            try:
                answer = self.read_many(batch)
            except Exception as exc:  # the service (or broker) is away: try these again
                self._reread_outage.failed(exc, f"retrying in {REREAD_RETRY} s")
                with self._lock:
                    self._reread_users.update(user_id for user_id, _ in pairs[start:])
                return False
            self._reread_outage.succeeded()
            with self._lock:
                for user_id, rows in answer:
                    for stream in self._streams.get(user_id, ()):
                        if any([_offer(stream, row) for row in rows]):
                            stream.wake.set()
        return True

    def _hung_up(self, stream: Stream) -> None:
        with self._lock:  # as ``take`` clears ``wake`` under it: the wake-up is not lost
            stream.closed = True
            stream.wake.set()

    def _watch(self, stream: Stream, sock) -> None:
        with self._lock:
            if self._hangups is None:
                self._hangups = HangupWatch(self._hung_up) if HangupWatch.supported() else False
        if self._hangups:
            self._hangups.watch(stream, sock)


class _Batch:
    __slots__ = ("pairs", "answer", "error", "done")

    def __init__(self):
        self.pairs: list[list] = []
        self.answer: dict[int, list[dict]] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()


class ReadBatcher:
    """Group commit for reads: at most ``IN_FLIGHT`` calls at a time; reads that arrive
    while they are busy wait together for the next one, which carries them all (up to
    ``REREAD_BATCH`` users)."""

    IN_FLIGHT = 2

    def __init__(self, read_many):
        self.read_many = read_many
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self._slots = threading.Semaphore(self.IN_FLIGHT)

    def read(self, user_id: int, since: float) -> list[dict]:
        with self._lock:
            batch = self._open
            if batch is None or len(batch.pairs) >= REREAD_BATCH:
                batch = self._open = _Batch()
            leader = not batch.pairs
            batch.pairs.append([user_id, since])
        if leader:
            try:
                with self._slots:  # while every slot is busy, followers join this batch
                    with self._lock:
                        if self._open is batch:
                            self._open = None  # closed: later reads start the next batch
                    try:
                        batch.answer = {user: rows for user, rows in self.read_many(batch.pairs)}
                    except Exception as exc:
                        batch.error = exc
            finally:
                # Even if the leader is killed while waiting (a stopping server), its
                # followers are answered and no later read joins this batch.
                with self._lock:
                    if self._open is batch:
                        self._open = None
                if not batch.done.is_set() and batch.error is None and not batch.answer:
                    batch.error = ServiceUnavailable("the read was abandoned")
                batch.done.set()
        elif not batch.done.wait(READ_WAIT):
            raise ServiceUnavailable(f"no answer from notifications within {READ_WAIT} s")
        if batch.error is not None:
            raise batch.error
        return [row for row in batch.answer.get(user_id, ()) if row["timestamp"] > since]


def _offer(stream: Stream, row: dict) -> bool:
    """File ``row`` for ``stream`` if it is news to it; True if it was."""
    if row["timestamp"] <= stream.last:
        return False
    current = stream.pending.get(row["name"])
    if current is not None and current["timestamp"] >= row["timestamp"]:
        return False
    stream.pending[row["name"]] = row
    return True


def _epoll_class():
    """``select.epoll`` (Linux). gevent's and eventlet's patching hide it from ``select``
    (they cannot make its ``poll`` cooperative); the original still works, and this module
    only ever calls ``poll(0)`` after the patched ``select`` said its descriptor is ready."""
    epoll = getattr(select, "epoll", None)
    if epoll is None:
        try:
            from gevent import monkey

            epoll = monkey.get_original("select", "epoll") if monkey.is_module_patched("select") else None
        except ImportError:
            pass
    if epoll is None:
        try:
            from eventlet import patcher

            epoll = getattr(patcher.original("select"), "epoll", None) if patcher.is_monkey_patched("select") else None
        except ImportError:
            pass
    return epoll


class HangupWatch:
    """Notices at once that a stream's client went away (a closed tab), so its stream is
    freed then and not at its next keepalive.

    An SSE client never sends anything after its request, so its socket turns readable
    only when it closes (EOF or reset). One epoll set holds every open stream's socket; one
    thread waits on it through ``select`` (cooperative under gevent and eventlet, whose
    ``select`` is patched) and wakes the stream whose socket turned readable. One thread
    for every stream, instead of a second waiter per stream.
    """

    def __init__(self, on_hangup):
        self.on_hangup = on_hangup
        self._epoll = _epoll_class()()
        self._by_fd: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stream-hangups", daemon=True)
        self._thread.start()

    @staticmethod
    def supported() -> bool:
        return _epoll_class() is not None

    def watch(self, stream: Stream, sock) -> None:
        try:
            fd = sock.fileno()
            with self._lock:
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
                self._by_fd[fd] = stream
                stream.fd = fd
        except (OSError, ValueError) as exc:  # already closed: the first write will tell
            logger.debug("stream socket not watched: %s", exc)

    def forget(self, stream: Stream) -> None:
        # Before the server closes the socket (the stream's generator ends first), so the
        # descriptor cannot be reused by another connection while still registered here.
        with self._lock:
            if self._by_fd.get(stream.fd) is stream:
                del self._by_fd[stream.fd]
                try:
                    self._epoll.unregister(stream.fd)
                except (OSError, ValueError):
                    pass
            stream.fd = None

    def _run(self) -> None:
        while True:
            try:
                select.select([self._epoll.fileno()], [], [], 5)
                with self._lock:
                    ready = self._epoll.poll(0)
                    for fd, _ in ready:
                        stream = self._by_fd.pop(fd, None)
                        try:
                            self._epoll.unregister(fd)
                        except (OSError, ValueError):
                            pass
                        if stream is not None:
                            stream.fd = None
                            self.on_hangup(stream)
            except Exception:  # never let the watch die: streams then end at their keepalive
                logger.exception("stream hang-up watch failed; retrying")
                threading.Event().wait(1)
