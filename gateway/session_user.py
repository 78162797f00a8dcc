"""The signed-in user as Flask-Login sees it: a profile dict fetched from the users service."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask_login import UserMixin


class SessionUser(UserMixin):
    def __init__(self, profile: dict):
        self.profile = profile
        self.id = profile["id"]
        self.username = profile["username"]
        self.about_me = profile.get("about_me", "")

    @property
    def last_seen(self) -> datetime:
        return datetime.fromisoformat(self.profile["last_seen"])

    def seen_within(self, interval: timedelta) -> bool:
        return datetime.now(timezone.utc) - self.last_seen < interval


def load_user(user_id: str) -> SessionUser | None:
    """Flask-Login's user loader: the session holds only the id; the profile is fresh."""
    from gateway.rpc import services
    from kernel.errors import UserNotFound

    try:
        uid = int(user_id)
    except (TypeError, ValueError):
        return None
    try:
        return SessionUser(services().users.get_user(uid))
    except UserNotFound:
        return None
