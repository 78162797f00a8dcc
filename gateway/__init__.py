"""The Flask gateway: pages, forms, sessions. It holds no business rules; it calls services."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask import Flask, request

from gateway.extensions import babel, csrf, login_manager
from gateway.session_user import load_user
from gateway.settings import GatewaySettings
from kernel.metrics import InstrumentedRpcPool, instrument_app, metrics_response
from kernel.rpc_pool import RpcPool


# A page that fell back to polling tries the stream again after this long.
STREAM_RETRY_AFTER_MS = 60_000


def select_locale():
    from flask import current_app

    return request.accept_languages.best_match(current_app.config["LANGUAGES"]) or "en"


def navbar_context() -> dict:
    """The unread badge's first value, from the notifications projection, on every page
    (from this process's memory of it when it can: ``gateway.memory``).

    A page must not fail because the badge cannot be drawn: if the notifications service
    does not answer, or answers that its database does not, the count is ``None`` (not
    known) and the badge is left as it was: the page keeps the last count it showed this
    user (sessionStorage) and polls at once (base.html).
    """
    from flask import current_app
    from flask_login import current_user

    from gateway.errors import UNAVAILABLE

    count = 0
    if current_user.is_authenticated:
        try:
            count = current_app.extensions["known"].unread_message_count(current_user.id)
        except UNAVAILABLE as exc:
            current_app.logger.warning("notifications unavailable (%s); the badge is left as it was", exc)
            count = None
    return {"unread_message_count": count, "poll_interval_ms": int(current_app.config["POLL_INTERVAL"] * 1000),
            "use_stream": current_app.config["USE_STREAM"], "stream_retry_after_ms": STREAM_RETRY_AFTER_MS}


def create_app(settings: GatewaySettings | None = None, rpc: RpcPool | None = None) -> Flask:
    """Build the app. Nothing connects here: the RPC pool starts proxies on first use."""
    settings = settings or GatewaySettings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        LANGUAGES=settings.languages,
        POLL_INTERVAL=settings.poll_interval,
        USE_STREAM=settings.use_stream,
        AVATARS=settings.avatars,
        API_TOKEN_LIFETIME=settings.api_token_lifetime,
        REMEMBER_COOKIE_DURATION=timedelta(days=settings.remember_days),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        # No form here is more than a few KB: a bigger body is a 413, not read into memory.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    from gateway.hub import Hub
    from gateway.memory import Known

    pool = app.extensions["rpc"] = rpc or InstrumentedRpcPool(
        {"AMQP_URI": settings.amqp_uri}, size=settings.rpc_pool_size, timeout=settings.rpc_timeout
    )
    # One hub per process: open streams and the process's memory, fed by the events.
    known = app.extensions["known"] = Known(lambda: app.extensions["rpc"], size=settings.memory_users,
                                            notifications_ttl=settings.poll_cache_ttl)
    hub = Hub(settings.amqp_uri, read_many=lambda pairs: pool.notifications.notifications_since_many(pairs),
              known=known)
    app.extensions["hub"] = hub
    app.config.update(STREAM_KEEPALIVE=settings.stream_keepalive, STREAM_RETRY_MS=settings.stream_retry_ms)

    login_manager.init_app(app)
    login_manager.user_loader(load_user)
    csrf.init_app(app)
    babel.init_app(
        app,
        locale_selector=select_locale,
        default_translation_directories=str(Path(__file__).parent / "translations"),
    )

    from gateway import errors
    from gateway.api import bp as api_bp
    from gateway.auth import bp as auth_bp
    from gateway.main import bp as main_bp

    from flask_babel import format_datetime, get_locale

    from flask_babel import format_timedelta

    from gateway.avatars import avatar_url

    app.jinja_env.globals.update(current_locale=get_locale, format_datetime=format_datetime,
                                 format_timedelta=format_timedelta, avatar_url=avatar_url)
    errors.register(app)
    app.context_processor(navbar_context)
    app.register_blueprint(auth_bp, url_prefix="/auth")
    app.register_blueprint(main_bp)
    # The API reads no cookie (a bearer token authorises each call): nothing to forge.
    csrf.exempt(api_bp)
    app.register_blueprint(api_bp, url_prefix="/api")
    # The hub's listener feeds the memory pages read from: started by the first request
    # of the process that serves (after gunicorn's fork), not when the app is built.
    app.before_request(hub.start)

    @app.get("/healthz")
    def healthz():
        # The process answers HTTP (the container's healthcheck). Deliberately not a check
        # of the services: a gateway restarted for a service's outage would fix nothing.
        return {"status": "ok"}

    instrument_app(app)

    @app.get("/metrics")
    def metrics():
        # Prometheus exposition (deploy/README.md, "Metrics"); every worker's figures.
        body, content_type = metrics_response()
        return body, 200, {"Content-Type": content_type}

    return app
