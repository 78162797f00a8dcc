"""The gateway under gunicorn (threaded workers), the production WSGI server."""
from __future__ import annotations

from gunicorn.app.base import BaseApplication

from kernel.settings import env_int, env_str


class GatewayServer(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        # Called in each worker after the fork: every worker builds its own app and so its
        # own pool of RPC proxies (connections must not be shared across a fork).
        from gateway import create_app

        return create_app()


def gunicorn_options(host: str, port: int) -> dict:
    return {
        "bind": f"{host}:{port}",
        "worker_class": "gthread",
        "workers": env_int("GATEWAY_WORKERS", 2, minimum=1),
        "threads": env_int("GATEWAY_THREADS", 8, minimum=1),
        "timeout": env_int("GATEWAY_TIMEOUT", 30, minimum=1),
        "graceful_timeout": 20,
        "accesslog": env_str("GATEWAY_ACCESS_LOG", "-"),
        "errorlog": "-",
        # Request size limits, spelt out (gunicorn's defaults but the first): a request line
        # up to 8190 bytes (gunicorn's maximum; its default 4094 refused 8 KB URLs that the
        # embedded server serves), header lines up to 8190 bytes, at most 100 headers.
        # Past them gunicorn answers 414 or 431 itself, before the app.
        "limit_request_line": 8190,
        "limit_request_field_size": 8190,
        "limit_request_fields": 100,
    }


def serve_gateway(host: str, port: int) -> None:
    GatewayServer(gunicorn_options(host, port)).run()
