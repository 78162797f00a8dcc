"""Account rules as plain functions over the service's storage (``storage.STORAGE``: its
``session`` for the ORM, ``append`` for the event log): the users service's core.

Registering and editing a profile append ``UserRegistered``/``ProfileChanged`` in the same
transaction as the row they describe; the outbox relay publishes them after commit."""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from kernel.clock import as_utc, utcnow
from kernel.events import ProfileChanged, SessionEnded, UserRegistered
from kernel.logs import clip
from kernel.errors import EmailTaken, InvalidCredentials, UsernameTaken, UserNotFound, ValidationFailed, is_whole
from services.users.models import ABOUT_ME_MAX, EMAIL_MAX, USERNAME_MAX, User, UserSession

# Usernames appear in URLs (/user/<username>): keep them to characters that need no escaping.
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
PASSWORD_MIN = 8
PASSWORD_MAX = 128

# Checked against when the username is unknown, so a wrong username costs as much time
# as a wrong password and response times do not reveal which accounts exist.
_DUMMY_HASH = generate_password_hash("not a real password")


def public_profile(user: User) -> dict:
    """What other services and pages may see of a user: never the email or the hash."""
    return {
        "id": user.id,
        "username": user.username,
        "about_me": user.about_me or "",
        "last_seen": as_utc(user.last_seen).isoformat(),
        "created_at": as_utc(user.created_at).isoformat(),
        # Gravatar's key for the address, as the tutorial's pages carry it in every avatar
        # URL: the MD5 of the trimmed, lower-cased email (not the email itself).
        "avatar": hashlib.md5(user.email.strip().lower().encode()).hexdigest(),
    }


def clean_username(username) -> str:
    if not isinstance(username, str) or not username.strip():
        raise ValidationFailed("Please enter a username.", "username")
    username = username.strip()
    if len(username) > USERNAME_MAX:
        raise ValidationFailed(f"Usernames are at most {USERNAME_MAX} characters.", "username")
    if not USERNAME_PATTERN.match(username):
        raise ValidationFailed(
            "Usernames may contain only letters, digits, dots, dashes and underscores.", "username"
        )
    return username


def clean_email(email) -> str:
    if not isinstance(email, str) or not email.strip():
        raise ValidationFailed("Please enter an email address.", "email")
    try:
        # No DNS lookups: registration must not depend on the network.
        normalised = validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        raise ValidationFailed("Invalid email address.", "email") from None
    if len(normalised) > EMAIL_MAX:
        raise ValidationFailed(f"Email addresses are at most {EMAIL_MAX} characters.", "email")
    return normalised.lower()


def clean_password(password) -> str:
    if not isinstance(password, str) or not password:
        raise ValidationFailed("Please enter a password.", "password")
    if len(password) < PASSWORD_MIN:
        raise ValidationFailed(f"Passwords are at least {PASSWORD_MIN} characters.", "password")
    if len(password) > PASSWORD_MAX:
        raise ValidationFailed(f"Passwords are at most {PASSWORD_MAX} characters.", "password")
    return password


def clean_about_me(about_me) -> str:
    if about_me is None:
        return ""
    if not isinstance(about_me, str):
        raise ValidationFailed("About me must be text.", "about_me")
    if "\x00" in about_me:
        # PostgreSQL cannot store NUL in text; refuse it rather than fail on commit.
        raise ValidationFailed("About me contains a character that is not allowed.", "about_me")
    about_me = about_me.strip()
    if len(about_me) > ABOUT_ME_MAX:
        raise ValidationFailed(f"About me is at most {ABOUT_ME_MAX} characters.", "about_me")
    return about_me


def _find_by_username(session: Session, username: str) -> User | None:
    # A string that could never be a username (too long, NUL, slashes ...) names nobody;
    # checking first also keeps such strings out of the database driver.
    if len(username) > USERNAME_MAX or not USERNAME_PATTERN.match(username):
        return None
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def _username_taken(session: Session, username: str, except_id: int | None = None) -> bool:
    user = _find_by_username(session, username)
    return user is not None and user.id != except_id


def register(storage, username, email, password, hasher=generate_password_hash) -> dict:
    session = storage.session
    username = clean_username(username)
    email = clean_email(email)
    password = clean_password(password)
    if _username_taken(session, username):
        raise UsernameTaken("Please use a different username.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise EmailTaken("Please use a different email address.")
    now = utcnow()
    user = User(
        username=username,
        email=email,
        password_hash=hasher(password),
        about_me="",
        last_seen=now,
        created_at=now,
    )
    session.add(user)
    try:
        session.flush()  # gives the id the event needs
    except IntegrityError:
        # Another registration with the same name or email committed first.
        session.rollback()
        if _username_taken(session, username):
            raise UsernameTaken("Please use a different username.") from None
        raise EmailTaken("Please use a different email address.") from None
    # Logged in the row's transaction: both commit or neither. One registration is never
    # two events: repeated (a redelivered call, a resubmitted form), it finds the name taken.
    storage.append(UserRegistered(user_id=user.id, username=username, about_me="", occurred_at=now))
    storage.commit()
    return public_profile(user)


def authenticate(storage, username, password, checker=check_password_hash) -> dict:
    """The user's profile if the password matches; ``InvalidCredentials`` otherwise."""
    session = storage.session
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidCredentials("Invalid username or password")
    user = _find_by_username(session, username.strip()) if username.strip() else None
    # The password is checked even for an unknown user (against _DUMMY_HASH): same time.
    if not checker(user.password_hash if user else _DUMMY_HASH, password) or user is None:
        raise InvalidCredentials("Invalid username or password")
    user.last_seen = utcnow()
    session.commit()
    return public_profile(user)


def _get(session: Session, user_id, lock: bool = False) -> User:
    if not is_whole(user_id):
        raise UserNotFound(f"No user with id {clip(repr(user_id))}.")
    user = session.get(User, user_id, with_for_update=lock, populate_existing=lock)
    if user is None:
        raise UserNotFound(f"No user with id {user_id}.")
    return user


def get_user(storage, user_id) -> dict:
    return public_profile(_get(storage.session, user_id))


def get_user_by_username(storage, username) -> dict:
    user = _find_by_username(storage.session, username.strip()) if isinstance(username, str) else None
    if user is None:
        raise UserNotFound(f"User {clip(username)} not found.")
    return public_profile(user)


def get_users(storage, user_ids) -> dict[str, dict]:
    """Profiles of many users in one query, keyed by id as a string (JSON keys are strings).

    Unknown ids are left out, so a caller can tell who no longer exists.
    """
    ids = sorted({i for i in user_ids if is_whole(i)})
    if not ids:
        return {}
    users = storage.session.scalars(select(User).where(User.id.in_(ids)))
    return {str(user.id): public_profile(user) for user in users}


# Finding people (``/explore``): 25 a page, like the inbox. A page is found by OFFSET and one
# row more than it shows, which says whether a next page exists: no COUNT(*) of the table
# per page. Pages end at 2**31 - 1 (the gateway's PAGE_MAX), so an offset stays far inside
# 64 bits.
USERS_PER_PAGE = 25
PAGE_MAX = 2**31 - 1


def clean_name_prefix(q) -> str:
    """The ``q`` of a search: text of at most USERNAME_MAX characters, spaces around it
    ignored; "" (or None) searches nothing out."""
    if q is None:
        return ""
    if not isinstance(q, str):
        raise ValidationFailed("The search must be text.", "q")
    q = q.strip()
    if len(q) > USERNAME_MAX:
        raise ValidationFailed(f"Searches are at most {USERNAME_MAX} characters, as usernames are.", "q")
    return q


def list_users(storage, page=1, q="", per_page: int = USERS_PER_PAGE) -> dict:
    """One page of public profiles, newest account first, whose username starts with ``q``
    ignoring case. ``has_next`` says whether a later page has anyone; a page past the end
    has no users (the caller decides whether that is an error)."""
    if not is_whole(page) or not 1 <= page <= PAGE_MAX:
        raise ValidationFailed(f"page must be a whole number from 1 to {PAGE_MAX}.", "page")
    q = clean_name_prefix(q)
    # A prefix with a character no username has (``%``, a space, NUL ...) names nobody:
    # answered without a query, which also keeps such text away from the database driver.
    names_nobody = q and not USERNAME_PATTERN.match(q)
    users = [] if names_nobody else storage.newest_users(q, (page - 1) * per_page, per_page + 1)
    return {
        "users": [public_profile(user) for user in users[:per_page]],
        "page": page,
        "per_page": per_page,
        "has_prev": page > 1,
        "has_next": len(users) > per_page,
    }


def update_profile(storage, user_id, username, about_me) -> dict:
    session = storage.session
    # Locked (PostgreSQL) until commit: the event carries the whole profile, so two edits
    # at once must not both start from the same row (the second would log the first's
    # field as it was before, and the log would no longer fold to the table).
    user = _get(session, user_id, lock=True)
    username = clean_username(username)
    about_me = clean_about_me(about_me)
    if _username_taken(session, username, except_id=user.id):
        raise UsernameTaken("Please use a different username.")
    # Only a real change is logged (the log holds facts): an edit saved unchanged, or
    # repeated, appends nothing.
    position = 0
    if (username, about_me) != (user.username, user.about_me):
        user.username = username
        user.about_me = about_me
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            raise UsernameTaken("Please use a different username.") from None
        position = storage.append(ProfileChanged(user_id=user.id, username=username, about_me=about_me)).position
    storage.commit()
    # ``position``: where the edit's event sits in the users log (0: nothing changed), so
    # the caller can wait until the change is heard before showing a page.
    return {**public_profile(user), "position": position}


def record_seen(storage, user_id) -> dict:
    session = storage.session
    user = _get(session, user_id)
    user.last_seen = utcnow()
    session.commit()
    return public_profile(user)


# Sessions: one row per sign-in (see ``UserSession``). A token is 256 random bits; only its
# SHA-256 is stored and looked up, so neither the table nor a lookup's timing gives away a
# usable token (a lookup by hash is an index probe on a value the caller cannot steer).
SESSION_TOKEN_MAX = 100
SESSION_LIFETIME_MAX = timedelta(days=366)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(storage, user_id, lifetime_seconds) -> dict:
    """Start a session for ``user_id``, valid for ``lifetime_seconds`` unless ended first.

    Returns ``{"token", "expires_at"}``; the token is shown this once. The user's other
    sessions are left alone (another browser stays signed in), but expired ones are
    cleared away here, so the table holds only live sessions and a few dead ones.
    """
    session = storage.session
    user = _get(session, user_id)
    if isinstance(lifetime_seconds, bool) or not isinstance(lifetime_seconds, (int, float)) or lifetime_seconds <= 0:
        raise ValidationFailed("lifetime_seconds must be a positive number of seconds.")
    now = utcnow()
    expires_at = now + min(timedelta(seconds=lifetime_seconds), SESSION_LIFETIME_MAX)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id, UserSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(UserSession(user_id=user.id, token_hash=_token_hash(token), created_at=now, expires_at=expires_at))
    session.commit()
    return {"token": token, "expires_at": expires_at.isoformat()}


def _live_session(session: Session, user_id, token) -> UserSession | None:
    if not is_whole(user_id) or not isinstance(token, str) or not 0 < len(token) <= SESSION_TOKEN_MAX:
        return None
    row = session.scalar(select(UserSession).where(UserSession.token_hash == _token_hash(token)))
    if row is None or row.user_id != user_id or as_utc(row.expires_at) <= utcnow():
        return None
    return row


def check_session(storage, user_id, token) -> dict | None:
    """The user's profile if ``token`` is a live session of ``user_id``, else None; with
    ``session_expires_at`` (ISO), so a gateway trusting the answer for a while never
    trusts it past the session's end (an API token lives an hour, not weeks).

    None, not an error, for a session that ended or never was: a signed-out cookie is an
    everyday thing, not worth an error in the log.
    """
    session = storage.session
    row = _live_session(session, user_id, token)
    if row is None:
        return None
    user = session.get(User, row.user_id)
    if user is None:
        return None
    return {**public_profile(user), "session_expires_at": as_utc(row.expires_at).isoformat()}


def end_session(storage, user_id, token) -> int:
    """End a session (sign-out): the position of its ``SessionEnded`` in the users log, or
    0 if it was not live. Ending it again is harmless.

    Logs ``SessionEnded`` in the same transaction: every gateway that trusts this user's
    sessions from memory hears it and checks them with this service again (the one that
    signed the user out waits for it: ``gateway/auth/routes.py``, ``logout``)."""
    session = storage.session
    row = _live_session(session, user_id, token)
    if row is None:
        return 0
    session.delete(row)
    position = storage.append(SessionEnded(user_id=row.user_id)).position
    storage.commit()
    return position
