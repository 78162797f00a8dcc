"""Routes of the token API.

A token is a server-side session of the users service, like a browser's sign-in (only a
SHA-256 hash of it is stored; it expires; ``end_session`` revokes it and its
``SessionEnded`` reaches every gateway process), opened for ``API_TOKEN_LIFETIME``
seconds. The client gets ``"<user id>.<session token>"``: the user is read from it
without a cookie, and the session is checked as the pages check theirs
(``Known.live_session``, from memory while nothing says otherwise). Only the
``Authorization`` header is read: a browser's cookies never authorise a call here, and a
token cannot become a cookie (those are signed with the gateway's secret key).

The endpoints reuse what the pages use; errors are JSON (``gateway.errors.api_error``).
"""
import uuid
from datetime import datetime

from flask import abort, current_app, g, jsonify, request, url_for
from flask_babel import _
from werkzeug.exceptions import Unauthorized

from gateway.api import bp
from gateway.avatars import avatar_url
from gateway.main.forms import MESSAGE_MAX, as_the_service_counts
from gateway.main.routes import _page_argument, _rows_since, _unix_time
from gateway.rpc import services
from gateway.session_user import OWN_WRITE_WAIT, known, parse_session_id, sign_out
from gateway.stream import open_stream
from kernel.errors import InvalidCredentials, UserNotFound, ValidationFailed
from kernel.events import IDEMPOTENCY_KEY_PATTERN

REALM = "microblog"


class ApiUnauthorized(Unauthorized):
    """A 401 that names the scheme to use: ``Basic`` for tokens, ``Bearer`` for the rest."""

    def __init__(self, scheme: str, description=None):
        super().__init__(description)
        self.scheme = scheme

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", f'{self.scheme} realm="{REALM}"')]


@bp.before_request
def authenticate():
    """Every endpoint but ``POST /api/tokens`` needs ``Authorization: Bearer <token>``."""
    if request.endpoint == "api.issue_token":
        return
    auth = request.authorization
    parsed = parse_session_id(auth.token, separator=".") if auth is not None and auth.type == "bearer" else None
    if parsed is None or known().live_session(*parsed, profile_too=False) is None:
        raise ApiUnauthorized("Bearer")
    g.api_user_id, g.api_token = parsed


@bp.post("/tokens")
def issue_token():
    """HTTP Basic (username, password) in, ``{"token", "expires_at"}`` out."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise ApiUnauthorized("Basic", _("Send your username and password with HTTP Basic authentication."))
    try:
        profile = services().users.authenticate(auth.username, auth.password)
    except InvalidCredentials:
        raise ApiUnauthorized("Basic", _("Invalid username or password")) from None
    opened = services().users.open_session(profile["id"], current_app.config["API_TOKEN_LIFETIME"])
    response = jsonify(token=f"{profile['id']}.{opened['token']}", expires_at=opened["expires_at"])
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/tokens")
def revoke_token():
    """End the token's session: from now on every gateway process refuses it."""
    sign_out(g.api_user_id, g.api_token)
    return "", 204


@bp.get("/messages")
def get_messages():
    """The inbox, a page at a time (``?page=`` as on the Messages page), newest first.
    Marks nothing read (``POST /api/messages/read`` does)."""
    page = _page_argument()
    inbox = services().messages.inbox(g.api_user_id, page)
    if page > inbox["pages"]:
        abort(404)
    profiles = known().profiles_of({g.api_user_id} | {m["sender_id"] for m in inbox["messages"]})
    for message in inbox["messages"]:
        message["recipient_id"] = g.api_user_id

    def link(number):
        return url_for("api.get_messages", page=number)

    return jsonify(
        items=[_message_json(message, profiles) for message in inbox["messages"]],
        _meta={"page": page, "per_page": inbox.get("per_page"), "total_pages": inbox["pages"],
               "total_items": inbox["total"]},
        _links={"self": link(page), "next": link(page + 1) if inbox["has_next"] else None,
                "prev": link(page - 1) if inbox["has_prev"] else None},
    )


@bp.get("/messages/<int:message_id>")
def get_message(message_id):
    """One message, for its sender or its recipient; 404 for anyone else."""
    message = services().messages.message(g.api_user_id, message_id)
    if message is None:
        abort(404)
    return jsonify(_message_json(message, known().profiles_of({message["sender_id"], message["recipient_id"]})))


@bp.post("/messages/read")
def mark_read():
    """Mark the inbox read, as opening the Messages page does: an ``InboxRead`` only if
    something is unread (the log holds facts, not calls). Then, like that page, wait for
    its notification change to reach this process, so a following
    ``GET /api/notifications`` here shows the count at 0."""
    read = services().messages.open_inbox(g.api_user_id, 1)["read"]
    if read is not None:
        read_at = datetime.fromisoformat(read["occurred_at"]).timestamp()
        known().await_event(known().notifications, g.api_user_id, read_at, OWN_WRITE_WAIT)
    return "", 204


@bp.post("/messages")
def send_message():
    """``{"recipient": <username>, "body": <text>}``: 201 with the message and its
    ``Location``. An ``Idempotency-Key`` header (8 to 64 letters, digits, ``-``, ``_``)
    makes a retried POST send once; without one each POST is a new message."""
    data = _json_body()
    recipient, body = data.get("recipient"), data.get("body")
    if not isinstance(recipient, str) or not recipient.strip():
        abort(400, description=_("recipient must be a username (text)."))
    if not isinstance(body, str):
        abort(400, description=_("body must be text."))
    body = as_the_service_counts(body)  # what the send form sends, counted as the service counts
    if not body:
        abort(400, description=_("Please write a message."))
    if len(body) > MESSAGE_MAX:
        abort(400, description=_("Messages are at most %(max)d characters; this one has %(length)d.",
                                 max=MESSAGE_MAX, length=len(body)))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        abort(400, description=_("Idempotency-Key must be 8 to 64 letters, digits, '-' or '_' (a UUID)."))
    try:
        profile = known().profile_by_name(recipient)
        sent = services().messages.send_message(g.api_user_id, profile["id"], body,
                                                idempotency_key=key or uuid.uuid4().hex)
    except UserNotFound:  # the name's look-up, or the service's RecipientNotFound
        abort(404, description=_("There is no user with that username."))
    except ValidationFailed as error:
        abort(400, description=error.message)
    message = {"id": sent["position"], "sender_id": sent["data"]["sender_id"],
               "recipient_id": sent["data"]["recipient_id"], "body": sent["data"]["body"], "sent_at": sent["occurred_at"]}
    profiles = known().profiles_of({message["sender_id"], message["recipient_id"]})
    response = jsonify(_message_json(message, profiles))
    response.headers["Location"] = url_for("api.get_message", message_id=message["id"])
    return response, 201


@bp.get("/notifications")
def notifications():
    """The poll's contract (``/notifications``): the rows newer than ``?since=``."""
    since = _unix_time(request.args.get("since", "0"))
    if since is None:
        abort(400, description=_("since must be a Unix time: a finite number, 0 or more."))
    return jsonify(_rows_since(g.api_user_id, since))


@bp.get("/notifications/stream")
def notification_stream():
    """The push stream's contract (``/notifications/stream``): from ``Last-Event-ID``,
    else ``?since=``, else 0. It ends when the token expires or is revoked."""
    since = _unix_time(request.headers.get("Last-Event-ID") or request.args.get("since", "0"))
    if since is None:
        abort(400, description=_("since must be a Unix time: a finite number, 0 or more."))
    try:
        return open_stream(g.api_user_id, since, g.api_token)
    except Unauthorized:  # revoked (or expired) since ``authenticate`` checked it
        raise ApiUnauthorized("Bearer") from None


def _json_body() -> dict:
    """The request's JSON object: 415 if the body is not JSON, 400 if it is not an object."""
    if not request.is_json:
        abort(415)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description=_("The body must be a JSON object."))
    return data


def _message_json(message: dict, profiles: dict[int, dict]) -> dict:
    """A message as the API shows it: names, not ids (a user's current name)."""
    sender, recipient = profiles.get(message["sender_id"]), profiles.get(message["recipient_id"])
    return {
        "id": message["id"],
        "sender": sender["username"] if sender else None,
        "recipient": recipient["username"] if recipient else None,
        "body": message["body"],
        "sent_at": message["sent_at"],
        "_links": {
            "self": url_for("api.get_message", message_id=message["id"]),
            "sender": url_for("main.user", username=sender["username"]) if sender else None,
            "recipient": url_for("main.user", username=recipient["username"]) if recipient else None,
            "avatar": avatar_url(sender, 128) if sender else None,
        },
    }
