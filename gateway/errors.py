"""Error pages: every failure a visitor can cause gets a page and the right status, never a 500."""
from flask import current_app, render_template
from flask_babel import _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from kernel.errors import DependencyUnavailable
from kernel.rpc_pool import ServiceUnavailable


# Seconds a client is told to wait before trying again when a service (or its database)
# is unavailable: about a service's retry backoff (kernel.db.Outage.cap) and then some.
RETRY_AFTER = 5

# What "that service cannot answer now" looks like to the gateway: no answer in time (or
# no broker), or a service's own DependencyUnavailable (its database, DatabaseUnavailable,
# or a service it needs).
UNAVAILABLE = (ServiceUnavailable, DependencyUnavailable)


def register(app):
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_template(
            "errors/400.html",
            reason=_("The form was missing its security token or the token has expired. Please try again."),
        ), 400

    @app.errorhandler(DependencyUnavailable)
    @app.errorhandler(ServiceUnavailable)
    def service_unavailable(error):
        app.logger.warning("service unavailable: %s", error)
        return _render_without_user("errors/503.html"), 503, {"Retry-After": str(RETRY_AFTER)}

    @app.errorhandler(HTTPException)
    def http_error(error):
        template = {400: "errors/400.html", 404: "errors/404.html"}.get(error.code, "errors/generic.html")
        # A description we set ourselves (abort(400, description=...)) is worth showing;
        # werkzeug's stock one is not.
        reason = error.description if error.description != type(error).description else None
        return render_template(template, error=error, reason=reason), error.code

    @app.errorhandler(500)
    def internal_error(error):
        return _render_without_user("errors/500.html"), 500


def _render_without_user(template: str) -> str:
    """Render an error page without asking who the visitor is.

    ``render_template`` runs Flask-Login's context processor, which loads the user over
    RPC: exactly what fails when the users service or the broker is down. Rendering the
    template directly skips the context processors; the page shows no user-specific navbar.
    """
    return current_app.jinja_env.get_template(template).render(minimal_nav=True)
