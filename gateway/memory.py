"""What a gateway process knows without asking: profiles, live sessions and each user's
notification rows, filled on first use and kept current by the events the hub hears.

A page then makes at most one RPC, for its own data; the signed-in user, their badge and
other users' names come from here. One class, ``Memory``, does it for all three, with
these rules, so that what it answers is never older than what a fresh read would give:

* **Only while connected.** An entry is used only if it was kept while the hub's listener
  was connected, in the same connection (``epoch``); a disconnect empties everything,
  because events may be missed while it lasts. An empty memory is correct, only slower.
* **No stale fill.** A fill is a service's answer to a read that started earlier. Events
  heard about that key after the read started may be newer than the answer, so the
  answer is then used for that request but not kept (``reading`` gives the token that
  ``keep`` checks).
* **Events change entries in place** (``heard``), and remember, per key, the newest mark
  heard (a log position, a timestamp), so that a request can wait for the event of its own
  write (``wait_for``) instead of polling a service.
* **Bounded.** At most ``size`` entries, least recently used first out; each is trusted
  for ``ttl`` seconds at most (a bound on what no event announces, such as last_seen).
"""
from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from collections import OrderedDict
from typing import Any, Callable, Hashable

MISSING = object()


class Memory:
    def __init__(self, size: int = 10_000, ttl: float = 60.0):
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()  # key -> (value, kept at)
        # key -> (sequence number, newest mark) of the last event heard about it, bounded
        # like the entries; a read that started before ``_forgotten`` cannot be kept.
        self._heard: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self._forgotten = 0
        self._sequence = 0
        self.epoch = 0
        self.connected = False
        self._changed = threading.Condition(threading.Lock())

    # -- the listener's side ----------------------------------------------------------
    def connection_up(self) -> None:
        with self._changed:
            self.epoch += 1
            self.connected = True
            self._clear()

    def connection_down(self) -> None:
        with self._changed:
            self.connected = False
            self._clear()
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget everything (the services' data was replaced under this process: tests)."""
        with self._changed:
            self._clear()

    def _clear(self) -> None:
        self._entries.clear()
        self._heard.clear()
        self._forgotten = self._sequence

    def heard(self, key: Hashable, change: Callable[[Any], Any] | None = None, mark=None) -> None:
        """An event about ``key``: its entry becomes ``change(value)`` (dropped if
        ``change`` is None or returns MISSING); ``mark``, if newer, is remembered."""
        with self._changed:
            self._sequence += 1
            previous = self._heard.pop(key, (0, None))[1]
            if previous is not None and (mark is None or previous > mark):
                mark = previous
            self._heard[key] = (self._sequence, mark)
            if len(self._heard) > self.size:
                self._forgotten = self._heard.popitem(last=False)[1][0]
            entry = self._entries.get(key)
            if entry is not None:
                value = change(entry[0]) if change is not None else MISSING
                if value is MISSING:
                    del self._entries[key]
                else:
                    self._entries[key] = (value, entry[1])
            self._changed.notify_all()

    # -- the requests' side -----------------------------------------------------------
    def get(self, key: Hashable, default=None):
        """The kept value, if it can be trusted now; else ``default``."""
        with self._changed:
            entry = self._entries.get(key)
            if entry is None or not self.connected:
                return default
            if time.monotonic() - entry[1] > self.ttl:
                del self._entries[key]
                return default
            self._entries.move_to_end(key)
            return entry[0]

    def reading(self) -> tuple[int, int] | None:
        """Take before reading from a service; hand to ``keep`` with the answer."""
        with self._changed:
            return (self.epoch, self._sequence) if self.connected else None

    def keep(self, key: Hashable, value, token: tuple[int, int] | None) -> bool:
        """Keep a service's answer, unless something about ``key`` was heard since
        ``token`` was taken (the answer may then be older than the memory's news), or the
        connection it was taken in is gone. True if kept."""
        if token is None or self.size <= 0:
            return False
        epoch, sequence = token
        with self._changed:
            if not self.connected or epoch != self.epoch or sequence < self._forgotten:
                return False
            heard = self._heard.get(key)
            if heard is not None and heard[0] > sequence:
                return False
            self._entries[key] = (value, time.monotonic())
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return True

    def forget(self, key: Hashable) -> None:
        """This process changed ``key`` itself (a sign-out): drop it, and any read in flight."""
        self.heard(key)

    def mark(self, key: Hashable):
        """The newest mark heard about ``key`` in this connection, or None."""
        with self._changed:
            heard = self._heard.get(key)
            return heard[1] if heard is not None and self.connected else None

    def wait_for(self, key: Hashable, mark, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until an event about ``key`` with a mark at
        or past ``mark`` is heard. True if it was."""
        def reached():
            heard = self._heard.get(key)
            return self.connected and heard is not None and heard[1] is not None and heard[1] >= mark

        with self._changed:
            return self._changed.wait_for(reached, timeout)

    def __len__(self) -> int:
        return len(self._entries)


class Known:
    """The three memories of a gateway process and how a request reads through them.

    ``rpc`` is the process's RPC pool. Each method answers from memory when it can and
    asks the service (keeping the answer) when it cannot; what it returns is never older
    than the service's answer would be at that moment, by the rules above.
    """

    def __init__(self, rpc, size: int = 10_000, profile_ttl: float = 60.0, session_ttl: float = 30.0,
                 notifications_ttl: float = 60.0):
        self.rpc = rpc
        self.profiles = Memory(size, profile_ttl)  # user id -> public profile; event marks: users log positions
        self.sessions = Memory(size, session_ttl)  # user id -> {token: (trusted until (monotonic), ends at (Unix time))}
        self.notifications = Memory(size, notifications_ttl)  # user id -> {name: row}; marks: row timestamps
        # user id -> the first page of their inbox (``open_inbox``'s answer when nothing was
        # unread): dropped on any change of their unread count, which every MessageSent to
        # them makes. A tenth as many as the others: a page is up to 25 messages.
        self.inboxes = Memory(size // 10 if size >= 10 else size, notifications_ttl)
        self._names: dict[str, int] = {}  # lower-cased username -> user id (checked against the profile)
        self.session_ttl = session_ttl

    @property
    def memories(self) -> tuple[Memory, ...]:
        return self.profiles, self.sessions, self.notifications, self.inboxes

    # -- events (the hub's listener) --------------------------------------------------
    def connection_up(self) -> None:
        for memory in self.memories:
            memory.connection_up()
        self._names.clear()

    def connection_down(self) -> None:
        for memory in self.memories:
            memory.connection_down()
        self._names.clear()

    def clear(self) -> None:
        for memory in self.memories:
            memory.clear()
        self._names.clear()

    def profile_changed(self, user_id: int, username: str, about_me: str, position: int) -> None:
        """``UserRegistered`` / ``ProfileChanged``: the whole public profile after it."""
        def change(profile):
            return {**profile, "username": username, "about_me": about_me}

        self.profiles.heard(user_id, change, mark=position)
        self._name(username, user_id)

    def session_ended(self, user_id: int, position: int) -> None:
        """``SessionEnded``: the user signed out somewhere; their sessions are checked again."""
        self.sessions.heard(user_id, mark=position)

    def notification_changed(self, user_id: int, name: str, timestamp: float, value, has_value: bool) -> None:
        def change(rows):
            if not has_value:
                return MISSING  # read again
            row = rows.get(name)
            if row is not None and row["timestamp"] >= timestamp:
                return rows
            return {**rows, name: {"name": name, "data": value, "timestamp": timestamp}}

        self.notifications.heard(user_id, change, mark=timestamp)
        if name == "unread_message_count" or not has_value:
            self.inboxes.heard(user_id)  # a message came (or the inbox was read): ask again

    # -- profiles ---------------------------------------------------------------------
    def _keep_profile(self, profile: dict, token) -> None:
        if self.profiles.keep(profile["id"], profile, token):
            self._name(profile["username"], profile["id"])

    def _name(self, username: str, user_id: int) -> None:
        if len(self._names) > 2 * self.profiles.size:  # bounded too: start again, it is only an index
            self._names.clear()
        self._names[username.lower()] = user_id

    def profile(self, user_id: int) -> dict:
        """The user's public profile (``UserNotFound`` from the service if there is none)."""
        profile = self.profiles.get(user_id)
        if profile is None:
            token = self.profiles.reading()
            profile = self.rpc().users.get_user(user_id)
            self._keep_profile(profile, token)
        return profile

    def profile_by_name(self, username: str) -> dict:
        user_id = self._names.get(username.lower()) if isinstance(username, str) else None
        profile = self.profiles.get(user_id) if user_id is not None else None
        if profile is None or profile["username"].lower() != username.lower():
            token = self.profiles.reading()
            profile = self.rpc().users.get_user_by_username(username)
            self._keep_profile(profile, token)
        return profile

    def profiles_of(self, user_ids) -> dict[int, dict]:
        """Profiles of many users (unknown ids left out), one RPC for all that are missing."""
        found = {user_id: self.profiles.get(user_id) for user_id in set(user_ids)}
        missing = sorted(user_id for user_id, profile in found.items() if profile is None)
        if missing:
            token = self.profiles.reading()
            for profile in self.rpc().users.get_users(missing).values():
                self._keep_profile(profile, token)
                found[profile["id"]] = profile
        return {user_id: profile for user_id, profile in found.items() if profile is not None}

    def seen(self, profile: dict, token) -> None:
        """A profile the users service just returned (sign-in, last_seen recorded)."""
        self._keep_profile(profile, token)

    # -- sessions ---------------------------------------------------------------------
    def live_session(self, user_id: int, token: str, profile_too: bool = True) -> dict | None:
        """The profile of the user if ``token`` is their live session, else None; from
        memory when this process checked that session within ``session_ttl`` seconds, it
        has not expired since, and no sign-out of that user was heard since. With ``profile_too`` False (the poll) a
        live session answers ``{"id": user_id}`` when the profile is not in memory."""
        if self._trusted_session(user_id, token) is not None:
            profile = self.profiles.get(user_id)
            if profile is not None:
                return profile
            if not profile_too:
                return {"id": user_id}
        return self._check_session(user_id, token)[0]

    def session_ends_at(self, user_id: int, token: str) -> float | None:
        """When the live session ``token`` of the user expires (Unix time; ``math.inf`` if
        the service did not say), from memory when this process checked it lately, else from
        the service; None if it is not live. An open stream ends then (``gateway.hub``)."""
        entry = self._trusted_session(user_id, token)
        if entry is not None:
            return entry[1]
        return self._check_session(user_id, token)[1]

    def _trusted_session(self, user_id: int, token: str) -> tuple[float, float] | None:
        """The memory's (trusted until, ends at) of that session, while it is trusted."""
        tokens = self.sessions.get(user_id)
        entry = tokens.get(token) if tokens else None
        return entry if entry is not None and time.monotonic() < entry[0] else None

    def _check_session(self, user_id: int, token: str) -> tuple[dict | None, float | None]:
        """The users service's ``check_session``, kept: (the profile, the session's end)."""
        # Each memory's own reading: their event sequences are separate counters, so a
        # sessions token says nothing about the profile events heard since (with it, a
        # profile heard of once was never kept, and every request asked check_session).
        reading, profile_reading = self.sessions.reading(), self.profiles.reading()
        profile = self.rpc().users.check_session(user_id, token)
        if profile is None:
            self.sessions.forget(user_id)
            return None, None
        profile = dict(profile)
        expires_at = profile.pop("session_expires_at", None)
        ends_at = datetime.fromisoformat(expires_at).timestamp() if expires_at is not None else math.inf
        # Trusted for session_ttl at most, and never past the session's own end.
        trust = min(self.session_ttl, ends_at - time.time())
        tokens = dict(self.sessions.get(user_id) or {})
        if len(tokens) >= 32:  # one user's browsers and API tokens: keep the memory of them small
            tokens.clear()
        tokens[token] = (time.monotonic() + trust, ends_at)
        self.sessions.keep(user_id, tokens, reading)
        self._keep_profile(profile, profile_reading)
        return profile, ends_at

    def end_session(self, user_id: int, position: int = 0, wait: float = 0.0) -> None:
        """This process signed the user out: forget their sessions at once, then wait (at
        most ``wait`` seconds) to hear the sign-out's own ``SessionEnded`` (at ``position``),
        which every gateway process is sent at the same moment: when the sign-out answers,
        the others have dropped the session too, not some milliseconds later."""
        self.sessions.forget(user_id)
        if position:
            self.await_event(self.sessions, user_id, position, wait)

    # -- notifications ----------------------------------------------------------------
    def notification_rows(self, user_id: int) -> dict[str, dict]:
        """All the user's notification rows, by name (the poll and the badge read these)."""
        rows = self.notifications.get(user_id)
        if rows is None:
            token = self.notifications.reading()
            rows = {row["name"]: row for row in self.rpc().notifications.notifications_since(user_id, 0)}
            self.notifications.keep(user_id, rows, token)
        return rows

    def rows_since(self, user_id: int, since: float) -> list[dict]:
        """The poll's answer: the user's rows newer than ``since``, oldest first."""
        rows = [row for row in self.notification_rows(user_id).values() if row["timestamp"] > since]
        return sorted(rows, key=lambda row: row["timestamp"])

    def unread_message_count(self, user_id: int) -> int:
        row = self.notification_rows(user_id).get("unread_message_count")
        return row["data"] if row is not None else 0

    # -- the inbox ------------------------------------------------------------------------
    def open_inbox(self, user_id: int, page: int) -> dict:
        """``messages.open_inbox``'s answer (mark read if anything is unread, and the page).
        The first page comes from memory when this process's rows say nothing is unread and
        it kept that page since the last change of the unread count: opening it then writes
        nothing and reads nothing the memory does not have. Anything else asks the service
        (one RPC), and an answer that marked nothing read is kept."""
        rows = self.notifications.get(user_id) if page == 1 else None
        unread = rows.get("unread_message_count") if rows is not None else None
        nothing_unread = rows is not None and (unread is None or unread["data"] == 0)
        if nothing_unread:
            kept = self.inboxes.get(user_id)
            if kept is not None:
                return kept
        token = self.inboxes.reading()
        inbox = self.rpc().messages.open_inbox(user_id, page)
        if page == 1 and inbox["read"] is None:
            self.inboxes.keep(user_id, inbox, token)
        return inbox

    # -- your own writes --------------------------------------------------------------
    def await_event(self, memory: Memory, user_id: int, mark, timeout: float) -> bool:
        """Wait for the event of a write at ``mark`` (a position, a timestamp) about the
        user; if it is not heard in time, forget what is kept of them, so the next read
        asks the service (which has the write: it answered it). Either way the mark counts
        as heard from then on, so later requests do not wait for it again. Disconnected,
        nothing is answered from memory: no wait."""
        if not memory.connected:
            return False
        if memory.wait_for(user_id, mark, timeout):
            return True
        memory.heard(user_id, mark=mark)  # drops the entry: the next read asks the service
        return False
