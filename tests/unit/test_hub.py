"""The gateway's hub without a broker: filing changes for streams, coalescing, ordering,
re-reads after a reconnect or a change announced without its value, and shutdown."""
import threading

from gateway.hub import Hub
from tests.waiting import wait_until

COUNT = "unread_message_count"


def row(data, timestamp):
    return {"name": COUNT, "data": data, "timestamp": timestamp}


def test_a_change_reaches_every_stream_of_its_user_and_no_other():
    hub = Hub(None)
    tabs = [hub.open(7, 0.0) for _ in range(3)]
    other = hub.open(8, 0.0)
    hub.changed(7, COUNT, 10.0, 1)
    for tab in tabs:
        assert tab.wake.is_set()
        assert hub.take(tab) == [row(1, 10.0)]
        assert tab.last == 10.0
    assert not other.wake.is_set() and hub.take(other) == []


def test_two_quick_changes_go_out_as_one_event_with_the_latest_value():
    hub = Hub(None)
    stream = hub.open(7, 0.0)
    hub.changed(7, COUNT, 10.0, 1)
    hub.changed(7, COUNT, 11.0, 2)
    assert hub.take(stream) == [row(2, 11.0)]


def test_never_an_older_value_after_a_newer_one_nor_a_row_at_or_before_the_start():
    hub = Hub(None)
    stream = hub.open(7, 10.0)  # resumed from id 10.0
    hub.changed(7, COUNT, 10.0, 1)  # at the start point: already seen
    hub.changed(7, COUNT, 9.0, 0)
    assert hub.take(stream) == []
    hub.changed(7, COUNT, 12.0, 3)
    hub.changed(7, COUNT, 11.0, 2)  # arrives late (another publisher): older, dropped
    assert hub.take(stream) == [row(3, 12.0)]
    hub.add_rows(stream, [row(2, 11.0), row(3, 12.0)])  # a re-read overlapping the broadcast
    assert hub.take(stream) == []


def test_a_change_during_the_first_read_is_not_lost():
    # The stream registers before it reads: a change committed meanwhile is filed, and the
    # read's older answer does not replace it.
    hub = Hub(None)
    stream = hub.open(7, 0.0)
    hub.changed(7, COUNT, 12.0, 2)  # heard while the read was in flight
    hub.add_rows(stream, [row(1, 11.0)])  # what the read saw
    assert hub.take(stream) == [row(2, 12.0)]


def test_a_closed_stream_is_forgotten():
    hub = Hub(None)
    stream = hub.open(7, 0.0)
    assert hub.count() == 1
    hub.close(stream)
    hub.close(stream)  # twice is harmless
    assert hub.count() == 0
    hub.changed(7, COUNT, 10.0, 1)
    assert not stream.wake.is_set()


def _reading_hub(answers, calls):
    def read_many(pairs):
        calls.append(pairs)
        return [[user_id, [r for r in answers.get(user_id, []) if r["timestamp"] > since]] for user_id, since in pairs]
    hub = Hub(None, read_many=read_many)
    hub.start()
    return hub


def test_a_reconnect_re_reads_every_open_stream_after_its_last_id_in_one_batch():
    answers = {7: [row(2, 12.0)], 8: [row(5, 20.0)]}
    calls = []
    hub = _reading_hub(answers, calls)
    try:
        a, b, c = hub.open(7, 11.0), hub.open(7, 12.0), hub.open(8, 0.0)
        hub.connection_up()  # changes may have been missed while disconnected
        wait_until(lambda: a.wake.is_set() and c.wake.is_set())
        assert calls == [[[7, 11.0], [8, 0.0]]]  # one call; per user, from its oldest stream
        assert hub.take(a) == [row(2, 12.0)]
        assert hub.take(b) == []  # already had it
        assert hub.take(c) == [row(5, 20.0)]
    finally:
        hub.stop()


def test_a_change_announced_without_its_value_is_re_read():
    answers = {7: [row(4, 13.0)]}
    calls = []
    hub = _reading_hub(answers, calls)
    try:
        stream = hub.open(7, 0.0)
        hub.changed(7, COUNT, 13.0, None, has_value=False)  # an older publisher
        wait_until(stream.wake.is_set)
        assert hub.take(stream) == [row(4, 13.0)]
    finally:
        hub.stop()


def test_a_failed_re_read_is_tried_again(caplog):
    answers = {7: [row(4, 13.0)]}
    calls = []
    failing = {"left": 1}

    def read_many(pairs):
        calls.append(pairs)
        if failing["left"]:
            failing["left"] -= 1
            raise ConnectionError("notifications away")
        return [[7, answers[7]]]

    import gateway.hub as hub_module
    original, hub_module.REREAD_RETRY = hub_module.REREAD_RETRY, 0.05
    hub = Hub(None, read_many=read_many)
    try:
        hub.start()
        stream = hub.open(7, 0.0)
        hub.connection_up()
        wait_until(stream.wake.is_set)
        assert hub.take(stream) == [row(4, 13.0)] and len(calls) == 2
        assert sum("re-reading" in r.getMessage() for r in caplog.records) <= 2  # once down, once back
    finally:
        hub_module.REREAD_RETRY = original
        hub.stop()


def test_shutdown_ends_every_stream_and_any_opened_after():
    hub = Hub(None)
    streams = [hub.open(user, 0.0) for user in (1, 2, 2)]
    woken = []
    waiters = [threading.Thread(target=lambda s=s: woken.append(s.wake.wait(5))) for s in streams]
    for waiter in waiters:
        waiter.start()
    hub.shutdown()
    for waiter in waiters:
        waiter.join(5)
    assert woken == [True, True, True] and all(s.closed for s in streams)
    assert hub.open(3, 0.0).closed


def test_reads_that_arrive_together_share_one_call_and_each_gets_its_own_rows():
    calls = []
    gate = threading.Event()

    def read_many(pairs):
        calls.append([list(p) for p in pairs])
        gate.wait(5)
        return [[7, [row(1, 10.0), row(2, 12.0)]], [8, [row(5, 20.0)]]]

    hub = Hub(None, read_many=read_many)
    results = {}
    readers = [threading.Thread(target=lambda k=k, u=u, s=s: results.__setitem__(k, hub.read_since(u, s)))
               for k, (u, s) in enumerate([(7, 0.0), (7, 11.0), (8, 0.0), (7, 0.0), (8, 0.0)])]
    readers[0].start(), readers[1].start()  # two calls in flight: both slots busy
    wait_until(lambda: len(calls) == 2)
    for reader in readers[2:]:
        reader.start()
    wait_until(lambda: hub._reads._open is not None and len(hub._reads._open.pairs) == 3)  # queued behind the slots
    gate.set()
    for reader in readers:
        reader.join(5)
    assert len(calls) == 3 and sorted(len(c) for c in calls) == [1, 1, 3]  # the last three in one call
    assert results[0] == results[3] == [row(1, 10.0), row(2, 12.0)]
    assert results[1] == [row(2, 12.0)]  # only what is newer than its own start point
    assert results[2] == results[4] == [row(5, 20.0)]


def test_a_failed_shared_read_is_raised_to_every_reader():
    hub = Hub(None, read_many=lambda pairs: (_ for _ in ()).throw(ConnectionError("notifications away")))
    for _ in range(2):
        try:
            hub.read_since(7, 0.0)
        except ConnectionError as exc:
            assert "away" in str(exc)
        else:
            raise AssertionError("no error")


def test_past_the_cap_a_users_oldest_stream_ends():
    from gateway.hub import STREAMS_PER_USER

    hub = Hub(None)
    streams = [hub.open(7, 0.0) for _ in range(STREAMS_PER_USER)]
    other = hub.open(8, 0.0)
    assert not any(s.closed for s in streams)
    newest = hub.open(7, 0.0)
    assert streams[0].closed and streams[0].wake.is_set()  # the oldest ends
    assert not any(s.closed for s in streams[1:]) and not newest.closed and not other.closed
    hub.close(streams[0])
    assert hub.count() == STREAMS_PER_USER + 1


def test_a_sign_out_ends_the_streams_of_that_session_only_and_a_failed_check_is_tried_again():
    from kernel.events import SessionEnded
    from gateway.memory import Known

    live = {"tab-token", "phone-token"}
    checks = []
    failing = {"left": 1}

    class Users:
        @staticmethod
        def check_session(user_id, token):
            checks.append(token)
            if failing["left"]:
                failing["left"] -= 1
                raise ConnectionError("users away")
            return {"id": user_id, "username": "susan", "about_me": ""} if token in live else None

    class Pool:
        users = Users

    import gateway.hub as hub_module
    original, hub_module.REREAD_RETRY = hub_module.REREAD_RETRY, 0.05
    known = Known(lambda: Pool, size=100)
    known.connection_up()
    hub = Hub(None, read_many=lambda pairs: [], known=known)
    try:
        tab = hub.open(7, 0.0, token="tab-token")
        phone = hub.open(7, 0.0, token="phone-token")
        remembered = hub.open(7, 0.0)  # a "remember me" browser: no session to check
        other_user = hub.open(8, 0.0, token="tab-token")
        live.discard("tab-token")  # signed out of the tab's session
        hub.users_event(SessionEnded(user_id=7, position=3))
        wait_until(lambda: tab.closed, message="the signed-out session's stream is still open")
        assert tab.wake.is_set()
        assert not phone.closed and not remembered.closed and not other_user.closed
        assert failing["left"] == 0  # the first check failed: the stream ended on the next one
        hub.users_event(SessionEnded(user_id=7, position=5))  # another session of theirs: the phone's lives
        checked = len(checks)
        wait_until(lambda: len(checks) > checked, message="the phone's session was not checked again")
        assert not phone.closed
    finally:
        hub_module.REREAD_RETRY = original
        hub.stop()



def test_a_session_check_that_keeps_failing_does_not_hold_back_the_re_reads():
    from kernel.events import SessionEnded
    from gateway.memory import Known

    class Users:
        @staticmethod
        def check_session(user_id, token):
            raise ConnectionError("users away")

    class Pool:
        users = Users

    reads = []

    def read_many(pairs):
        reads.append(pairs)
        return [[8, [row(5, 14.0)]]]

    import gateway.hub as hub_module
    original, hub_module.REREAD_RETRY = hub_module.REREAD_RETRY, 0.05
    hub = Hub(None, read_many=read_many, known=Known(lambda: Pool, size=100))
    try:
        signed_out = hub.open(7, 0.0, token="t")
        other = hub.open(8, 0.0)
        hub.users_event(SessionEnded(user_id=7, position=3))  # checked again and again, failing
        hub.connection_up()  # every stream re-reads, in one of those rounds
        wait_until(other.wake.is_set, message="the re-read waited for the session check")
        assert hub.take(other) == [row(5, 14.0)]
        assert not signed_out.closed  # its session could not be checked: not ended on a guess
    finally:
        hub_module.REREAD_RETRY = original
        hub.stop()
