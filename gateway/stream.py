"""``GET /notifications/stream``: the poll's rows as Server-Sent Events.

One code path for both run modes: a WSGI response whose body is a generator that waits on
its stream's ``wake`` event (``gateway.hub``). Under gunicorn's gevent worker (real mode)
and eventlet's WSGI server (embedded mode) ``threading`` is patched, so a waiting stream is
a parked greenlet (a few KiB), not a thread: docs/architecture.md, "Server model".

The wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html):
``retry: <ms>`` first, then per row ``id: <timestamp>`` and ``data: {"name", "data",
"timestamp"}`` (one line), and a ``: keepalive`` comment after ``STREAM_KEEPALIVE`` seconds
without an event. No ``event:`` field, so ``EventSource.onmessage`` receives every row.
"""
from __future__ import annotations

import json
import math
import time

from flask import Response, current_app, request
from werkzeug.exceptions import Unauthorized

from gateway.hub import Hub, Stream
from gateway.session_user import known
from kernel.metrics import STREAM_EVENTS


def _socket(environ):
    """The client's socket, to notice a closed tab at once (gunicorn, werkzeug, eventlet)."""
    sock = (environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
            or getattr(environ.get("eventlet.input"), "_sock", None))
    return sock if hasattr(sock, "fileno") else None


def format_event(row: dict) -> str:
    # repr of a float is the shortest text that reads back as the same float, which is
    # also how the poll's JSON prints it: ids compare exactly with ``since``.
    return f"id: {row['timestamp']!r}\ndata: {json.dumps(row, separators=(',', ':'))}\n\n"


def open_stream(user_id: int, since: float, token: str | None = None) -> Response:
    """Register the stream, read the user's rows newer than ``since`` (the poll's read;
    the service's errors propagate, the caller answers 503), then stream.

    ``token``: the session the caller signed in with. The stream lives as long as it does:
    it ends when the session expires, or when it is ended anywhere (a sign-out, a revoked
    API token: the hub checks the user's streams on each ``SessionEnded``). A session that
    ended since the caller checked it is a 401 (``Unauthorized``)."""
    hub: Hub = current_app.extensions["hub"]
    ends_at = math.inf
    if token is not None:
        ends_at = known().session_ends_at(user_id, token)
        if ends_at is None:
            raise Unauthorized()
    # Registered before the read: a change committed meanwhile reaches this stream too.
    stream = hub.open(user_id, since, _socket(request.environ), token, ends_at)
    try:
        rows = hub.read_since(user_id, since)
    except BaseException:
        hub.close(stream)
        raise
    hub.add_rows(stream, rows)
    # eventlet's WSGI server holds back writes until 4 KiB have gathered: each event must
    # go out as it is yielded.
    request.environ["eventlet.minimum_write_chunk_size"] = 0
    events = _events(hub, stream, current_app.config["STREAM_KEEPALIVE"], current_app.config["STREAM_RETRY_MS"])
    return Response(_Body(events, hub, stream, request.environ), mimetype="text/event-stream", headers={
        "Cache-Control": "no-cache, no-store",
        "X-Accel-Buffering": "no",  # nginx and the like: pass each event on at once
    })


class _Body:
    """The response body: the events, and a ``close`` the server always calls, even when
    the generator never started (a ``HEAD`` request, an error before the first write), so
    the stream always leaves the hub. It also drops the request object from the WSGI
    environ: werkzeug stores it there, a reference cycle that would outlive the stream."""

    def __init__(self, events, hub: Hub, stream: Stream, environ: dict):
        self.events, self.hub, self.stream, self.environ = events, hub, stream, environ

    def __iter__(self):
        return self.events

    def close(self) -> None:
        self.events.close()
        self.hub.close(self.stream)
        self.environ.pop("werkzeug.request", None)


def _events(hub: Hub, stream: Stream, keepalive: float, retry_ms: int):
    try:
        yield f"retry: {retry_ms}\n\n"
        while not stream.closed:
            rows = hub.take(stream)
            if rows:
                yield "".join(format_event(row) for row in rows)
                STREAM_EVENTS.inc(len(rows))
                continue
            left = stream.ends_at - time.time()
            if left <= 0:  # the session expired: so does its stream (a new one is a 401)
                return
            if not stream.wake.wait(min(keepalive, left)) and left > keepalive:
                yield ": keepalive\n\n"
    finally:
        # Runs when the stream ends, the client goes away (the server closes the
        # generator) or the process stops.
        hub.close(stream)
