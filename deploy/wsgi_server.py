"""The gateway under gunicorn with gevent workers, the production server.

Why gevent (docs/architecture.md, "Server model", has the measurements): a push stream
(``/notifications/stream``) stays open as long as the page does. Under the threaded
worker each one held a thread, so 16 open pages filled a worker; under gevent an idle
stream is a parked greenlet of a few KiB, and a worker holds thousands
(``GATEWAY_CONNECTIONS``). The pages keep their code: gevent patches ``threading``,
``socket`` and ``time``, so the RPC pool and the hub's listener run as greenlets.
"""
from __future__ import annotations

import signal
import warnings

from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.ggevent import GeventWorker

from kernel.settings import env_int, env_str


class _HeadWithBody:
    """The client's socket as a response sees it: the head (status line and headers) is
    held back and sent with the first bytes of the body, in one ``sendall``."""

    def __init__(self, sock):
        self._sock = sock
        self.holding = False  # the next sendall is the head: keep it
        self.head = b""

    def sendall(self, data) -> None:
        if self.holding:
            self.head, self.holding = bytes(data), False
            return
        if self.head:
            data, self.head = self.head + bytes(data), b""
        self._sock.sendall(data)

    def flush(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            self._sock.sendall(head)

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self._sock.sendfile(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class OneSendResponse(gunicorn_wsgi.Response):
    """gunicorn's response, with its head sent in the same ``sendall`` as the body's first
    bytes instead of one of its own. gunicorn writes them apart: two sends per page, and on
    this machine a send on the loopback costs about as much CPU as rendering a small page
    (py-spy of a form-send run: the header sends were 16% of the gateway's busy samples).
    A page is then one TCP segment to the client, not two."""

    def __init__(self, req, sock, cfg):
        super().__init__(req, _HeadWithBody(sock), cfg)

    def send_headers(self):
        if not self.headers_sent:
            self.sock.holding = True
            super().send_headers()
            self.sock.holding = False

    def close(self):
        super().close()
        self.sock.flush()  # a response without a body (a HEAD, a 204, an empty one)


class GatewayWorker(GeventWorker):
    """gunicorn's gevent worker that ends the open streams when it is told to stop.

    Without this a stopping worker waits ``graceful_timeout`` for its streams (they never
    end by themselves) and is then killed mid-write. Ending them at once lets each browser
    reconnect (to another worker, or the restarted one) with its ``Last-Event-ID``.
    """

    def _end_streams(self):
        import gevent

        # A signal may come while the worker is still loading the app (no ``wsgi`` yet):
        # nothing to end then, and an error raised here would fail the worker's boot.
        hub = getattr(getattr(self, "wsgi", None), "extensions", {}).get("hub")
        if hub is not None:
            gevent.spawn(hub.shutdown)  # out of the signal handler: it takes a lock

    def patch(self):
        # The master imported the app's modules (settings check), nameko's among them, and
        # nameko imports eventlet, whose green ``ssl`` module gevent cannot patch after the
        # fact and warns about in every worker. The gateway never uses eventlet's ssl (its
        # broker connections go through kombu on the patched ``socket`` and ``ssl``).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")
            super().patch()

    def init_process(self):
        # From the fork until gunicorn installs this worker's handlers (after gevent's
        # patching and hub set-up, a few hundred ms on a busy machine), a SIGTERM would run
        # the master's inherited handler and be lost: the worker would then serve on until
        # the master kills it after ``graceful_timeout``. Remember it instead; ``run`` sees
        # ``alive`` false and the worker stops as soon as it is up.
        signal.signal(signal.SIGTERM, self._stop_early)
        signal.signal(signal.SIGINT, self._stop_early)
        signal.signal(signal.SIGQUIT, self._stop_early)
        gunicorn_wsgi.Response = OneSendResponse  # what gunicorn's ``wsgi.create`` makes, in this worker
        super().init_process()

    def _stop_early(self, sig, frame):
        self.alive = False

    def handle_exit(self, sig, frame):  # SIGTERM: graceful
        self._end_streams()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig, frame):  # SIGINT, SIGQUIT: quick
        self._end_streams()
        super().handle_quit(sig, frame)


class GatewayServer(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        # Called in each worker after the fork (and after gevent's patching): every worker
        # builds its own app, so its own pool of RPC proxies and its own hub.
        from gateway import create_app

        app = create_app()
        keep_full_collections_short()
        return app


FULL_SWEEP_EVERY = 60  # full collections; one in so many walks the frozen objects too


def keep_full_collections_short() -> None:
    """Keep the collector's full passes (generation 2) short in a worker holding thousands
    of streams.

    A full pass walks every tracked object with the whole worker stopped, so every open
    stream of that worker waits for it. A worker holding 5,000 idle streams tracks about
    330,000 objects (90,000 from the modules and the app, about 50 per stream: its
    greenlet, gunicorn's request, parser and socket, the generator, the wake event); a
    full pass over them took 230-550 ms on this 2-core VM, once every 20-45 s, and the
    deliveries in that window were late by as much (push_bench: 20-70 deliveries over
    100 ms a run). Objects that survive a full pass are long-lived: they are moved to the
    permanent generation (``gc.freeze``) after each, so the next full pass walks only
    what was created since. A frozen object is still freed by its reference count (a
    closed stream's objects are: the one cycle among them, werkzeug's request stored in
    the WSGI environ, is cut when the stream closes, ``gateway.stream._Body.close``); only
    a cycle among frozen objects would wait, so one full pass in ``FULL_SWEEP_EVERY``
    unfreezes first and walks everything."""
    import gc

    gc.collect()
    gc.freeze()  # the modules and the app
    full_passes = 0

    def after_full_pass(phase, info):
        nonlocal full_passes
        if info["generation"] != 2:
            return
        if phase == "start":
            full_passes += 1
            if full_passes % FULL_SWEEP_EVERY == 0:
                gc.unfreeze()
        else:
            gc.freeze()

    gc.callbacks.append(after_full_pass)


def gunicorn_options(host: str, port: int) -> dict:
    return {
        "bind": f"{host}:{port}",
        "worker_class": "deploy.wsgi_server.GatewayWorker",
        "workers": env_int("GATEWAY_WORKERS", 2, minimum=1),
        # Open connections per worker, streams included (each a greenlet).
        "worker_connections": env_int("GATEWAY_CONNECTIONS", 10000, minimum=1),
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
