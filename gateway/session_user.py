"""The signed-in user as Flask-Login sees it, and the server-side session behind it.

Flask's session is a signed cookie: the server cannot take one back, so a copy made
before sign-out would work after it. Each sign-in therefore opens a session in the users
service (``open_session``), and Flask-Login's "alternative token" pattern makes the
cookies carry it: ``get_id()`` is ``"<user id>:<session token>"``, which Flask-Login keeps
in the session cookie and in the remember-me cookie alike. The user loader accepts it only
while the users service says the session is live (``check_session``, which returns the
profile: still one RPC per page); sign-out ends it (``end_session``).
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from flask import current_app
from flask_login import UserMixin

# How long a gateway process trusts that a session it checked is still live, for the
# badge's poll only (pages always ask the users service). The process that signs a session
# out forgets it at once; any other gateway process may keep answering that session's
# polls for up to this many seconds after sign-out, and never its pages.
SESSION_CHECK_TTL = 30.0
SESSION_CHECKS_MAX = 10_000


class SessionUser(UserMixin):
    def __init__(self, profile: dict, session_token: str | None = None):
        self.profile = profile
        self.id = profile["id"]
        self.username = profile["username"]
        self.about_me = profile.get("about_me", "")
        self.session_token = session_token

    def get_id(self) -> str:
        # What the session and remember-me cookies carry: the user and their session.
        return f"{self.id}:{self.session_token}" if self.session_token else str(self.id)

    @property
    def last_seen(self) -> datetime:
        return datetime.fromisoformat(self.profile["last_seen"])

    def seen_within(self, interval: timedelta) -> bool:
        return datetime.now(timezone.utc) - self.last_seen < interval


def parse_session_id(raw) -> tuple[int, str] | None:
    """``(user id, session token)`` from a cookie's ``"<id>:<token>"``; None if malformed
    (including the bare ids of cookies made before sessions were kept server-side)."""
    if not isinstance(raw, str) or raw.count(":") != 1:
        return None
    uid, token = raw.split(":")
    if not uid.isascii() or not uid.isdigit() or len(uid) > 18 or not token:
        return None
    return int(uid), token


class SessionChecks:
    """Sessions this process found live within the last ``ttl`` seconds (bounded)."""

    def __init__(self, ttl: float = SESSION_CHECK_TTL, size: int = SESSION_CHECKS_MAX):
        self.ttl = ttl
        self.size = size
        self._checked: dict[tuple[int, str], float] = {}
        # Sessions this process saw end: a check that was already in flight when one was
        # signed out must not remember it as live afterwards. A token never comes back to
        # life, so these need no expiry; the oldest go past ``size``.
        self._ended: dict[tuple[int, str], None] = {}
        self._lock = threading.Lock()

    def fresh(self, user_id: int, token: str) -> bool:
        checked = self._checked.get((user_id, token))
        return checked is not None and time.monotonic() - checked < self.ttl

    def remember(self, user_id: int, token: str) -> None:
        now = time.monotonic()
        with self._lock:
            if (user_id, token) in self._ended:
                return
            if len(self._checked) >= self.size:
                self._checked = {key: at for key, at in self._checked.items() if now - at < self.ttl}
                if len(self._checked) >= self.size:
                    self._checked.clear()
            self._checked[(user_id, token)] = now

    def forget(self, user_id: int, token: str) -> None:
        with self._lock:
            self._checked.pop((user_id, token), None)
            self._ended[(user_id, token)] = None
            while len(self._ended) > self.size:
                del self._ended[next(iter(self._ended))]


def session_checks() -> SessionChecks:
    return current_app.extensions.setdefault("session_checks", SessionChecks())


def session_lifetime_seconds() -> float:
    """A session lives as long as the longest-lived cookie that may carry it."""
    return current_app.config["REMEMBER_COOKIE_DURATION"].total_seconds()


def session_is_live(user_id: int, token: str) -> bool:
    """For the poll: is this a live session? From this process's recent checks when it can."""
    from gateway.rpc import services

    checks = session_checks()
    if checks.fresh(user_id, token):
        return True
    if services().users.check_session(user_id, token) is None:
        checks.forget(user_id, token)
        return False
    checks.remember(user_id, token)
    return True


def load_user(session_id: str) -> SessionUser | None:
    """Flask-Login's user loader: the user of a live session, with a fresh profile."""
    from gateway.rpc import services

    parsed = parse_session_id(session_id)
    if parsed is None:
        return None
    user_id, token = parsed
    profile = services().users.check_session(user_id, token)
    if profile is None:
        session_checks().forget(user_id, token)
        return None
    session_checks().remember(user_id, token)
    return SessionUser(profile, token)
