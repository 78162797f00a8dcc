"""The messages nameko service: RPC entry points only; the rules are in ``commands``, the
storage (event log and inbox) in ``storage``."""

from kernel.calls import call_with_timeout
from kernel.db import Database
from kernel.errors import ValidationFailed
from kernel.health import HealthCheck
from kernel.metrics import Metrics
from kernel.outbox import EventSource, Outbox
from kernel.rpc import RpcProxy, rpc
from services.messages import commands
from services.messages.storage import STORAGE

KNOWN_USERS: set[int] = set()


def _page(page) -> int:
    # At most 2**31 - 1 (the gateway's PAGE_MAX): a larger page is past any inbox's end,
    # and its offset must never reach the database as an integer it cannot hold.
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= 2**31 - 1:
        raise ValidationFailed("page must be a whole number from 1 to 2147483647.", "page")
    return page


class MessagesService(HealthCheck, EventSource):
    name = "messages"

    db = Database("MESSAGES_DATABASE_URL", storage=STORAGE)
    outbox = Outbox("db")
    users = RpcProxy("users")
    metrics = Metrics()

    def _user_exists(self, user_id: int) -> bool:
        # Accounts are never deleted, so a user once seen to exist is remembered (per
        # process) and later sends to them skip the round trip to the users service.
        if user_id in KNOWN_USERS:
            return True
        exists = str(user_id) in call_with_timeout(self.users.get_users, [user_id])
        if exists:
            KNOWN_USERS.add(user_id)
        return exists

    @rpc
    def send_message(self, sender_id, recipient_id, body, idempotency_key=None):
        """Send once: ``idempotency_key`` is required, made by the caller once per user
        action (the gateway's form carries one). A request redelivered after a crash, or
        repeated after a timeout, returns the first send's event and appends nothing."""
        if idempotency_key is None:
            raise ValidationFailed("idempotency_key is required: make one per action (a UUID) and "
                                   "pass the same one when repeating it.", "idempotency_key")
        event = commands.send_message(self.db, sender_id, recipient_id, body, recipient_exists=self._user_exists,
                                      idempotency_key=idempotency_key)
        self.outbox.wake()
        return event

    @rpc
    def mark_inbox_read(self, user_id):
        event = commands.mark_inbox_read(self.db, user_id)
        self.outbox.wake()
        return event

    @rpc
    def inbox(self, user_id, page=1):
        return self.db.page_of(user_id, _page(page))

    @rpc
    def open_inbox(self, user_id, page=1):
        """The Messages page in one call: marks the inbox read, then one page of it.

        An ``InboxRead`` is appended only if something in the inbox is unread (the log
        holds facts, not page views); ``read`` is that event, or None. ``read_after`` is
        the last position read before this visit: the page's messages past it are new."""
        page = _page(page)
        read_after, read = commands.read_inbox(self.db, user_id)
        if read is not None:
            self.outbox.wake()
        return {**self.db.page_of(user_id, page), "read": read, "read_after": read_after}

    @rpc
    def message(self, user_id, message_id):
        """One message (``id`` is its position in the log), for its sender or its recipient
        only: None for anyone else, and for ids that name no message."""
        ids = (user_id, message_id)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 2**63 - 1 for i in ids):
            return None
        return self.db.message_for(user_id, message_id)

    @rpc
    def unread_count(self, user_id):
        return self.db.unread_count(user_id)

    @rpc
    def unread_counts(self, user_ids):
        ids = [i for i in user_ids if isinstance(i, int) and not isinstance(i, bool)] if isinstance(user_ids, list) else []
        return self.db.unread_counts(ids)
