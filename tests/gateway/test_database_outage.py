"""The gateway when a service answers that its database is unavailable: 503 where the page
needs that service, the poll a 503 JSON error, and pages that need notifications only for
the badge render, with the badge left as it was (over stand-in services; the real thing
through a PostgreSQL cut is tests/fault/test_database_outage.py)."""
import re
import shutil
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from gateway import create_app
from gateway.settings import GatewaySettings
from kernel.errors import DatabaseUnavailable

BADGE = re.compile(r'<span id="message_count"([^>]*)>(\d+)<')
TOKEN = "a" * 43  # a session the stand-in users service knows
PAGES = ("/index", "/user/john", "/send_message/john", "/edit_profile", "/messages")


def _down(service):
    def call(*args):
        raise DatabaseUnavailable(f"The {service} service cannot reach its database right now; please try again shortly.")
    return call


class Services:
    def __init__(self, down=()):
        profile = {"id": 1, "username": "john", "about_me": "", "last_seen": datetime.now(timezone.utc).isoformat()}
        self.users = SimpleNamespace(get_user=lambda uid: profile, get_user_by_username=lambda name: profile,
                                     get_users=lambda ids: {}, record_seen=lambda uid: None,
                                     check_session=lambda uid, token: profile if token == TOKEN else None)
        self.messages = SimpleNamespace(
            open_inbox=lambda uid, page: {"messages": [], "pages": 1, "has_next": False, "has_prev": False,
                                          "read": None, "read_after": 0})
        row = {"name": "unread_message_count", "data": 3, "timestamp": 1.0}
        self.notifications = SimpleNamespace(notifications_since=lambda uid, since: [row] if since < 1 else [])
        for service in down:
            namespace = getattr(self, service)
            for name in vars(namespace):
                setattr(namespace, name, _down(service))

    def stop(self):
        pass


def _client(services):
    settings = GatewaySettings(secret_key="db-outage", amqp_uri="amqp://unused//", poll_cache_ttl=0)
    client = create_app(settings, rpc=services).test_client()
    with client.session_transaction() as session:
        session["_user_id"] = f"1:{TOKEN}"
        session["_fresh"] = True
    return client


def test_pages_render_with_the_badge_left_as_it_was_when_notifications_is_down():
    client = _client(Services(down=["notifications"]))
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        attributes, count = BADGE.search(response.text).groups()
        assert 'data-unknown="1"' in attributes and "hidden" in attributes, path
    # The page keeps the count it showed last (sessionStorage) and asks again at once.
    assert "sessionStorage.getItem(message_count_key)" in response.text


def test_the_badge_is_known_when_notifications_answers():
    response = _client(Services()).get("/index")
    attributes, count = BADGE.search(response.text).groups()
    assert count == "3" and "visible" in attributes and "data-unknown" not in attributes


def test_the_poll_answers_503_json_when_notifications_is_down():
    response = _client(Services(down=["notifications"])).get("/notifications?since=0")
    assert response.status_code == 503
    assert response.is_json and "unavailable" in response.get_json()["error"]
    assert response.headers["Retry-After"]


@pytest.mark.parametrize("service, paths", [
    ("users", PAGES),
    ("messages", ("/messages",)),
])
def test_pages_that_need_a_service_whose_database_is_down_answer_503(service, paths):
    client = _client(Services(down=[service]))
    for path in paths:
        response = client.get(path)
        assert response.status_code == 503, (path, response.status_code)
        assert "temporarily unavailable" in response.text
        assert response.headers["Retry-After"]


NODE = shutil.which("node")
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
PRELUDE = """
globalThis.BroadcastChannel = undefined;  // one tab here: no sharing across tabs (tests/browser has that)
const store = new Map(Object.entries(JSON.parse(process.env.STORED)));
globalThis.sessionStorage = {getItem: k => store.has(k) ? store.get(k) : null, setItem: (k, v) => store.set(k, String(v))};
const badge = JSON.parse(process.env.BADGE);
globalThis.document = {getElementById: id => badge};
let polls = 0;
globalThis.fetch = async () => { polls++; return {ok: false, status: 503}; };  // still unavailable
globalThis.setInterval = () => 0;
"""
EPILOGUE = """
setTimeout(() => console.log(JSON.stringify({text: String(badge.textContent), visibility: badge.style.visibility,
                                             stored: Object.fromEntries(store), polls})), 20);
"""


def _run_page_script(html: str, stored: dict) -> dict:
    """The page's badge script in node, with a stand-in DOM, sessionStorage and fetch."""
    import json
    import subprocess

    attributes, count = BADGE.search(html).groups()
    badge = {"textContent": count, "style": {"visibility": re.search(r"visibility: (\w+)", attributes).group(1)},
             "dataset": {"unknown": "1"} if 'data-unknown="1"' in attributes else {}}
    script = next(s for s in SCRIPT.findall(html) if "set_message_count" in s)
    result = subprocess.run([NODE, "-e", PRELUDE + script + EPILOGUE], capture_output=True, text=True, timeout=30,
                            env={"STORED": json.dumps(stored), "BADGE": json.dumps(badge), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(NODE is None, reason="node not installed (runs the page's script)")
def test_in_the_browser_the_badge_keeps_the_count_it_showed_last():
    shown = _run_page_script(_client(Services()).get("/index").text, {})
    assert shown["text"] == "3" and shown["visibility"] == "visible" and shown["polls"] == 0
    kept = _run_page_script(_client(Services(down=["notifications"])).get("/user/john").text, shown["stored"])
    assert kept["text"] == "3" and kept["visibility"] == "visible"  # left as it was
    assert kept["polls"] == 1  # and asked again at once
    unknown = _run_page_script(_client(Services(down=["notifications"])).get("/index").text, {})
    assert unknown["visibility"] == "hidden"  # nothing shown before: nothing made up
