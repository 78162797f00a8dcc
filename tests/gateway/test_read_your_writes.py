"""Your own writes, over stand-in services: opening Messages shows the badge at 0 even when
the notifications projection has not yet applied the InboxRead the page just appended (the
page waits for that change's event on the hub, not by asking the service again and again),
and when the event does not come the page asks the service once, after the wait."""
import re
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

from gateway import create_app
from gateway.settings import GatewaySettings
from kernel.rpc_pool import ServiceUnavailable

BADGE = re.compile(r'id="message_count"[^>]*style="visibility: (\w+);">(\d+)<')
READ_AT = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


class LaggingSystem:
    """Services as the gateway sees them, with a projection that applies the InboxRead only
    when ``apply`` is called (as it would a few milliseconds after the page's call)."""

    def __init__(self, notifications_down=False, unread=2):
        self.applied = False
        self.reads = 0
        self.unread = unread
        profile = {"id": 1, "username": "john", "about_me": "", "last_seen": datetime.now(timezone.utc).isoformat()}
        self.users = SimpleNamespace(get_user=lambda uid: profile, get_users=lambda ids: {}, record_seen=lambda uid: None,
                                     check_session=lambda uid, token: profile)
        self.messages = SimpleNamespace(open_inbox=self._open_inbox)
        if notifications_down:
            def down(*args):
                raise ServiceUnavailable("notifications did not answer")
            self.notifications = SimpleNamespace(notifications_since=down)
        else:
            self.notifications = SimpleNamespace(notifications_since=self._rows)

    def _open_inbox(self, user_id, page):
        read = None
        if self.unread:
            read = {"event_type": "InboxRead", "position": 7, "user_id": user_id, "occurred_at": READ_AT.isoformat()}
        return {"messages": [], "pages": 1, "has_next": False, "has_prev": False, "read": read, "read_after": 0}

    def _rows(self, user_id, since):
        self.reads += 1
        count, at = (0, READ_AT.timestamp()) if self.applied else (self.unread, READ_AT.timestamp() - 60)
        return [{"name": "unread_message_count", "data": count, "timestamp": at}] if at > since else []

    def stop(self):
        pass


def _signed_in_client(system):
    # No listener (no broker): the tests play its part, calling the hub as it would.
    app = create_app(GatewaySettings(secret_key="read-your-writes", amqp_uri=None), rpc=system)
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = "1:a-session-token"
        session["_fresh"] = True
    return app, client


def test_opening_messages_waits_for_the_event_of_its_read_and_shows_no_unread_badge():
    system = LaggingSystem()
    app, client = _signed_in_client(system)
    hub = app.extensions["hub"]
    hub.connection_up()  # as the listener does once connected (it cannot connect here)
    assert BADGE.search(client.get("/index").text).groups() == ("visible", "2")
    reads = system.reads

    def projection_applies():
        system.applied = True
        hub.changed(1, "unread_message_count", READ_AT.timestamp(), 0)

    threading.Timer(0.2, projection_applies).start()
    response = client.get("/messages")
    assert response.status_code == 200
    assert BADGE.search(response.text).groups() == ("hidden", "0")
    assert system.reads == reads  # the event brought the new count: no read of the service
    assert BADGE.search(client.get("/index").text).groups() == ("hidden", "0")


def test_without_the_event_the_page_asks_the_service_once_after_the_wait(monkeypatch):
    from gateway import session_user

    monkeypatch.setattr(session_user, "OWN_WRITE_WAIT", 0.05)
    monkeypatch.setattr("gateway.main.routes.OWN_WRITE_WAIT", 0.05)
    system = LaggingSystem()
    app, client = _signed_in_client(system)
    app.extensions["hub"].connection_up()
    client.get("/index")
    system.applied = True  # applied, but its event is lost to this process
    reads = system.reads
    assert BADGE.search(client.get("/messages").text).groups() == ("hidden", "0")
    assert system.reads == reads + 1
    for _ in range(3):  # the next pages neither wait again nor ask again
        assert BADGE.search(client.get("/index").text).groups() == ("hidden", "0")
    assert system.reads == reads + 1


def test_opening_messages_with_nothing_unread_waits_for_nothing():
    system = LaggingSystem(unread=0)
    app, client = _signed_in_client(system)
    app.extensions["hub"].connection_up()
    response = client.get("/messages")
    assert response.status_code == 200 and BADGE.search(response.text).groups() == ("hidden", "0")
    with client.session_transaction() as session:
        assert "notifications_mark" not in session


def test_messages_still_renders_when_the_notifications_service_is_down():
    app, client = _signed_in_client(LaggingSystem(notifications_down=True))
    response = client.get("/messages")
    assert response.status_code == 200
    assert BADGE.search(response.text).groups() == ("hidden", "0")
