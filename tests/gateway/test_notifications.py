"""The polling endpoint and the navbar badge, over the embedded and the real system."""
import re

import pytest

from tests.helpers import login, post_form, register, text
from tests.waiting import wait_until


def _poll(client, since=None):
    url = "/notifications" + ("" if since is None else f"?since={since}")
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _wait_for_count(client, expected, timeout=10):
    def row():
        rows = [n for n in _poll(client) if n["name"] == "unread_message_count"]
        return rows[-1] if rows and rows[-1]["data"] == expected else None

    return wait_until(row, timeout=timeout, interval=0.02, message=f"the unread count did not become {expected}")


def _badge(client):
    page = text(client.get("/index"))
    match = re.search(r'<span id="message_count" class="badge[^"]*"\s+style="visibility: (\w+);">(\d+)</span>', page)
    assert match, "no badge on the page"
    return match.group(1), int(match.group(2))



def test_two_users_see_the_count_through_polling_and_the_badge_then_zero(susan_and_john):
    susan, john = susan_and_john
    assert _poll(john) == []
    assert _badge(john) == ("hidden", 0)
    for body in ("one", "two"):
        assert post_form(susan, "/send_message/john", {"message": body}).status_code == 302
    row = _wait_for_count(john, 2)
    assert set(row) == {"name", "data", "timestamp"}
    assert _badge(john) == ("visible", 2)
    assert _badge(susan) == ("hidden", 0)
    john.get("/messages")
    after = _wait_for_count(john, 0)
    assert after["timestamp"] > row["timestamp"]
    assert _badge(john) == ("hidden", 0)


def test_since_returns_only_newer_rows_and_passing_back_the_last_misses_nothing(susan_and_john):
    susan, john = susan_and_john
    post_form(susan, "/send_message/john", {"message": "one"})
    first = _wait_for_count(john, 1)
    assert _poll(john, since=repr(first["timestamp"])) == []
    post_form(susan, "/send_message/john", {"message": "two"})
    newer = wait_until(lambda: _poll(john, since=repr(first["timestamp"])), interval=0.02, message="no newer rows")
    assert [(n["name"], n["data"]) for n in newer] == [("unread_message_count", 2)]
    assert newer[0]["timestamp"] > first["timestamp"]
    assert _poll(john, since="0") == _poll(john)


def test_anonymous_callers_get_401_json(client):
    response = client.get("/notifications?since=0")
    assert response.status_code == 401
    assert response.is_json and "error" in response.get_json()


@pytest.mark.parametrize("since", ["abc", "nan", "inf", "-inf", "", "-1", "1e999", "0x10"])
def test_malformed_since_is_a_clear_400_json_error(susan_and_john, since):
    _, john = susan_and_john
    response = john.get(f"/notifications?since={since}")
    assert response.status_code == 400
    assert response.is_json
    assert "since must be a Unix time" in response.get_json()["error"]


def test_pages_poll_with_the_configured_interval_and_no_jquery(susan_and_john, system_app):
    _, john = susan_and_john
    page = text(john.get("/index"))
    assert "function set_message_count(n)" in page
    interval = int(system_app.config["POLL_INTERVAL"] * 1000)
    assert f"setInterval(poll, {interval})" in page
    assert not re.search(r"<script[^>]+jquery", page, re.I) and "$.ajax" not in page
    assert re.findall(r'<script src="([^"]+)"', page) == ["/static/bootstrap/bootstrap.bundle.min.js"]


def test_the_badge_is_on_every_page(susan_and_john):
    susan, john = susan_and_john
    post_form(susan, "/send_message/john", {"message": "hi"})
    _wait_for_count(john, 1)
    for url in ("/index", "/user/john", "/user/susan", "/edit_profile", "/send_message/susan"):
        assert 'id="message_count"' in text(john.get(url)), url


def test_the_poll_works_from_a_remember_me_cookie_alone(system_app):

    browser = system_app.test_client()
    register(browser, "mary")
    login(browser, "mary", remember=True)
    with browser.session_transaction() as session:
        session.clear()  # the browser was closed: only the remember cookie is left
    assert browser.get("/notifications").status_code == 200
    with browser.session_transaction() as session:
        session.clear()
    browser.delete_cookie("remember_token")
    assert browser.get("/notifications").status_code == 401


def test_a_tampered_session_id_is_not_a_user(system_app):
    browser = system_app.test_client()
    with browser.session_transaction() as session:
        session["_user_id"] = "not-a-number"
    assert browser.get("/notifications").status_code == 401


def test_nothing_new_is_answered_without_the_service_and_a_change_still_shows_at_once(susan_and_john, system_app):
    susan, john = susan_and_john
    latest = system_app.extensions["known"].notifications
    latest.ttl = 3600  # so that only the change broadcast, never expiry, can let the change through
    post_form(susan, "/send_message/john", {"message": "one"})
    first = _wait_for_count(john, 1)
    wait_until(lambda: latest.connected, interval=0.02, message="the gateway's broadcast listener is not connected")
    assert _poll(john, since=repr(first["timestamp"])) == []  # read from the service, kept
    with john.session_transaction() as session:
        john_id = int(session["_user_id"].split(":")[0])
    assert latest.get(john_id) is not None  # the next such poll needs no RPC
    post_form(susan, "/send_message/john", {"message": "two"})
    newer = wait_until(lambda: _poll(john, since=repr(first["timestamp"])), timeout=5, interval=0.02,
                       message="the change did not show")
    assert newer[0]["data"] == 2
