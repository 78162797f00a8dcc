"""``GET /notifications/stream`` over HTTP, against the embedded system and real services
(RabbitMQ + PostgreSQL): the contract (README, "The push stream"), live delivery, resume
with ``Last-Event-ID``, many tabs, keepalives, a closed tab, shutdown.

The app is served here by eventlet's WSGI server (embedded mode's); gunicorn's gevent
worker (real mode) is exercised as separate processes in tests/fault/test_stream_processes.py.
"""
import time

import pytest
import requests

from tests.helpers import http_send, http_sign_in
from tests.sse import SseStream, cookie_of
from tests.waiting import wait_until

COUNT = "unread_message_count"


def send(base, browser, recipient, body="hello"):
    http_send(browser, base, recipient, body)
    return time.monotonic()


def poll(base, browser, since=0):
    return browser.get(f"{base}/notifications?since={since!r}").json()


@pytest.fixture
def susan_and_john(base):
    return http_sign_in(base, "susan"), http_sign_in(base, "john")


def test_anonymous_callers_get_the_polls_401_json(base):
    stream = SseStream(base, None)
    assert stream.status == 401
    assert stream.headers["content-type"].startswith("application/json")
    assert "log in" in stream.body()
    stream.close()


@pytest.mark.parametrize("since", ["abc", "nan", "inf", "-1", ""])
def test_a_start_point_that_is_not_a_unix_time_is_a_400(base, susan_and_john, since):
    _, john = susan_and_john
    for stream in (SseStream(base, cookie_of(john), since=since), SseStream(base, cookie_of(john), last_event_id=since or "x")):
        assert stream.status == 400, since
        assert "since must be a Unix time" in stream.body()
        stream.close()


def test_the_stream_gives_the_polls_rows_then_each_change_as_it_commits(base, susan_and_john):
    susan, john = susan_and_john
    send(base, susan, "john", "one")
    rows = wait_until(lambda: poll(base, john), timeout=5, interval=0.02, message="the poll shows no rows")
    stream = SseStream(base, cookie_of(john))
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "no-cache" in stream.headers["cache-control"]
        first = stream.next_event(5)
        assert stream.frames[0].startswith("retry: ")  # the reconnect hint comes first
        # One row of the poll: id is its timestamp exactly as the poll prints it.
        assert first["data"] == rows[0] and first["id"] == repr(rows[0]["timestamp"])
        assert first["fields"] == ["id", "data"]  # no event: field (onmessage gets it)
        for expected in (2, 3):
            sent = send(base, susan, "john", f"message {expected}")
            event = stream.next_event(5)
            delay = time.monotonic() - sent
            assert event["data"]["name"] == COUNT and event["data"]["data"] == expected
            assert float(event["id"]) > float(first["id"])
            assert delay < 1.0, f"the change took {delay:.3f} s"
            first = event
        assert poll(base, john, float(first["id"])) == []  # the last event carries the current value
    finally:
        stream.close()


def test_a_browser_resumes_from_last_event_id_and_gets_what_it_missed_once(base, susan_and_john):
    susan, john = susan_and_john
    stream = SseStream(base, cookie_of(john))
    send(base, susan, "john")
    seen = stream.events_until(lambda e: e["data"]["data"] == 1)[-1]
    stream.close()
    send(base, susan, "john")
    send(base, susan, "john")  # both while the tab was offline
    # Last-Event-ID wins over ?since= (a browser's EventSource keeps its URL and adds it).
    stream = SseStream(base, cookie_of(john), since=0, last_event_id=seen["id"])
    try:
        event = stream.events_until(lambda e: e["data"]["data"] == 3)
        assert all(float(e["id"]) > float(seen["id"]) for e in event)  # never at or before the start
        assert stream.next_event(0.3) is None  # and nothing again
    finally:
        stream.close()
    stream = SseStream(base, cookie_of(john), since=float(event[-1]["id"]))
    try:
        assert stream.next_event(0.3) is None  # ?since= at the current row: nothing to send
    finally:
        stream.close()


def test_every_tab_of_a_user_gets_each_change_and_a_closed_tab_is_freed_at_once(base, system_app, susan_and_john):
    susan, john = susan_and_john
    hub = system_app.extensions["hub"]
    before = hub.count()
    tabs = [SseStream(base, cookie_of(john)) for _ in range(5)]
    susans = SseStream(base, cookie_of(susan))
    try:
        assert hub.count() == before + 6
        send(base, susan, "john")
        for tab in tabs:
            assert tab.events_until(lambda e: e["data"]["data"] == 1)
        assert susans.next_event(0.3) is None  # not hers
        for tab in tabs[1:]:
            tab.close()
        # at once (without the watch: the next keepalive, 15 s)
        wait_until(lambda: hub.count() == before + 2, timeout=3,
                   message=lambda: f"{hub.count() - before} streams still open")
        send(base, susan, "john")
        assert tabs[0].events_until(lambda e: e["data"]["data"] == 2)
    finally:
        for tab in tabs + [susans]:
            tab.close()


def test_an_idle_stream_gets_a_keepalive_comment(base, system_app, susan_and_john):
    _, john = susan_and_john
    system_app.config["STREAM_KEEPALIVE"] = 0.2
    try:
        stream = SseStream(base, cookie_of(john))
        assert stream.next_event(1.0) is None
        assert ": keepalive" in stream.comments
        stream.close()
    finally:
        system_app.config["STREAM_KEEPALIVE"] = 15.0


def test_on_shutdown_streams_end_cleanly_and_new_ones_end_at_once(base, system_app, susan_and_john):
    from gateway.hub import Hub

    _, john = susan_and_john
    live_hub = system_app.extensions["hub"]
    hub = system_app.extensions["hub"] = Hub(None, read_many=live_hub.read_many)  # its own: the session keeps the live one
    try:
        streams = [SseStream(base, cookie_of(john)) for _ in range(3)]
        for stream in streams:
            assert stream.next_frame(2).startswith("retry: ")
        started = time.monotonic()
        hub.shutdown()
        for stream in streams:
            stream.body(2)
            assert stream.eof, "the stream did not end"
        assert time.monotonic() - started < 2
        late = SseStream(base, cookie_of(john))
        late.body(2)
        assert late.eof
    finally:
        system_app.extensions["hub"] = live_hub


def test_when_notifications_cannot_answer_the_first_read_the_stream_is_a_503(base, system_app, susan_and_john):
    from kernel.rpc_pool import ServiceUnavailable

    _, john = susan_and_john
    pool = system_app.extensions["rpc"]
    original = pool.call

    def call(service, method, *args, **kwargs):
        if (service, method) == ("notifications", "notifications_since_many"):
            raise ServiceUnavailable("no answer in time")
        return original(service, method, *args, **kwargs)

    pool.call = call
    try:
        before = system_app.extensions["hub"].count()
        stream = SseStream(base, cookie_of(john))
        assert stream.status == 503 and stream.headers["retry-after"]
        assert "unavailable" in stream.body()
        assert system_app.extensions["hub"].count() == before  # nothing left registered
    finally:
        pool.call = original


def test_a_broadcast_that_could_not_be_published_still_reaches_the_open_stream(base, susan_and_john, monkeypatch):
    # The notifications service commits the change, then its publish fails (its broker
    # connection dropped while the gateway's stayed up): no reconnect tells the gateway to
    # re-read. The service keeps the change and publishes it at its next feed check.
    from kernel.events import NotificationChanged

    susan, john = susan_and_john
    stream = SseStream(base, cookie_of(john))
    failed = []
    original = NotificationChanged.to_dict

    def to_dict(self):
        if not failed:
            failed.append(self)
            raise ConnectionError("broker connection lost while publishing")
        return original(self)

    monkeypatch.setattr(NotificationChanged, "to_dict", to_dict)
    try:
        send(base, susan, "john")
        event = stream.events_until(lambda e: e["data"]["data"] == 1, timeout=10)[-1]
        assert len(failed) == 1 and float(event["id"]) == failed[0].timestamp  # the one that failed
    finally:
        stream.close()


def test_a_head_request_leaves_no_stream_behind(base, system_app, susan_and_john):
    _, john = susan_and_john
    hub = system_app.extensions["hub"]
    before = hub.count()
    for _ in range(3):
        response = requests.head(f"{base}/notifications/stream", headers={"Cookie": cookie_of(john)}, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    wait_until(lambda: hub.count() == before, timeout=3,
               message=lambda: f"{hub.count() - before} streams left open by HEAD requests")


def test_signing_out_ends_the_pages_stream(base, susan_and_john):
    susan, john = susan_and_john
    stream = SseStream(base, cookie_of(john))
    try:
        assert stream.status == 200 and stream.next_frame(5).startswith("retry: ")
        assert john.get(f"{base}/auth/logout").status_code == 200  # redirected to the sign-in page
        stream.body(5)
        assert stream.eof, "the stream of a signed-out session is still open"
    finally:
        stream.close()
