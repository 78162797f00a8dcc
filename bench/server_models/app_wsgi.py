"""Flask WSGI SSE app used for gthread, gevent and eventlet runs.

Uses only threading primitives (threading.Event, threading.Lock, threading.Thread); under gevent/eventlet
monkey patching these become cooperative.
"""
import os
import threading
import time
from collections import deque

from flask import Flask, Response, jsonify, request

import spike_ctl as ctl

app = Flask(__name__)
HUB = {}  # user -> set(Stream)
LOCK = threading.Lock()
COUNT = [0]
WATCH = os.environ.get("SPIKE_WATCH") == "1"


class Stream:
    __slots__ = ("q", "ev", "gone", "__weakref__")

    def __init__(self):
        self.q = deque()
        self.ev = threading.Event()
        self.gone = False

    def put(self, msg):
        self.q.append(msg)
        self.ev.set()


def _add(user, s):
    with LOCK:
        HUB.setdefault(user, set()).add(s)
        COUNT[0] += 1


def _remove(user, s):
    with LOCK:
        ss = HUB.get(user)
        if ss is not None and s in ss:
            ss.discard(s)
            COUNT[0] -= 1
            if not ss:
                del HUB[user]


def push(user, msg):
    ss = HUB.get(user)
    if not ss:
        return 0
    for s in list(ss):
        s.put(msg)
    return len(ss)


@app.get("/stream")
def stream():
    user = int(request.args["user"])
    # eventlet.wsgi buffers body writes until 4096 bytes unless told otherwise (ignored by other servers)
    request.environ["eventlet.minimum_write_chunk_size"] = 0
    s = Stream()
    _add(user, s)
    watcher = None
    sock = request.environ.get("gunicorn.socket")
    if WATCH and sock is not None:
        # optional: one extra greenlet per stream blocks in recv() to notice the client's FIN at once
        import gevent

        def watch():
            try:
                sock.recv(1)
            except OSError:
                pass
            s.gone = True
            s.ev.set()

        watcher = gevent.spawn(watch)

    def gen():
        try:
            yield b"retry: 3000\n\n"
            while True:
                if s.ev.wait(ctl.KEEPALIVE):
                    if s.gone:
                        return
                    s.ev.clear()
                    out = []
                    while s.q:
                        out.append(s.q.popleft())
                    yield b"".join(out)
                else:
                    yield b": keepalive\n\n"
        finally:
            _remove(user, s)
            if watcher is not None:
                watcher.kill(block=False)

    return Response(gen(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@app.post("/push")
def push_view():
    user = int(request.args["user"])
    n = push(user, ctl.make_event(int(time.time() * ctl.TICKS_PER_S), user))
    return jsonify(delivered=n)


@app.get("/page")
def page():
    return jsonify(streams=COUNT[0], pid=os.getpid())


def _pusher():
    i = 0
    k = ctl.first_tick()
    while True:
        delay = ctl.tick_delay(k)
        time.sleep(delay)
        w = ctl.window()
        if w and w[0] <= k < w[1]:
            user = ctl.user_for_tick(k)
            push(user, ctl.make_event(k, user))
        k += 1
        i += 1
        if i % 5 == 0:
            ctl.write_stats(COUNT[0])


_started = []


def start_pusher():
    if _started:
        return
    _started.append(True)
    threading.Thread(target=_pusher, name="pusher", daemon=True).start()


# gunicorn imports the app inside the worker (no --preload), after the worker class has monkey patched.
if os.environ.get("SPIKE_AUTOSTART", "1") == "1":
    start_pusher()
