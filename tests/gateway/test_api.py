"""The token API (README, "The API"), on the embedded system and on real services
(RabbitMQ + PostgreSQL): tokens, the bearer requirement, every error as JSON, the inbox,
marking it read, sending (once per Idempotency-Key), the poll's and the stream's contracts."""
import hashlib
import time
import uuid
from datetime import datetime, timezone

import pytest

from tests.helpers import PASSWORD, register, signed_in
from tests.sse import SseStream
from tests.waiting import wait_until

COUNT = "unread_message_count"


def issue(client, username="susan", password=PASSWORD):
    return client.post("/api/tokens", auth=(username, password))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class Api:
    """One API client: a test client that never carries a cookie, and its token."""

    def __init__(self, app, username):
        self.client = app.test_client(use_cookies=False)
        response = issue(self.client, username)
        assert response.status_code == 200, response.get_data(as_text=True)
        self.token = response.get_json()["token"]

    def __getattr__(self, method):  # api.get(url), api.post(url, json=...) ...
        call = getattr(self.client, method)
        return lambda url, headers=None, **kwargs: call(url, headers={**bearer(self.token), **(headers or {})},
                                                        **kwargs)

    def unread(self):
        rows = self.get("/api/notifications").get_json()
        return next((row["data"] for row in rows if row["name"] == COUNT), 0)


@pytest.fixture
def users(client):
    for name in ("susan", "john", "mary"):
        assert register(client, name).status_code == 302
    return client


@pytest.fixture
def susan(system_app, users):
    return Api(system_app, "susan")


@pytest.fixture
def john(system_app, users):
    return Api(system_app, "john")


def assert_error(response, code, reason, words=None):
    assert response.status_code == code, (response.status_code, response.get_data(as_text=True))
    assert response.is_json, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["error"] == reason and isinstance(body["message"], str) and body["message"]
    if words:
        assert words in body["message"], body["message"]
    return body


# -- tokens ------------------------------------------------------------------------------

def test_a_password_gives_a_token_that_works_until_revoked(system_app, users):
    client = system_app.test_client(use_cookies=False)
    response = issue(client)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    token, expires_at = response.get_json()["token"], response.get_json()["expires_at"]
    left = (datetime.fromisoformat(expires_at) - datetime.now(timezone.utc)).total_seconds()
    assert 3500 < left <= 3600  # an hour by default
    assert client.get("/api/messages", headers=bearer(token)).status_code == 200
    assert client.delete("/api/tokens", headers=bearer(token)).status_code == 204
    refused = assert_error(client.get("/api/messages", headers=bearer(token)), 401, "Unauthorized")
    assert client.get("/api/messages", headers=bearer(token)).headers["WWW-Authenticate"] == 'Bearer realm="microblog"'
    assert refused["message"]
    assert_error(client.delete("/api/tokens", headers=bearer(token)), 401, "Unauthorized")
    # Another token of the same user is not touched by the revocation.
    other = issue(client).get_json()["token"]
    assert client.get("/api/messages", headers=bearer(other)).status_code == 200


@pytest.mark.parametrize("auth", [("susan", "wrong"), ("nobody", PASSWORD), ("", ""), None])
def test_wrong_credentials_are_a_401_asking_for_basic(system_app, users, auth):
    client = system_app.test_client(use_cookies=False)
    response = client.post("/api/tokens", auth=auth)
    assert_error(response, 401, "Unauthorized")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="microblog"'


def test_a_revoked_token_is_refused_by_every_gateway_process(system_app, users, second_gateway):
    susan = Api(system_app, "susan")
    elsewhere = second_gateway.test_client(use_cookies=False)
    assert elsewhere.get("/api/messages", headers=bearer(susan.token)).status_code == 200  # now in its memory
    assert susan.delete("/api/tokens").status_code == 204
    wait_until(lambda: elsewhere.get("/api/messages", headers=bearer(susan.token)).status_code == 401, timeout=5,
               message="the other gateway still takes the revoked token")


def short_lived(app, username, seconds):
    """An API client whose token lives ``seconds``."""
    lifetime = app.config["API_TOKEN_LIFETIME"]
    app.config["API_TOKEN_LIFETIME"] = seconds
    try:
        return Api(app, username)
    finally:
        app.config["API_TOKEN_LIFETIME"] = lifetime


def test_a_token_expires(system_app, users):
    susan = short_lived(system_app, "susan", 1)
    # Used while live (so the gateway keeps it in memory), then refused once it expired,
    # though the memory would trust a checked session for longer.
    assert susan.get("/api/messages").status_code == 200
    time.sleep(1.2)
    assert_error(susan.get("/api/messages"), 401, "Unauthorized")


def test_tokens_are_stored_only_as_hashes(running_system, susan):
    from sqlalchemy import inspect, text

    from kernel.db import create_db_engine

    secret = susan.token.split(".", 1)[1]
    dumped = []
    for url in running_system.database_urls:
        engine = create_db_engine(url, pool_size=1)
        with engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                dumped += [repr(tuple(row)) for row in connection.execute(text(f"SELECT * FROM {table}"))]
        engine.dispose()
    everything = "\n".join(dumped)
    assert secret not in everything and susan.token not in everything
    assert hashlib.sha256(secret.encode()).hexdigest() in everything


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer x", "Bearer 1.", "Bearer .abc", "Bearer 1.a.b", "Bearer 1:abc",
    "Bearer 99999999999999999999.abc", "Bearer -1.abc", "Bearer \u00b2.abc", "Basic c3VzYW46eA==", "Token 1.abc",
    "Bearer 1.abc def",
])
def test_a_missing_or_malformed_token_is_a_401_never_a_500(system_app, users, header):
    client = system_app.test_client(use_cookies=False)
    headers = {"Authorization": header} if header is not None else {}
    for method, url in (("get", "/api/messages"), ("post", "/api/messages/read"), ("get", "/api/notifications"),
                        ("delete", "/api/tokens"), ("get", "/api/messages/1")):
        response = getattr(client, method)(url, headers=headers)
        assert_error(response, 401, "Unauthorized")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="microblog"'


def test_a_signed_in_browser_cookie_alone_does_not_authorise_the_api(system_app, users):
    browser = system_app.test_client()
    signed_in(browser, "mary")
    assert browser.get("/messages").status_code == 200  # the cookie works for pages
    for method, url in (("get", "/api/messages"), ("post", "/api/messages/read"), ("get", "/api/notifications"),
                        ("get", "/api/notifications/stream"), ("delete", "/api/tokens")):
        assert_error(getattr(browser, method)(url), 401, "Unauthorized")
    # The cookie's own "<id>:<token>" is not a bearer token either.
    with browser.session_transaction() as session:
        cookie_id = session["_user_id"]
    assert_error(browser.get("/api/messages", headers=bearer(cookie_id)), 401, "Unauthorized")


# -- errors --------------------------------------------------------------------------------

def test_unknown_api_addresses_and_methods_are_json(system_app, susan):
    assert_error(susan.get("/api/nothing"), 404, "Not Found")
    assert_error(system_app.test_client().get("/api/nothing/here"), 404, "Not Found")
    response = susan.put("/api/messages", json={})
    assert_error(response, 405, "Method Not Allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(susan.get("/api/tokens"), 405, "Method Not Allowed")
    assert_error(susan.get("/api/messages/999999"), 404, "Not Found")
    assert_error(susan.get("/api/messages/99999999999999999999999"), 404, "Not Found")


@pytest.mark.parametrize("page, code", [("abc", 400), ("0", 400), ("-1", 400), ("1.5", 400), ("9" * 101, 400),
                                        ("2", 404), ("9" * 50, 404)])
def test_page_numbers_as_on_the_messages_page(susan, page, code):
    assert_error(susan.get(f"/api/messages?page={page}"), code, "Bad Request" if code == 400 else "Not Found")


@pytest.mark.parametrize("since", ["abc", "nan", "inf", "-1", ""])
def test_since_must_be_a_unix_time(susan, since):
    assert_error(susan.get(f"/api/notifications?since={since}"), 400, "Bad Request", "since must be a Unix time")
    assert_error(susan.get(f"/api/notifications/stream?since={since}"), 400, "Bad Request")


def test_a_body_that_is_not_json_is_a_415(susan, john):
    assert_error(susan.post("/api/messages", data={"recipient": "john", "body": "hi"}), 415, "Unsupported Media Type")
    assert_error(susan.post("/api/messages", data='{"recipient": "john", "body": "hi"}', content_type="text/plain"),
                 415, "Unsupported Media Type")
    assert john.get("/api/messages").get_json()["_meta"]["total_items"] == 0


@pytest.mark.parametrize("body, words", [
    ('{"recipient": "john", "body": ', "JSON object"),
    ("[]", "JSON object"),
    ('"hi"', "JSON object"),
    ("null", "JSON object"),
    ('{"body": "hi"}', "recipient"),
    ('{"recipient": 5, "body": "hi"}', "recipient"),
    ('{"recipient": "john"}', "body"),
    ('{"recipient": "john", "body": 5}', "body"),
    ('{"recipient": "john", "body": ["hi"]}', "body"),
    ('{"recipient": "john", "body": "   "}', "write a message"),
    ('{"recipient": "john", "body": "%s"}' % ("x" * 141), "at most 140 characters; this one has 141"),
    ('{"recipient": "john", "body": "a\\u0000b"}', "not allowed"),  # the service's own check
])
def test_a_bad_body_is_a_400_and_sends_nothing(susan, john, body, words):
    response = susan.post("/api/messages", data=body, content_type="application/json")
    assert_error(response, 400, "Bad Request", words)
    assert john.get("/api/messages").get_json()["_meta"]["total_items"] == 0


def test_an_unknown_recipient_is_a_404(susan):
    for name in ("nobody", "x" * 500, "../john"):
        assert_error(susan.post("/api/messages", json={"recipient": name, "body": "hi"}), 404, "Not Found", "username")


def test_error_messages_are_translated(susan):
    response = susan.post("/api/messages", json={"recipient": "nobody", "body": "hi"},
                          headers={"Accept-Language": "es"})
    body = assert_error(response, 404, "Not Found")
    assert body["message"] == "No hay ningún usuario con ese nombre."
    response = susan.get("/api/messages?page=abc", headers={"Accept-Language": "es"})
    assert assert_error(response, 400, "Bad Request")["message"].startswith("El número de página")


def test_no_csrf_token_is_needed_even_with_a_browser_session(system_app, users):
    susan = Api(system_app, "susan")
    browser = system_app.test_client()
    signed_in(browser, "mary")  # cookies and all, but no CSRF token sent
    response = browser.post("/api/messages", json={"recipient": "john", "body": "from a script"},
                            headers=bearer(susan.token))
    assert response.status_code == 201 and response.get_json()["sender"] == "susan"  # the token's user, not mary


# -- the inbox, reading, sending -------------------------------------------------------------

def test_the_inbox_is_paginated_json_and_reading_it_marks_nothing_read(susan, john):
    for number in range(26):
        assert john.post("/api/messages", json={"recipient": "susan", "body": f"message {number}"}).status_code == 201
    first = susan.get("/api/messages").get_json()
    assert first["_meta"] == {"page": 1, "per_page": 25, "total_pages": 2, "total_items": 26}
    assert first["_links"] == {"self": "/api/messages?page=1", "next": "/api/messages?page=2", "prev": None}
    assert [m["body"] for m in first["items"][:2]] == ["message 25", "message 24"]  # newest first
    message = first["items"][0]
    assert (message["sender"], message["recipient"]) == ("john", "susan")
    assert datetime.fromisoformat(message["sent_at"]).tzinfo is not None
    assert message["_links"]["self"] == f"/api/messages/{message['id']}"
    assert message["_links"]["sender"] == "/user/john" and message["_links"]["avatar"]
    second = susan.get("/api/messages?page=2").get_json()
    assert [m["body"] for m in second["items"]] == ["message 0"]
    assert second["_links"] == {"self": "/api/messages?page=2", "next": None, "prev": "/api/messages?page=1"}
    # Nothing was marked read: the badge's row says 26.
    assert wait_until(lambda: susan.unread() == 26, timeout=10, message="the count did not reach 26")
    assert susan.get("/api/messages").status_code == 200 and susan.unread() == 26


def test_marking_read_is_a_204_and_the_count_is_0_at_once(susan, john):
    assert john.post("/api/messages", json={"recipient": "susan", "body": "hi"}).status_code == 201
    wait_until(lambda: susan.unread() == 1, timeout=10, message="the count did not reach 1")
    response = susan.post("/api/messages/read")
    assert response.status_code == 204 and response.get_data() == b""
    assert susan.unread() == 0  # no wait: the request waited for its own write
    assert susan.post("/api/messages/read").status_code == 204  # nothing unread: harmless


def test_a_sent_message_is_201_with_its_location_and_reaches_the_recipient(system_app, susan, john):
    response = susan.post("/api/messages", json={"recipient": "JOHN", "body": "  hello john  "})
    assert response.status_code == 201
    sent = response.get_json()
    assert (sent["sender"], sent["recipient"], sent["body"]) == ("susan", "john", "hello john")
    assert response.headers["Location"].endswith(f"/api/messages/{sent['id']}")
    assert susan.get(f"/api/messages/{sent['id']}").get_json() == sent  # the sender may read it
    assert john.get(f"/api/messages/{sent['id']}").get_json() == sent  # and the recipient
    assert_error(Api(system_app, "mary").get(f"/api/messages/{sent['id']}"), 404, "Not Found")  # nobody else
    inbox = john.get("/api/messages").get_json()
    assert [m["body"] for m in inbox["items"]] == ["hello john"] and inbox["items"][0] == sent
    wait_until(lambda: john.unread() == 1, timeout=10, message="john's count did not reach 1")


def test_an_idempotency_key_makes_a_retry_one_message(susan, john):
    key = uuid.uuid4().hex
    first = susan.post("/api/messages", json={"recipient": "john", "body": "once"}, headers={"Idempotency-Key": key})
    again = susan.post("/api/messages", json={"recipient": "john", "body": "once"}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert first.get_json()["id"] == again.get_json()["id"]
    assert john.get("/api/messages").get_json()["_meta"]["total_items"] == 1
    other = susan.post("/api/messages", json={"recipient": "john", "body": "different"},
                       headers={"Idempotency-Key": key})
    assert_error(other, 400, "Bad Request")
    for bad in ("short", "x" * 65, "has space", "ñññññññññ"):
        response = susan.post("/api/messages", json={"recipient": "john", "body": "hi"},
                              headers={"Idempotency-Key": bad.encode().decode("latin-1")})
        assert_error(response, 400, "Bad Request", "Idempotency-Key")
    # Without a key each POST is its own message.
    for _ in range(2):
        assert susan.post("/api/messages", json={"recipient": "john", "body": "twice"}).status_code == 201
    assert john.get("/api/messages").get_json()["_meta"]["total_items"] == 3


def test_notifications_are_the_polls_rows(susan, john):
    assert susan.get("/api/notifications").get_json() == []
    john.post("/api/messages", json={"recipient": "susan", "body": "hi"})
    rows = wait_until(lambda: susan.get("/api/notifications?since=0").get_json(), timeout=10)
    assert rows[0]["name"] == COUNT and rows[0]["data"] == 1
    assert susan.get(f"/api/notifications?since={rows[0]['timestamp']!r}").get_json() == []


# -- the stream ------------------------------------------------------------------------------

def test_the_stream_gives_the_rows_then_each_change(base, susan, john):
    john.post("/api/messages", json={"recipient": "susan", "body": "one"})
    rows = wait_until(lambda: susan.get("/api/notifications").get_json(), timeout=10)
    anonymous = SseStream(base, None, path="/api/notifications/stream")
    assert anonymous.status == 401 and anonymous.headers["content-type"].startswith("application/json")
    anonymous.close()
    stream = SseStream(base, None, path="/api/notifications/stream", extra_headers=bearer(susan.token))
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        first = stream.next_event(5)
        assert first["data"] == rows[0] and first["id"] == repr(rows[0]["timestamp"])
        john.post("/api/messages", json={"recipient": "susan", "body": "two"})
        event = stream.next_event(5)
        assert event["data"]["name"] == COUNT and event["data"]["data"] == 2
    finally:
        stream.close()
    # Resumed from Last-Event-ID: only what came after it.
    resumed = SseStream(base, None, path="/api/notifications/stream", last_event_id=event["id"],
                        extra_headers=bearer(susan.token))
    try:
        assert resumed.status == 200 and resumed.next_event(0.5) is None
    finally:
        resumed.close()


def ended_within(stream, seconds):
    """True if ``stream`` ends (the server closes it) within ``seconds``."""
    stream.body(seconds)
    return stream.eof


def test_revoking_a_token_ends_its_open_stream_and_no_other(base, system_app, users):
    susan, phone = Api(system_app, "susan"), Api(system_app, "susan")
    john = Api(system_app, "john")
    revoked = SseStream(base, None, path="/api/notifications/stream", extra_headers=bearer(susan.token))
    kept = SseStream(base, None, path="/api/notifications/stream", extra_headers=bearer(phone.token))
    try:
        for stream in (revoked, kept):
            assert stream.status == 200 and stream.next_frame(5).startswith("retry: ")
        assert susan.delete("/api/tokens").status_code == 204
        assert ended_within(revoked, 5), "the revoked token's stream is still open"
        # The same user's other token keeps its stream, and it still pushes.
        assert not kept.eof
        john.post("/api/messages", json={"recipient": "susan", "body": "still here"})
        event = kept.next_event(5)
        assert event is not None and event["data"]["name"] == COUNT
    finally:
        revoked.close()
        kept.close()
    again = SseStream(base, None, path="/api/notifications/stream", extra_headers=bearer(susan.token))
    assert again.status == 401
    again.close()


def test_a_stream_ends_when_its_token_expires(base, system_app, users):
    susan = short_lived(system_app, "susan", 2)
    stream = SseStream(base, None, path="/api/notifications/stream", extra_headers=bearer(susan.token))
    try:
        opened = time.monotonic()
        assert stream.status == 200 and stream.next_frame(5).startswith("retry: ")
        assert ended_within(stream, 6), "the stream outlived its token"
        assert time.monotonic() - opened > 0.5  # it ended at the expiry, not at once
    finally:
        stream.close()


# -- a service that cannot answer ------------------------------------------------------------

@pytest.mark.parametrize("down, method, url", [
    ("users", "get", "/api/messages"),  # the token cannot be checked
    ("users", "post", "/api/tokens"),
    ("messages", "get", "/api/messages"),
    ("messages", "post", "/api/messages/read"),
    ("notifications", "get", "/api/notifications"),
    ("notifications", "get", "/api/notifications/stream"),
])
def test_a_service_that_cannot_answer_is_a_503_json(down, method, url):
    """Over stand-in services (tests/gateway/test_database_outage.py's)."""
    from gateway import create_app
    from gateway.settings import GatewaySettings
    from tests.gateway.test_database_outage import TOKEN, Services, _down

    services = Services()
    services.users.authenticate = services.users.open_session = None
    services.messages.inbox = services.notifications.notifications_since_many = None
    service = getattr(services, down)
    for name in vars(service):
        setattr(service, name, _down(down))
    settings = GatewaySettings(secret_key="api-outage", amqp_uri="amqp://unused//", poll_cache_ttl=0)
    client = create_app(settings, rpc=services).test_client(use_cookies=False)
    response = getattr(client, method)(url, headers=bearer(f"1.{TOKEN}"), auth=("john", PASSWORD) if
                                       url == "/api/tokens" else None)
    assert_error(response, 503, "Service Unavailable")
    assert response.headers["Retry-After"]
