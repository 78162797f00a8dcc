"""Error pages: every failure a visitor can cause gets a page and the right status, never a 500.

Each page is in the site's layout, translated, with a way back (home, and the page the
visitor came from when it is one of ours). The poll and the push stream
(``/notifications``, ``/notifications/stream``) are asked by scripts: their errors are
JSON ``{"error": ...}`` instead. Every error under ``/api/`` (the token API) is JSON
``{"error": <HTTP reason>, "message": <what went wrong, translated>}``.
"""
from urllib.parse import urlsplit

from flask import current_app, jsonify, render_template, request
from flask_babel import _, lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from kernel.errors import DependencyUnavailable
from kernel.rpc_pool import ServiceUnavailable


# Seconds a client is told to wait before trying again when a service (or its database)
# is unavailable: about a service's retry backoff (kernel.db.Outage.cap) and then some.
RETRY_AFTER = 5

# What "that service cannot answer now" looks like to the gateway: no answer in time (or
# no broker), or a service's own DependencyUnavailable (its database, DatabaseUnavailable,
# or a service it needs).
UNAVAILABLE = (ServiceUnavailable, DependencyUnavailable)

# Each page's heading and what it says; other codes show werkzeug's name for the code.
PAGES = {
    400: (_l("Bad Request"), _l("The request could not be understood. Please go back and try again.")),
    403: (_l("Forbidden"), _l("You are not allowed to see this page.")),
    404: (_l("Not Found"), _l("There is no page at this address. The link may be wrong, or what it "
                              "showed may be gone.")),
    405: (_l("Method Not Allowed"), _l("This page cannot be used that way. Please go back and try again.")),
    413: (_l("Too Much Data"), _l("What was sent is larger than this site takes.")),
    500: (_l("An unexpected error has occurred"), _l("The administrator has been notified. "
                                                     "Sorry for the inconvenience!")),
    503: (_l("Service temporarily unavailable"), _l("Part of Microblog is not answering right now. "
                                                    "Please try again in a moment.")),
}

# The last resort, when even the layout cannot be drawn: no template, no translation.
BARE_500 = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error - Microblog</title>'
            '</head><body><h1>An unexpected error has occurred</h1><p><a href="/">Home</a></p></body></html>')


def register(app):
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        reason = _("The form was missing its security token or the token has expired. Please try again.")
        return _error_response(400, reason)

    @app.errorhandler(DependencyUnavailable)
    @app.errorhandler(ServiceUnavailable)
    def service_unavailable(error):
        app.logger.warning("service unavailable: %s", error)
        headers = {"Retry-After": str(RETRY_AFTER)}
        if is_api():
            return api_error(503) + (headers,)
        if _wants_json():
            return jsonify(error=_("Notifications are unavailable right now; please try again shortly.")), 503, headers
        return _render_without_user(503), 503, headers

    @app.errorhandler(HTTPException)
    def http_error(error):
        # A description we set ourselves (abort(400, description=...)) is worth showing;
        # werkzeug's stock one is not.
        reason = error.description if error.description != type(error).description else None
        # The exception's own headers (Allow for a 405, WWW-Authenticate ...), not its
        # content type.
        headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
        return _error_response(error.code, reason, getattr(error, "name", None)) + (headers,)

    @app.errorhandler(500)
    def internal_error(error):
        if is_api():
            return api_error(500)
        if _wants_json():
            return jsonify(error=_("An unexpected error has occurred")), 500
        return _render_robustly(500), 500


def _wants_json() -> bool:
    """The poll and the push stream are asked by the page's script: JSON errors."""
    return request.path == "/notifications" or request.path.startswith("/notifications/")


def is_api() -> bool:
    """A request to the token API (``gateway.api``), or to an address under it."""
    return request.path == "/api" or request.path.startswith("/api/")


# The API's own words for the errors a client meets most (the pages' speak of pages).
API_TEXTS = {
    401: _l("A valid token is required: Authorization: Bearer <token> (POST /api/tokens gives one)."),
    404: _l("There is nothing at this address."),
    405: _l("This address does not take that method."),
    415: _l("The body must be JSON, sent with Content-Type: application/json."),
}


def api_error(code: int, message=None):
    """The API's error response: ``{"error": <HTTP reason>, "message": ...}`` and ``code``."""
    if message is None:
        message = API_TEXTS.get(code) or PAGES.get(code, (None, HTTP_STATUS_CODES.get(code, "")))[1]
    return jsonify(error=HTTP_STATUS_CODES.get(code, str(code)), message=str(message)), code


def _error_response(code: int, reason=None, name=None):
    if is_api():
        return api_error(code, reason)
    if _wants_json():
        title = PAGES[code][0] if code in PAGES else name
        return jsonify(error=str(reason or title)), code
    return render_template("errors/error.html", **_page(code, reason, name)), code


def _page(code: int, reason=None, name=None) -> dict:
    title, text = PAGES.get(code, (name or str(code), None))
    return {"code": code, "title": title, "text": reason or text, "back_url": _back_url()}


def _back_url() -> str | None:
    """The page the visitor came from, when it is a page of this site (not this one)."""
    referrer = request.referrer
    if not referrer:
        return None
    try:
        parts = urlsplit(referrer)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.netloc != request.host:
        return None
    if parts.path == request.path and parts.query == request.query_string.decode("latin-1"):
        return None
    return referrer


def _render_robustly(code: int) -> str:
    """The error page with the visitor's navbar if it can be drawn; without it (no user
    lookup, no badge) if not; a bare page if even the layout fails. A page about an error
    must not be another error."""
    try:
        return render_template("errors/error.html", **_page(code))
    except Exception:
        current_app.logger.exception("error page %d: the full layout failed; drawn without the user", code)
    try:
        return _render_without_user(code)
    except Exception:
        current_app.logger.exception("error page %d: the layout failed; a bare page instead", code)
    return BARE_500


def _render_without_user(code: int) -> str:
    """Render an error page without asking who the visitor is.

    ``render_template`` runs Flask-Login's context processor, which loads the user over
    RPC: exactly what fails when the users service or the broker is down. Rendering the
    template directly skips the context processors; the page shows no user-specific navbar.
    """
    return current_app.jinja_env.get_template("errors/error.html").render(minimal_nav=True, **_page(code))
