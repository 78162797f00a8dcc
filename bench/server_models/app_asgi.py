"""Starlette + sse-starlette SSE app for uvicorn (uvloop, httptools).

SPIKE_MOUNT_WSGI=1 mounts the Flask app (app_wsgi, pusher not started there) through a2wsgi under /wsgi.
"""
import asyncio
import contextlib
import os
import time
from collections import deque

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import spike_ctl as ctl

HUB = {}
COUNT = [0]


class Stream:
    __slots__ = ("q", "ev")

    def __init__(self):
        self.q = deque()
        self.ev = asyncio.Event()

    def put(self, msg):
        self.q.append(msg)
        self.ev.set()


def push(user, msg):
    ss = HUB.get(user)
    if not ss:
        return 0
    for s in list(ss):
        s.put(msg)
    return len(ss)


async def stream(request):
    user = int(request.query_params["user"])
    s = Stream()
    HUB.setdefault(user, set()).add(s)
    COUNT[0] += 1

    async def gen():
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    async with asyncio.timeout(ctl.KEEPALIVE):
                        await s.ev.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                s.ev.clear()
                out = []
                while s.q:
                    out.append(s.q.popleft())
                yield b"".join(out)
        finally:
            ss = HUB.get(user)
            if ss is not None and s in ss:
                ss.discard(s)
                COUNT[0] -= 1
                if not ss:
                    del HUB[user]

    # ping=0: the generator sends its own ": keepalive" so every model behaves the same
    return EventSourceResponse(gen(), ping=0)


async def push_view(request):
    user = int(request.query_params["user"])
    n = push(user, ctl.make_event(int(time.time() * ctl.TICKS_PER_S), user))
    return JSONResponse({"delivered": n})


async def page(request):
    return JSONResponse({"streams": COUNT[0], "pid": os.getpid()})


async def pusher():
    i = 0
    k = ctl.first_tick()
    while True:
        delay = ctl.tick_delay(k)
        await asyncio.sleep(delay)
        w = ctl.window()
        if w and w[0] <= k < w[1]:
            user = ctl.user_for_tick(k)
            push(user, ctl.make_event(k, user))
        k += 1
        i += 1
        if i % 5 == 0:
            ctl.write_stats(COUNT[0])


@contextlib.asynccontextmanager
async def lifespan(app):
    task = asyncio.create_task(pusher())
    yield
    task.cancel()


routes = [Route("/stream", stream), Route("/push", push_view, methods=["POST"]), Route("/page", page)]
if os.environ.get("SPIKE_MOUNT_WSGI") == "1":
    os.environ["SPIKE_AUTOSTART"] = "0"
    from a2wsgi import WSGIMiddleware

    from app_wsgi import app as flask_app

    routes.append(Mount("/wsgi", app=WSGIMiddleware(flask_app)))

app = Starlette(routes=routes, lifespan=lifespan)
