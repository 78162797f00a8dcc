"""Error pages: every failure a visitor can cause gets a page and the right status, never a 500."""
from flask import render_template
from flask_babel import _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from kernel.rpc_pool import ServiceUnavailable


def register(app):
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_template(
            "errors/400.html",
            reason=_("The form was missing its security token or the token has expired. Please try again."),
        ), 400

    @app.errorhandler(ServiceUnavailable)
    def service_unavailable(error):
        app.logger.warning("service unavailable: %s", error)
        # No navbar: drawing it would need the users service, which may be the one down.
        return render_template("errors/503.html", minimal_nav=True), 503

    @app.errorhandler(HTTPException)
    def http_error(error):
        template = {400: "errors/400.html", 404: "errors/404.html"}.get(error.code, "errors/generic.html")
        return render_template(template, error=error, reason=None), error.code

    @app.errorhandler(500)
    def internal_error(error):
        return render_template("errors/500.html", minimal_nav=True), 500
