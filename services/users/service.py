"""The users nameko service: RPC entry points only; the rules live in ``accounts``, the
storage (tables and event log) in ``storage``. Its events go out through the outbox relay."""
from eventlet import tpool
from werkzeug.security import check_password_hash, generate_password_hash

from kernel.db import Database
from kernel.health import HealthCheck
from kernel.metrics import Metrics
from kernel.outbox import EventSource, Outbox
from kernel.rpc import rpc
from services.users import accounts
from services.users.storage import STORAGE


def _hash_off_loop(password: str) -> str:
    # scrypt takes tens of milliseconds of CPU; in a real thread it does not stall
    # every other green thread of the service while it runs.
    return tpool.execute(generate_password_hash, password)


def _check_off_loop(password_hash: str, password: str) -> bool:
    return tpool.execute(check_password_hash, password_hash, password)


class UsersService(HealthCheck, EventSource):
    name = "users"

    db = Database("USERS_DATABASE_URL", storage=STORAGE)
    outbox = Outbox("db")
    metrics = Metrics()

    @rpc
    def register(self, username, email, password):
        profile = accounts.register(self.db, username, email, password, hasher=_hash_off_loop)
        self.outbox.wake()
        return profile

    @rpc
    def authenticate(self, username, password):
        return accounts.authenticate(self.db, username, password, checker=_check_off_loop)

    @rpc
    def get_user(self, user_id):
        return accounts.get_user(self.db, user_id)

    @rpc
    def get_user_by_username(self, username):
        return accounts.get_user_by_username(self.db, username)

    @rpc
    def get_users(self, user_ids):
        return accounts.get_users(self.db, user_ids)

    @rpc
    def list_users(self, page=1, q=""):
        """``/explore``: one page of public profiles, newest first, names starting with ``q``."""
        return accounts.list_users(self.db, page, q)

    @rpc
    def update_profile(self, user_id, username, about_me):
        profile = accounts.update_profile(self.db, user_id, username, about_me)
        self.outbox.wake()  # woken after every edit: one that changed nothing costs an empty relay round
        return profile

    @rpc
    def record_seen(self, user_id):
        return accounts.record_seen(self.db, user_id)

    @rpc
    def open_session(self, user_id, lifetime_seconds):
        return accounts.open_session(self.db, user_id, lifetime_seconds)

    @rpc
    def check_session(self, user_id, token):
        return accounts.check_session(self.db, user_id, token)

    @rpc
    def end_session(self, user_id, token):
        ended = accounts.end_session(self.db, user_id, token)
        if ended:
            self.outbox.wake()
        return ended
