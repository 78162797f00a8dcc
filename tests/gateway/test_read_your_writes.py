"""Opening Messages shows the badge at 0 even when the notifications projection has not yet
applied the InboxRead the page just appended (the gateway waits for it, briefly)."""
import re
from datetime import datetime, timezone
from types import SimpleNamespace

from gateway import create_app
from gateway.settings import GatewaySettings
from kernel.rpc_pool import ServiceUnavailable

BADGE = re.compile(r'id="message_count"[^>]*style="visibility: (\w+);">(\d+)<')


class LaggingSystem:
    """Services as the gateway sees them, with a projection three positions behind the
    log that catches up one position per look (as it would within milliseconds)."""

    def __init__(self, notifications_down=False):
        self.log_head = 6
        self.projected = 4
        self.looks = 0
        profile = {"id": 1, "username": "john", "about_me": "", "last_seen": datetime.now(timezone.utc).isoformat()}
        self.users = SimpleNamespace(get_user=lambda uid: profile, get_users=lambda ids: {}, record_seen=lambda uid: None,
                                     check_session=lambda uid, token: profile)
        self.messages = SimpleNamespace(mark_inbox_read=self._mark_read, inbox=lambda uid, page: {
            "messages": [], "pages": 1, "has_next": False, "has_prev": False})
        if notifications_down:
            def down(*args):
                raise ServiceUnavailable("notifications did not answer")
            self.notifications = SimpleNamespace(position=down, unread_message_count=down)
        else:
            self.notifications = SimpleNamespace(position=self._position, unread_message_count=self._unread)

    def _mark_read(self, user_id):
        self.log_head += 1
        return {"event_type": "InboxRead", "position": self.log_head, "user_id": user_id}

    def _position(self):
        self.looks += 1
        self.projected = min(self.projected + 1, self.log_head)
        return self.projected

    def _unread(self, user_id):
        return 0 if self.projected >= 7 else 2  # two unread until the InboxRead at 7 is applied

    def stop(self):
        pass


def _signed_in_client(system):
    app = create_app(GatewaySettings(secret_key="read-your-writes", amqp_uri="amqp://unused//"), rpc=system)
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = "1:a-session-token"
        session["_fresh"] = True
    return client


def test_opening_messages_waits_for_the_projection_and_shows_no_unread_badge():
    system = LaggingSystem()
    response = _signed_in_client(system).get("/messages")
    assert response.status_code == 200
    assert BADGE.search(response.text).groups() == ("hidden", "0")
    assert system.projected == 7 and system.looks == 3


def test_messages_still_renders_when_the_notifications_service_is_down():
    response = _signed_in_client(LaggingSystem(notifications_down=True)).get("/messages")
    assert response.status_code == 200
    assert BADGE.search(response.text).groups() == ("hidden", "0")
