"""Routes of the main blueprint."""
import math
import uuid
from datetime import datetime, timedelta, timezone

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import _, format_datetime, format_timedelta
from markupsafe import Markup, escape
from werkzeug.exceptions import Unauthorized
from flask_login import current_user, login_required

from gateway.errors import RETRY_AFTER, UNAVAILABLE
from gateway.avatars import avatar_url
from gateway.forms import show_service_error
from gateway.main import bp
from gateway.main.forms import EditProfileForm, MessageForm
from gateway.rpc import services
from gateway.session_user import (OWN_WRITE_WAIT, SessionUser, honour_own_writes, known, parse_session_id,
                                  remember_own_write, session_is_live)
from gateway.stream import open_stream
from kernel.clock import as_utc
from kernel.errors import RecipientNotFound, UserNotFound, ValidationFailed
from kernel.events import IDEMPOTENCY_KEY_PATTERN

# The tutorial writes last_seen on every request; once a minute says the same for a
# fraction of the writes.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@bp.before_app_request
def record_last_seen():
    # The badge's background poll is not the person doing anything (and must stay cheap);
    # the API reads no cookie (gateway.api).
    if request.endpoint in ("main.notifications", "main.notification_stream") or request.blueprint == "api":
        return
    if current_user.is_authenticated and not current_user.seen_within(LAST_SEEN_RESOLUTION):
        try:
            token = known().profiles.reading()
            known().seen(services().users.record_seen(current_user.id), token)
        except UserNotFound:
            pass  # the account is gone; the next request's user loader signs them out


@bp.route("/")
@bp.route("/index")
@login_required
def index():
    return render_template("index.html", title=_("Home"))


def _profile_or_404(username: str) -> dict:
    try:
        return known().profile_by_name(username)
    except UserNotFound:
        abort(404)


@bp.route("/user/<username>")
@login_required
def user(username):
    profile = _profile_or_404(username)
    return render_template("user.html", user=SessionUser(profile), title=profile["username"])


@bp.route("/edit_profile", methods=["GET", "POST"])
@login_required
def edit_profile():
    form = EditProfileForm()
    if form.validate_on_submit():
        try:
            updated = services().users.update_profile(current_user.id, form.username.data, form.about_me.data)
        except ValidationFailed as error:
            show_service_error(form, error)
        else:
            # Your own write: this page and the next ones (in any gateway process) show
            # the new name once this process has heard the change's event.
            if updated["position"]:
                known().await_event(known().profiles, current_user.id, updated["position"], OWN_WRITE_WAIT)
                remember_own_write("profile", updated["position"])
            flash(_("Your changes have been saved."))
            return redirect(url_for("main.edit_profile"))
    elif request.method == "GET":
        form.username.data = current_user.username
        form.about_me.data = current_user.about_me
    return render_template("edit_profile.html", title=_("Edit Profile"), form=form)


@bp.route("/send_message/<recipient>", methods=["GET", "POST"])
@login_required
def send_message(recipient):
    user = _profile_or_404(recipient)
    form = MessageForm()
    key = form.idempotency_key.data
    if key and not (isinstance(key, str) and IDEMPOTENCY_KEY_PATTERN.fullmatch(key)):
        abort(400, description=_("The form is damaged. Please open it again."))
    if form.validate_on_submit():
        try:
            services().messages.send_message(current_user.id, user["id"], form.message.data,
                                             idempotency_key=key or uuid.uuid4().hex)
        except RecipientNotFound:
            abort(404)
        except ValidationFailed as error:
            show_service_error(form, error)
            # What is sent from this form now is another action: a new key (the old one
            # may name a message already sent, if that is what the service refused).
            key = None
        else:
            flash(_("Your message has been sent."))
            return redirect(url_for("main.user", username=user["username"]))
    if not key:
        form.idempotency_key.data = uuid.uuid4().hex
    return render_template("send_message.html", title=_("Send Message"), form=form, recipient=user["username"])


# The highest page a visitor's request reaches the messages service with (its ``inbox``
# refuses more too): 25 messages a page, so 53 billion messages. A page above it is past
# the end of any inbox: a 404 like any page past the end, without asking a service, so
# its offset never reaches a database (SQLite's integers end at 2**63 - 1). A number of
# more than PAGE_DIGITS_MAX digits is no page number at all: a 400 (Python would not
# even read one of more than 4,300 digits).
PAGE_MAX = 2**31 - 1
PAGE_DIGITS_MAX = 100


def _page_argument() -> int:
    """``?page=``, or a 400 for what is not a page number; pages past any end are 404."""
    raw = request.args.get("page", "1")
    digits = raw.lstrip("0")
    if not raw.isascii() or not raw.isdigit() or not digits:
        abort(400, description=_("The page number must be a whole number, 1 or more."))
    if len(digits) > PAGE_DIGITS_MAX:
        abort(400, description=_("That is not a page number: it has more than %(n)d digits.", n=PAGE_DIGITS_MAX))
    page = int(digits)
    if page > PAGE_MAX:
        abort(404)
    return page


@bp.route("/messages")
@login_required
def messages():
    """The inbox: one RPC (``open_inbox``: marks it read if anything was unread, and the
    page), or none when nothing is unread and this process keeps the page
    (``Known.open_inbox``); the senders' names from memory. After an ``InboxRead`` the page waits for its
    notification change to reach this process, so the badge it draws is 0 (your own
    write); the session carries the mark to the next pages, served by any process."""
    page = _page_argument()
    inbox = known().open_inbox(current_user.id, page)
    if inbox["read"] is not None:
        read_at = datetime.fromisoformat(inbox["read"]["occurred_at"]).timestamp()
        known().await_event(known().notifications, current_user.id, read_at, OWN_WRITE_WAIT)
        remember_own_write("notifications", read_at)
    if page > inbox["pages"]:
        abort(404)
    senders = _senders(known().profiles_of({m["sender_id"] for m in inbox["messages"]}))
    now = datetime.now(timezone.utc)
    said = Markup(escape(_("%(user)s said %(when)s")))  # translated once a page, not once a message
    cards = []  # the answer may be this process's memory of it: read, never changed
    for message in inbox["messages"]:
        sent_at = as_utc(datetime.fromisoformat(message["sent_at"]))
        when = Markup('<time datetime="%s" title="%s">%s</time>') % (
            message["sent_at"], format_datetime(sent_at, "medium"), format_timedelta(sent_at - now, add_direction=True))
        sender = senders.get(message["sender_id"])
        cards.append({"body": message["body"], "sender": sender, "new": message["id"] > inbox["read_after"],
                      "line": said % {"user": sender["link"], "when": when} if sender else when})
    next_url = url_for("main.messages", page=page + 1) if inbox["has_next"] else None
    prev_url = url_for("main.messages", page=page - 1) if inbox["has_prev"] else None
    return render_template(
        "messages.html", title=_("Messages"), messages=cards, next_url=next_url, prev_url=prev_url)


def _senders(profiles: dict[int, dict]) -> dict[int, dict]:
    """What a message card shows of its sender, made once per sender on the page."""
    shown = {}
    for user_id, profile in profiles.items():
        url = url_for("main.user", username=profile["username"])
        shown[user_id] = {"url": url, "avatar": avatar_url(profile, 36),
                          "link": Markup('<a href="%s">%s</a>') % (url, profile["username"]),
                          "reply": url_for("main.send_message", recipient=profile["username"])}
    return shown


@bp.route("/avatar/<digest>.svg")
def avatar(digest):
    """The local identicon (``AVATARS=local``): public, like Gravatar's."""
    from gateway.avatars import identicon

    return identicon(digest, request.args.get("s"))


@bp.route("/notifications")
def notifications():
    """The tutorial's polling endpoint: JSON [{name, data, timestamp}] newer than ``since``.

    Anonymous callers get 401 JSON (not a redirect: a script is asking). ``since`` is a
    Unix time; absent means 0; anything else that is not a finite number 0 or more
    (``abc``, ``nan``, ``inf``, empty) is a 400 with a JSON error, never silently 0,
    because a client sending it has a bug worth seeing. A service (or its database) that
    does not answer is a 503 with a JSON error, which the page's poll skips.
    """
    try:
        return _notifications()
    except UNAVAILABLE as exc:
        current_app.logger.warning("poll: %s", exc)
        response = jsonify(error=_("Notifications are unavailable right now; please try again shortly."))
        return response, 503, {"Retry-After": str(RETRY_AFTER)}


def _notifications():
    user_id = _session_user_id()
    if user_id is None:
        return jsonify(error=_("Please log in to access this page.")), 401
    since = _unix_time(request.args.get("since", "0"))
    if since is None:
        return jsonify(error=_("since must be a Unix time: a finite number, 0 or more.")), 400
    return jsonify(_rows_since(user_id, since))


def _unix_time(raw: str) -> float | None:
    """A finite number, 0 or more; None for anything else (``abc``, ``nan``, ``inf``, empty)."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _rows_since(user_id: int, since: float) -> list[dict]:
    """The poll's read: the user's rows newer than ``since``, oldest first (from this
    process's memory of their rows when it can: ``gateway.memory``)."""
    honour_own_writes(user_id)
    return known().rows_since(user_id, since)


@bp.route("/notifications/stream")
def notification_stream():
    """The poll's rows pushed as Server-Sent Events (README, "The push stream").

    ``id:`` is each row's timestamp, ``data:`` the row as the poll gives it. It starts from
    ``Last-Event-ID``, else ``?since=``, else 0: first the rows newer than that (the
    poll's read), then each change as it commits. Same errors as the poll: 401 JSON for an
    anonymous caller, 400 for a start point that is not a Unix time, 503 when the
    notifications service cannot answer the first read (the page then polls).
    """
    user_id, token = _session_ids()
    if user_id is None:
        return jsonify(error=_("Please log in to access this page.")), 401
    raw = request.headers.get("Last-Event-ID") or request.args.get("since", "0")
    since = _unix_time(raw)
    if since is None:
        return jsonify(error=_("since must be a Unix time: a finite number, 0 or more.")), 400
    try:
        return open_stream(user_id, since, token)
    except Unauthorized:  # its session ended since it was checked
        return jsonify(error=_("Please log in to access this page.")), 401
    except UNAVAILABLE as exc:
        current_app.logger.warning("stream: %s", exc)
        response = jsonify(error=_("Notifications are unavailable right now; please try again shortly."))
        return response, 503, {"Retry-After": str(RETRY_AFTER)}


def _session_user_id() -> int | None:
    """The signed-in user's id for the poll, without fetching their profile.

    The signed session cookie names the user and their server-side session; asking the
    users service for the whole profile on every poll (what ``current_user`` does) would
    double the poll's cost. The session must still be live (not signed out): this process
    trusts a session it checked within ``SESSION_CHECK_TTL`` seconds, and asks the users
    service otherwise (see ``gateway.session_user``).
    Without a session id (a "remember me" cookie only), Flask-Login does the full load.
    """
    return _session_ids()[0]


def _session_ids() -> tuple[int | None, str | None]:
    """``_session_user_id``'s user id, with the session token it was checked with (None
    when the user came in by a "remember me" cookie only)."""
    raw = session.get("_user_id")
    if raw is not None:
        parsed = parse_session_id(raw)
        if parsed is None or not session_is_live(*parsed):
            return None, None
        return parsed
    return (current_user.id if current_user.is_authenticated else None), None


# A search is at most as long as a username (services/users/models.py, USERNAME_MAX).
SEARCH_MAX = 64


@bp.route("/explore")
@login_required
def explore():
    """Finding people: everyone, newest first, a page at a time, or those whose username
    starts with ``?q=`` (ignoring case; any text, matched literally). One RPC
    (``list_users``), whose profiles this process then keeps. ``?page=`` as on Messages
    (400 for what is not a page number); a page past the end is a 404, the first page
    never is (it says nobody was found)."""
    page = _page_argument()
    q = request.args.get("q", "").strip()
    if len(q) > SEARCH_MAX:
        abort(400, description=_("A search is at most %(n)d characters long.", n=SEARCH_MAX))
    token = known().profiles.reading()
    try:
        found = services().users.list_users(page, q)
    except ValidationFailed as error:
        abort(400, description=error.message)
    if page > 1 and not found["users"]:
        abort(404)
    for profile in found["users"]:
        known().seen(profile, token)
    query = {"q": q} if q else {}
    next_url = url_for("main.explore", page=page + 1, **query) if found["has_next"] else None
    prev_url = url_for("main.explore", page=page - 1, **query) if found["has_prev"] else None
    return render_template("explore.html", title=_("Explore"), users=found["users"], q=q, search_max=SEARCH_MAX,
                           next_url=next_url, prev_url=prev_url)
