"""Pages from the gateway's memory (issue 13), over the embedded and the real system: at
most one RPC per page once the memory is warm, one RPC per form send, the log holds facts
(Messages with nothing unread writes nothing), and the person who acted never sees their
own change undone: a rename shows on every page, the badge is 0 after opening Messages, a
sign-out ends the session everywhere, a send reaches the recipient's badge."""
from __future__ import annotations

import re
import threading

import pytest

from tests.helpers import post_form, signed_in, text
from tests.waiting import wait_until


class CountingPool:
    """The app's RPC pool, recording each call a request makes."""

    def __init__(self, pool):
        self.pool = pool
        self.calls: list[str] = []

    def __getattr__(self, service):
        target = getattr(self.pool, service)
        calls = self.calls

        class Service:
            def __getattr__(self, method):
                def call(*args, **kwargs):
                    calls.append(f"{service}.{method}")
                    return getattr(target, method)(*args, **kwargs)
                return call

        return Service()


@pytest.fixture
def counting(system_app):
    pool = system_app.extensions["rpc"]
    counter = system_app.extensions["rpc"] = CountingPool(pool)
    known = system_app.extensions["known"]
    wait_until(lambda: known.notifications.connected, message="the gateway's listener is not connected")
    for memory in known.memories:  # only events, never age, may change what is kept here
        memory.ttl = 3600
    yield counter
    system_app.extensions["rpc"] = pool


def _badge(client, path="/index") -> tuple[str, int]:
    page = text(client.get(path))
    match = re.search(r'<span id="message_count" class="badge[^"]*"\s+style="visibility: (\w+);">(\d+)</span>', page)
    assert match, "no badge on the page"
    return match.group(1), int(match.group(2))


def _count(client) -> int:
    rows = [row for row in client.get("/notifications").get_json() if row["name"] == "unread_message_count"]
    return rows[-1]["data"] if rows else 0


def _head(app) -> int:
    with app.app_context():
        return app.extensions["rpc"].messages.head()


def test_pages_make_at_most_one_rpc_and_a_form_send_one(susan_and_john, system_app, counting):
    susan, john = susan_and_john
    for body in ("one", "two", "three"):
        assert post_form(susan, "/send_message/john", {"message": body}).status_code == 302
    wait_until(lambda: _count(john) == 3, interval=0.02, message="john's count did not reach 3")
    pages = ["/index", "/user/susan", "/send_message/susan", "/notifications?since=0", "/messages", "/edit_profile"]
    for page in pages + ["/messages"]:  # the first visits fill the memory (the visit that read is not kept)
        assert john.get(page).status_code == 200, page
    for page in pages:
        counting.calls.clear()
        assert john.get(page).status_code == 200, page
        assert counting.calls == [], (page, counting.calls)  # Messages too: nothing unread, page kept
    form = text(john.get("/send_message/susan"))
    fields = dict(re.findall(r'name="(csrf_token|idempotency_key)" type="hidden" value="([^"]+)"', form))
    counting.calls.clear()
    sent = john.post("/send_message/susan", data={**fields, "message": "hello"}, follow_redirects=True)
    assert sent.status_code == 200 and "Your message has been sent" in text(sent)
    assert counting.calls == ["messages.send_message"]  # the redirect's page needed none
    # Errors are what they were: an unknown recipient is a 404, a bad body a form error.
    assert john.get("/send_message/nobody").status_code == 404
    refused = post_form(john, "/send_message/susan", {"message": ""})
    assert refused.status_code == 200 and "This field is required" in text(refused)


def test_opening_messages_writes_an_inbox_read_only_when_something_is_unread(susan_and_john, system_app):
    susan, john = susan_and_john
    head = _head(system_app)
    assert john.get("/messages").status_code == 200
    assert _head(system_app) == head  # nothing unread: nothing written
    post_form(susan, "/send_message/john", {"message": "one"})
    wait_until(lambda: _count(john) == 1, interval=0.02, message="john's count did not reach 1")
    assert john.get("/messages").status_code == 200
    assert _head(system_app) == head + 2  # the send, and one InboxRead
    assert _badge(john, "/messages") == ("hidden", 0)
    assert _head(system_app) == head + 2  # read already: visiting again writes nothing


def test_messages_from_memory_show_each_new_message_at_once(susan_and_john, system_app, counting):
    """The inbox kept in memory is dropped when a message comes: the next visit shows it,
    marked new, and marks it read; the visit after that is from memory again."""
    susan, john = susan_and_john
    post_form(susan, "/send_message/john", {"message": "first"})
    wait_until(lambda: _count(john) == 1, interval=0.02, message="john's count did not reach 1")
    john.get("/messages")
    assert "message-new" not in text(john.get("/messages"))
    for n, body in enumerate(["second <b>", "third"], start=2):
        post_form(susan, "/send_message/john", {"message": body})
        wait_until(lambda: _badge(john) == ("visible", 1), interval=0.02, message="the send did not reach the badge")
        counting.calls.clear()
        page = text(john.get("/messages"))
        assert counting.calls == ["messages.open_inbox"]  # something unread: asks, and marks it read
        assert page.count('class="card-text message-body"') == n and page.count("message-new") == 1
        assert "second &lt;b&gt;" in page
        # The InboxRead's change drops the page kept meanwhile: one more visit asks, then none.
        wait_until(lambda: _visit_without_rpc(john, counting), interval=0.02, message="the inbox was not kept")
        page = text(john.get("/messages"))
        assert page.count('class="card-text message-body"') == n
        assert "message-new" not in page and 'style="visibility: hidden;">0</span>' in page


def _visit_without_rpc(client, counting) -> bool:
    counting.calls.clear()
    assert client.get("/messages").status_code == 200
    return counting.calls == []


def test_after_opening_messages_the_badge_is_zero_at_once(susan_and_john, system_app):
    susan, john = susan_and_john
    for body in ("one", "two"):
        post_form(susan, "/send_message/john", {"message": body})
    wait_until(lambda: _badge(john) == ("visible", 2), interval=0.02, message="john's badge did not show 2")
    page = text(john.get("/messages"))
    assert 'style="visibility: hidden;">0</span>' in page
    assert _badge(john) == ("hidden", 0)  # the next page too: no wait for a poll


def test_a_send_reaches_the_recipients_badge_from_memory(susan_and_john, system_app, counting):
    susan, john = susan_and_john
    assert _badge(john) == ("hidden", 0)  # kept in memory now
    post_form(susan, "/send_message/john", {"message": "one"})
    counting.calls.clear()
    wait_until(lambda: _badge(john) == ("visible", 1), timeout=2, interval=0.01,
               message="the send did not reach john's badge")
    assert "notifications.notifications_since" not in counting.calls  # the change's event brought it


def test_after_renaming_yourself_every_page_shows_the_new_name(susan_and_john, system_app, counting):
    susan, john = susan_and_john
    post_form(john, "/send_message/susan", {"message": "from john"})
    wait_until(lambda: _count(susan) == 1, interval=0.02, message="susan's count did not reach 1")
    for path in ("/index", "/user/john", "/messages"):
        john.get(path), susan.get(path)  # both browsers' processes now keep "john"
    saved = post_form(john, "/edit_profile", {"username": "johnny", "about_me": "renamed"})
    assert saved.status_code == 302
    assert 'href="/user/johnny"' in text(john.get("/index"))  # the navbar's Profile link
    profile = text(john.get("/user/johnny"))
    assert "johnny" in profile and "renamed" in profile
    assert john.get("/user/john").status_code == 404
    assert 'value="johnny"' in text(john.get("/edit_profile"))
    # Others follow within the push latency: the rename's event reaches every process.
    wait_until(lambda: ">johnny</a>" in text(susan.get("/messages")), timeout=2, interval=0.01,
               message="susan's inbox still shows the old name")
    assert susan.get("/send_message/johnny").status_code == 200
    assert susan.get("/send_message/john").status_code == 404


def test_a_sign_out_ends_the_session_even_for_a_copied_cookie(client, system_app, counting):
    signed_in(client, "susan")
    assert client.get("/index").status_code == 200
    copy = system_app.test_client()
    with client.session_transaction() as original, copy.session_transaction() as copied:
        copied.update(original)
    assert copy.get("/index").status_code == 200  # the copy works while the session lives
    client.get("/auth/logout")
    wait_until(lambda: copy.get("/index").status_code == 302, timeout=2, interval=0.01,
               message="a copy of a signed-out session still works")
    assert copy.get("/notifications").status_code == 401


# Two gateway processes (``second_gateway``: its own listener and memory). A browser's
# requests may land on either; what one process did, the other must not undo.

def _on(app, browser):
    """A browser on ``app`` with the cookies of ``browser`` (the same session)."""
    other = app.test_client()
    with browser.session_transaction() as original, other.session_transaction() as copied:
        copied.update(original)
    return other


class HeldEvents:
    """Holds what ``app``'s listener hears until ``release`` (a process whose broadcast
    arrives late: the window in which a browser may already be back on it)."""

    def __init__(self, app):
        self.hub = app.extensions["hub"]
        self.held: list = []
        self.originals = {name: getattr(self.hub, name) for name in ("changed", "users_event")}
        for name, original in self.originals.items():
            setattr(self.hub, name, lambda *args, _name=name, **kwargs: self.held.append((_name, args, kwargs)))

    def release(self):
        for name, original in self.originals.items():
            setattr(self.hub, name, original)
        for name, args, kwargs in self.held:
            self.originals[name](*args, **kwargs)


def _warm(app):
    app.extensions["hub"].start()  # as its first request would
    known = app.extensions["known"]
    wait_until(lambda: known.notifications.connected, message="the second gateway's listener is not connected")


def test_with_two_gateways_your_rename_shows_on_the_other_at_once(susan_and_john, second_gateway):
    susan, john = susan_and_john
    _warm(second_gateway)
    john_b = _on(second_gateway, john)
    assert 'href="/user/john"' in text(john_b.get("/index"))  # B keeps john's profile now
    held = HeldEvents(second_gateway)  # B hears of the rename late ...
    assert post_form(john, "/edit_profile", {"username": "johnny", "about_me": ""}).status_code == 302
    threading.Timer(0.3, held.release).start()
    john_b = _on(second_gateway, john)  # ... after john, with the cookie as the rename left it, is back on B
    assert 'href="/user/johnny"' in text(john_b.get("/index"))
    assert john_b.get("/user/johnny").status_code == 200
    susan_b = _on(second_gateway, susan)
    wait_until(lambda: susan_b.get("/user/johnny").status_code == 200, timeout=2, interval=0.01,
               message="the other gateway did not hear of the rename")


def test_with_two_gateways_the_badge_is_zero_on_the_other_after_opening_messages(susan_and_john, second_gateway):
    susan, john = susan_and_john
    _warm(second_gateway)
    for body in ("one", "two"):
        post_form(susan, "/send_message/john", {"message": body})
    john_b = _on(second_gateway, john)
    wait_until(lambda: _badge(john_b) == ("visible", 2), interval=0.02, message="B's badge did not show 2")
    held = HeldEvents(second_gateway)  # B hears of the read late
    assert john.get("/messages").status_code == 200  # read through A
    threading.Timer(0.3, held.release).start()
    assert _badge(_on(second_gateway, john)) == ("hidden", 0)  # and B shows it at once
    post_form(susan, "/send_message/john", {"message": "three"})  # a send through A ...
    wait_until(lambda: _badge(john_b) == ("visible", 1), timeout=2, interval=0.01,
               message="the send did not reach the badge on B")  # ... reaches B's badge


def test_with_two_gateways_a_sign_out_on_one_ends_the_session_on_the_other(client, second_gateway):
    signed_in(client, "susan")
    _warm(second_gateway)
    on_b = _on(second_gateway, client)
    assert on_b.get("/index").status_code == 200  # B trusts the session from memory now
    client.get("/auth/logout")  # through A
    wait_until(lambda: on_b.get("/index").status_code == 302, timeout=2, interval=0.01,
               message="the other gateway still trusts a signed-out session")
    assert on_b.get("/notifications").status_code == 401
