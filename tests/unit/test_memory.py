"""The gateway's memory (gateway/memory.py): what it answers is never older than what the
service would answer, it stays bounded, and a request can wait for its own write's event."""
import threading
import time

import pytest

from gateway import memory as memory_module
from gateway.memory import MISSING, Known, Memory


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    return now


def connected(size=10, ttl=60.0) -> Memory:
    memory = Memory(size, ttl)
    memory.connection_up()
    return memory


def test_nothing_is_trusted_unless_kept_while_connected():
    memory = Memory()
    assert memory.reading() is None and not memory.keep(1, "a", memory.reading())
    memory.connection_up()
    token = memory.reading()
    memory.connection_down()
    memory.connection_up()
    assert not memory.keep(1, "a", token)  # read in an earlier connection: events may be missed
    assert memory.keep(1, "a", memory.reading()) and memory.get(1) == "a"
    memory.connection_down()
    assert memory.get(1) is None  # a disconnect empties it
    memory.connection_up()
    assert memory.get(1) is None


def test_a_fill_that_raced_an_event_is_not_kept():
    memory = connected()
    token = memory.reading()  # a read starts ...
    memory.heard(1, lambda value: value + "!")  # ... an event about key 1 arrives meanwhile ...
    assert not memory.keep(1, "old", token)  # ... so its answer may be older: not kept
    assert memory.get(1) is None
    assert memory.keep(2, "b", token)  # another key was not touched: kept


def test_events_change_entries_in_place_or_drop_them():
    memory = connected()
    memory.keep(1, "a", memory.reading())
    memory.heard(1, lambda value: value + "b")
    assert memory.get(1) == "ab"
    memory.heard(1, lambda value: MISSING)
    assert memory.get(1) is None
    memory.keep(1, "a", memory.reading())
    memory.forget(1)
    assert memory.get(1) is None


def test_bounded_least_recently_used_first_and_by_age(clock):
    memory = connected(size=3, ttl=60)
    for key in range(3):
        memory.keep(key, key, memory.reading())
    memory.get(0)  # used: 1 is now the least recently used
    memory.keep(3, 3, memory.reading())
    assert memory.get(1) is None and [memory.get(k) for k in (0, 2, 3)] == [0, 2, 3]
    clock[0] += 60.1
    assert memory.get(0) is None  # past its ttl: asked again
    for key in range(100):
        memory.heard(key, mark=key)
    assert len(memory._heard) <= 3 and len(memory) <= 3
    # a read older than the oldest forgotten event cannot be kept: it may have missed one
    token = (memory.epoch, 0)
    assert not memory.keep(50, "x", token)


def test_wait_for_an_event_at_or_past_a_mark():
    memory = connected()
    assert not memory.wait_for(7, 5, timeout=0.01)
    memory.heard(7, mark=3)
    assert memory.mark(7) == 3 and not memory.wait_for(7, 5, timeout=0.01)
    threading.Timer(0.05, lambda: memory.heard(7, mark=6)).start()
    assert memory.wait_for(7, 5, timeout=5)
    memory.heard(7, mark=4)  # an older event heard late does not move the mark back
    assert memory.mark(7) == 6


class FakeUsers:
    def __init__(self):
        self.calls = []
        self.profiles = {1: {"id": 1, "username": "susan", "about_me": ""},
                         2: {"id": 2, "username": "john", "about_me": ""}}
        self.live = {(1, "t1")}

    def get_user(self, user_id):
        self.calls.append(("get_user", user_id))
        return dict(self.profiles[user_id])

    def get_user_by_username(self, name):
        self.calls.append(("get_user_by_username", name))
        return dict(next(p for p in self.profiles.values() if p["username"].lower() == name.lower()))

    def get_users(self, ids):
        self.calls.append(("get_users", ids))
        return {str(i): dict(self.profiles[i]) for i in ids if i in self.profiles}

    def check_session(self, user_id, token):
        self.calls.append(("check_session", user_id))
        return dict(self.profiles[user_id]) if (user_id, token) in self.live else None


class FakeNotifications:
    def __init__(self):
        self.calls = 0
        self.rows = {1: [{"name": "unread_message_count", "data": 2, "timestamp": 10.0}]}

    def notifications_since(self, user_id, since):
        self.calls += 1
        return [row for row in self.rows.get(user_id, []) if row["timestamp"] > since]


class FakeMessages:
    """An inbox of ``messages`` for user 1, ``unread`` of them unread."""

    def __init__(self):
        self.calls = []
        self.messages, self.unread = [3, 2, 1], 0
        self.during_call = None  # what else happens while a call is on its way

    def open_inbox(self, user_id, page):
        self.calls.append(("open_inbox", user_id, page))
        read = {"position": 9} if self.unread else None
        read_after = max(self.messages) - self.unread
        self.unread = 0
        answer = {"messages": [{"id": i} for i in self.messages], "page": page, "read": read, "read_after": read_after}
        if self.during_call:
            self.during_call()
        return answer


@pytest.fixture
def known():
    class Pool:
        users = FakeUsers()
        notifications = FakeNotifications()
        messages = FakeMessages()

    known = Known(lambda: Pool, size=100)
    known.connection_up()
    known.pool = Pool
    return known


def test_profiles_come_from_memory_and_follow_renames(known):
    users = known.pool.users
    assert known.profile_by_name("SUSAN")["id"] == 1 and known.profile(1)["username"] == "susan"
    assert known.profiles_of({1, 2, 3}) == {1: users.profiles[1], 2: users.profiles[2]}  # 3 is nobody
    calls = len(users.calls)
    for _ in range(3):
        known.profile(1), known.profile_by_name("susan"), known.profiles_of({1, 2})
    assert len(users.calls) == calls  # all from memory
    users.profiles[1]["username"] = "sue"
    known.profile_changed(1, "sue", "hi", position=9)
    assert known.profile(1)["username"] == "sue" and known.profile(1)["about_me"] == "hi"
    assert known.profile_by_name("sue")["id"] == 1
    users.profiles[2]["username"] = "susan"  # another user takes the old name
    assert known.profile_by_name("susan")["id"] == 2  # asked: the memory's "susan" is "sue" now


def test_sessions_are_trusted_until_a_sign_out_is_heard(known, clock):
    users = known.pool.users
    assert known.live_session(1, "t1")["username"] == "susan"
    checks = users.calls.count(("check_session", 1))
    assert known.live_session(1, "t1") is not None and users.calls.count(("check_session", 1)) == checks
    assert known.live_session(1, "other") is None  # a token never checked is asked about
    users.live.clear()  # signed out in another process ...
    known.session_ended(1, position=5)  # ... and this process hears it
    assert known.live_session(1, "t1") is None
    users.live.add((1, "t1"))
    assert known.live_session(1, "t1") is not None
    clock[0] += 30.1  # a session is checked again after session_ttl, whatever was heard
    users.live.clear()
    assert known.live_session(1, "t1") is None


def test_a_session_is_never_trusted_past_its_end(known, clock):
    """check_session says when the session ends (an API token lives an hour): the memory
    trusts it until then at most, not for the whole session_ttl."""
    import time
    from datetime import datetime, timezone

    users = known.pool.users
    real = users.check_session
    ends = datetime.fromtimestamp(time.time() + 5, timezone.utc).isoformat()
    users.check_session = lambda uid, token: {**real(uid, token), "session_expires_at": ends} if real(uid, token) else None
    profile = known.live_session(1, "t1")
    assert profile["username"] == "susan" and "session_expires_at" not in profile  # not part of the profile
    assert "session_expires_at" not in known.profiles.get(1)
    checks = users.calls.count(("check_session", 1))
    clock[0] += 4.5
    assert known.live_session(1, "t1") is not None and users.calls.count(("check_session", 1)) == checks
    clock[0] += 1  # past its end, well within session_ttl: asked again
    users.live.clear()  # (the service, past the end, says it is not live)
    assert known.live_session(1, "t1") is None and users.calls.count(("check_session", 1)) > checks


def test_a_checked_session_keeps_the_profile_after_profile_events_were_heard(known):
    """check_session's profile is kept by the profiles memory's own rules: heard events
    about the user before the check do not stop it being kept; one during the check does."""
    users = known.pool.users
    known.profile_changed(1, "susan", "", position=3)  # her registration, heard earlier
    known.profile_changed(2, "john", "", position=4)
    assert known.live_session(1, "t1")["username"] == "susan"
    checks = users.calls.count(("check_session", 1))
    for _ in range(3):  # the next requests: from memory, no RPC
        assert known.live_session(1, "t1")["username"] == "susan"
    assert users.calls.count(("check_session", 1)) == checks
    known.profile_changed(1, "sue", "", position=9)
    assert known.live_session(1, "t1")["username"] == "sue"  # the event changed the kept profile

    # A profile change heard while check_session is on its way: its (older) answer is not kept.
    known.sessions.forget(1)
    real = users.check_session

    def racing(user_id, token):
        answer = real(user_id, token)
        known.profile_changed(1, "newer", "", position=10)
        return answer

    users.check_session = racing
    known.live_session(1, "t1")
    users.check_session = real
    assert known.profiles.get(1) is None or known.profiles.get(1)["username"] == "newer"


def test_the_badge_and_the_poll_come_from_the_rows_kept_current_by_changes(known):
    notifications = known.pool.notifications
    assert known.unread_message_count(1) == 2 and known.unread_message_count(2) == 0
    assert known.rows_since(1, 10.0) == [] and known.rows_since(1, 9.0)[0]["data"] == 2
    assert notifications.calls == 2
    known.notification_changed(1, "unread_message_count", 11.0, 0, True)
    known.notification_changed(1, "unread_message_count", 10.5, 1, True)  # older, heard late: ignored
    assert known.unread_message_count(1) == 0 and known.rows_since(1, 10.0)[0]["timestamp"] == 11.0
    assert notifications.calls == 2
    known.notification_changed(1, "unread_message_count", 12.0, None, False)  # no value: read again
    known.unread_message_count(1)
    assert notifications.calls == 3


def test_the_name_index_stays_bounded_however_many_renames_are_heard(known):
    for user_id in range(1000):
        known.profile_changed(user_id, f"user{user_id}", "", position=user_id)
    assert len(known._names) <= 2 * known.profiles.size + 1


def test_a_disabled_memory_always_asks(known):
    off = Known(lambda: known.pool, size=0)
    off.connection_up()
    off.profile(1), off.profile(1)
    assert known.pool.users.calls.count(("get_user", 1)) == 2


def test_the_inbox_comes_from_memory_while_nothing_is_unread_and_no_message_came(known):
    """Messages with nothing unread: the first page from memory (no RPC, nothing written);
    a change of the unread count (a message came) drops it; a page that marked something
    read, later pages and a fill that raced a change are never kept."""
    messages, notifications = known.pool.messages, known.pool.notifications
    notifications.rows[1] = [{"name": "unread_message_count", "data": 0, "timestamp": 10.0}]
    first = known.open_inbox(1, 1)  # the rows are not in memory: asks (and keeps the answer)
    assert [m["id"] for m in first["messages"]] == [3, 2, 1] and len(messages.calls) == 1
    known.unread_message_count(1)  # the badge of that page reads the rows into memory
    for _ in range(3):
        assert known.open_inbox(1, 1) is first  # from memory
    assert len(messages.calls) == 1
    assert known.open_inbox(1, 2)["page"] == 2 and len(messages.calls) == 2  # only the first page is kept

    messages.messages, messages.unread = [4, 3, 2, 1], 1  # a message comes ...
    known.notification_changed(1, "unread_message_count", 11.0, 1, True)  # ... and its change is heard
    opened = known.open_inbox(1, 1)
    assert [m["id"] for m in opened["messages"]] == [4, 3, 2, 1] and opened["read"] is not None
    assert opened["read_after"] == 3  # message 4 is new on this page
    known.notification_changed(1, "unread_message_count", 12.0, 0, True)  # the InboxRead's change
    calls = len(messages.calls)
    again = known.open_inbox(1, 1)
    assert again["read"] is None and len(messages.calls) == calls + 1  # a page that read is not kept
    assert known.open_inbox(1, 1) is again and len(messages.calls) == calls + 1

    known.notification_changed(1, "unread_message_count", 13.0, 0, False)  # a change without its value
    messages.during_call = lambda: known.notification_changed(1, "unread_message_count", 14.0, 0, True)
    known.unread_message_count(1)
    known.open_inbox(1, 1)  # a change heard while the call was on its way: its answer is not kept
    messages.during_call = None
    calls = len(messages.calls)
    known.open_inbox(1, 1)
    assert len(messages.calls) == calls + 1

    known.notification_changed(1, "unread_message_count", 15.0, 2, True)  # unread: always asks
    messages.unread = 2
    calls = len(messages.calls)
    assert known.open_inbox(1, 1)["read"] is not None and len(messages.calls) == calls + 1
    known.connection_down()
    known.connection_up()
    calls = len(messages.calls)
    known.open_inbox(1, 1)
    assert len(messages.calls) == calls + 1  # a reconnect emptied it


def test_a_sign_out_here_waits_for_its_own_session_ended(known):
    """The process that signs a user out forgets their sessions at once, then waits for the
    sign-out's ``SessionEnded`` (sent to every process at the same moment), at most ``wait``."""
    assert known.live_session(1, "t1") is not None
    threading.Timer(0.1, lambda: known.session_ended(1, position=7)).start()
    began = time.monotonic()
    known.end_session(1, position=7, wait=5)
    assert 0.05 < time.monotonic() - began < 2  # returned when the event came, not after the wait
    assert known.sessions.mark(1) == 7
    began = time.monotonic()
    known.end_session(1, position=8, wait=0.2)  # an event that never comes: the wait is bounded
    assert 0.15 < time.monotonic() - began < 2
    known.end_session(1)  # nothing to wait for (the session was not live): no wait
