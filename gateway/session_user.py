"""The signed-in user as Flask-Login sees it, and the server-side session behind it.

Flask's session is a signed cookie: the server cannot take one back, so a copy made
before sign-out would work after it. Each sign-in therefore opens a session in the users
service (``open_session``), and Flask-Login's "alternative token" pattern makes the
cookies carry it: ``get_id()`` is ``"<user id>:<session token>"``, which Flask-Login keeps
in the session cookie and in the remember-me cookie alike. The user loader accepts it only
while the session is live: the users service says so (``check_session``, which returns
the profile), and this process keeps that answer in memory for a while (``gateway.memory``)
and drops it when it hears ``SessionEnded`` for that user; sign-out ends it
(``end_session``).
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from flask import current_app, session
from flask_login import UserMixin

from gateway.rpc import services

# How long a request waits for the event of its user's own write (a profile edit, an
# InboxRead) to reach this process's memory before asking the service instead.
OWN_WRITE_WAIT = 1.0
# How long the session cookie carries the mark of an own write: every connected gateway
# process hears the event within milliseconds; one that was not connected keeps nothing.
OWN_WRITE_MARK_AGE = 10.0


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


def parse_session_id(raw, separator: str = ":") -> tuple[int, str] | None:
    """``(user id, session token)`` from a cookie's ``"<id>:<token>"`` (an API token's
    ``"<id>.<token>"`` with ``separator="."``); None if malformed (including the bare ids of
    cookies made before sessions were kept server-side)."""
    if not isinstance(raw, str) or raw.count(separator) != 1:
        return None
    uid, token = raw.split(separator)
    if not uid.isascii() or not uid.isdigit() or len(uid) > 18 or not token:
        return None
    return int(uid), token


def session_lifetime_seconds() -> float:
    """A session lives as long as the longest-lived cookie that may carry it."""
    return current_app.config["REMEMBER_COOKIE_DURATION"].total_seconds()


def known():
    return current_app.extensions["known"]


def sign_out(user_id: int, token: str) -> None:
    """End the session ``token`` of the user in the users service (a browser's sign-out,
    a revoked API token), and answer once this process has heard its ``SessionEnded``:
    every gateway process has then dropped it (``Known.end_session``)."""
    known().end_session(user_id, services().users.end_session(user_id, token), OWN_WRITE_WAIT)


def session_is_live(user_id: int, token: str) -> bool:
    """For the poll: is this a live session? From this process's memory when it can."""
    return known().live_session(user_id, token, profile_too=False) is not None


def remember_own_write(kind: str, mark) -> None:
    """The signed-in user just wrote (``kind``: "profile" with a users log position,
    "notifications" with the InboxRead's time): the next pages, in whichever gateway
    process, show nothing older than it (``honour_own_writes``)."""
    if mark:
        session[f"{kind}_mark"] = [mark, time.time()]


def honour_own_writes(user_id: int) -> None:
    """Before a page reads the user's profile or badge from memory: if their session
    carries a recent own write that this process has not heard of yet, wait for its event
    (``OWN_WRITE_WAIT`` at most, then the memory forgets them and the service answers)."""
    for kind in ("profile", "notifications"):
        carried = session.get(f"{kind}_mark")
        if not carried:
            continue
        memory = getattr(known(), "profiles" if kind == "profile" else "notifications")
        try:
            mark, made_at = carried
            if time.time() - made_at < OWN_WRITE_MARK_AGE:
                # Kept until it is old, not dropped once heard here: the browser's next
                # request may go to another process.
                heard = memory.mark(user_id)
                if heard is None or heard < mark:
                    known().await_event(memory, user_id, mark, OWN_WRITE_WAIT)
                continue
        except (TypeError, ValueError):
            pass  # a mark this code did not write: dropped
        session.pop(f"{kind}_mark", None)


def load_user(session_id: str) -> SessionUser | None:
    """Flask-Login's user loader: the user of a live session, with their profile (from
    this process's memory when it is sure of it; ``gateway.memory``)."""
    parsed = parse_session_id(session_id)
    if parsed is None:
        return None
    user_id, token = parsed
    honour_own_writes(user_id)
    profile = known().live_session(user_id, token)
    return SessionUser(profile, token) if profile is not None else None
