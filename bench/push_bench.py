"""Benchmark of the live badge over Server-Sent Events (issue 11): N open
``/notifications/stream`` connections spread over U users, messages sent through the
pages at a steady rate, and per delivery the time from the send's HTTP response (its 302)
to the event on every open stream of the recipient.

    # real mode: RabbitMQ + PostgreSQL, each service its own process, gunicorn gateway
    .venv/bin/python -m bench.push_bench --streams 10000 --users 1000
    # embedded mode: ``microblog run`` (one process, SQLite), 1,000 streams by default
    .venv/bin/python -m bench.push_bench --embedded
    # against a site already running (no RSS/CPU unless --server-pid is given)
    .venv/bin/python -m bench.push_bench --url http://127.0.0.1:5000 --server-pid 1234
    # and the "nothing new" poll's requests/s (wrk) before the streams open and with them open
    .venv/bin/python -m bench.push_bench --streams 10000 --users 1000 --poll-seconds 15
    # the poll alone, on a cluster of its own (needs wrk)
    .venv/bin/python -m bench.notify_bench poll

What it does, in order:

1. Starts the site: real mode as ``bench.notify_bench poll`` does (a private RabbitMQ
   vhost, fresh PostgreSQL databases, ``microblog serve users|messages|notifications``,
   then ``microblog serve gateway`` with ``GATEWAY_WORKERS``); embedded mode ``microblog
   run`` on a temporary data folder and a free port.
2. Registers and signs in U users and a few sender users through the pages (thread pool;
   scrypt makes this the slow part, its time is printed) and keeps each session cookie.
3. Opens N streams from this one process with raw asyncio sockets (a few KB each on the
   client side): stream i belongs to user i mod U, ``GET /notifications/stream?since=<the
   user's latest timestamp from /notifications>``, HTTP/1.1 (chunked bodies are decoded).
   Each stream's SSE is parsed (``id:``, ``data:``, comments, ``retry:``) and each event is
   recorded with the moment its bytes were read. "Time to open" ends when the last
   stream's 200 header arrived. A stream the server closes is reopened after its
   ``retry:`` hint with ``Last-Event-ID``, as a browser does (and counted).
4. Sends ``--rate`` messages a second for ``--seconds`` seconds from ``--senders`` sender
   users (one thread and one ``requests.Session`` each, apart from the stream loop), each
   to a random user with streams that has no send of its own in flight, so the count each
   send produces is known exactly: GET /send_message/<r>, POST it; its 302 arriving is t0.
   A send producing count c is delivered on a stream at the first ``unread_message_count``
   event there whose data is >= c (a later value satisfies an earlier send: coalescing is
   allowed). Latency = that moment - t0, both ``time.monotonic()`` in this process; the
   push may beat the sender's own response (the broadcast races the RPC reply), so such
   deliveries count as 0 ms and are counted apart. Lost = a (send, stream) pair not
   satisfied ``--grace`` seconds after the last send.
5. Keeps the streams open and idle for ``--idle`` seconds: gateway CPU, RSS, and the
   longest silence on any stream (the contract promises a comment at least every 15 s).
6. With ``--poll-seconds S``: the "nothing new" poll (``/notifications?since=`` as a sender,
   who never receives anything) under wrk for S seconds, before the streams open and
   again with them all open, side by side.

Gateway memory is the sum over the gunicorn master and its workers (embedded: the one
process) of VmRSS from /proc; PSS (shared pages split between the processes that share
them) is printed too, as the fairer sum after a fork. The client competes with the
server for this machine's cores: its own CPU time is printed next to the gateway's.

The figures are not timed tests: this VM drifts 20% and more between runs, compare
figures taken side by side in one run.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import os
import queue
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

warnings.filterwarnings("ignore")

from bench.common import MICROBLOG, CpuMeter, percentile, processes_named, stop_process  # noqa: E402

PASSWORD = "correct horse battery"
HIDDEN = re.compile(r'<input[^>]*name="([^"]+)"[^>]*type="hidden"[^>]*value="([^"]*)"')
ALL = ("users", "messages", "notifications")
KEEPALIVE_PROMISE = 15.0  # seconds: the contract's longest silence on an open stream


# --------------------------------------------------------------------------- the site

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(base: str, process: subprocess.Popen | None, log: Path | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(base + "/auth/register", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise SystemExit(f"the site at {base} did not come up:\n" + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.2)


@contextmanager
def real_site(args, logs: Path):
    """RabbitMQ + PostgreSQL, each service its own process, the gateway under gunicorn."""
    from bench.common import databases, services, vhost

    port = _free_port()
    with vhost() as amqp_uri, databases(*ALL) as urls:
        env = {"AMQP_URI": amqp_uri, "PYTHONWARNINGS": "ignore", "SECRET_KEY": "benchmark-secret", "PORT": str(port),
               "GATEWAY_WORKERS": str(args.workers), "GATEWAY_ACCESS_LOG": "/dev/null",
               **{f"{name.upper()}_DATABASE_URL": url for name, url in urls.items()}}
        with services(list(ALL), env, logs):
            log = logs / "gateway.log"
            gateway = subprocess.Popen([MICROBLOG, "serve", "gateway", "--host", "127.0.0.1"],
                                       env={**os.environ, **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_until_up(base, gateway, log)
                others = {f"{name} service": pids for name, pids in services.pids.items()}
                yield Site(base, gateway.pid, log, others)
            finally:
                stop_process(gateway)


@contextmanager
def embedded_site(args, logs: Path):
    """``microblog run``: one process, SQLite files in a temporary folder, in-memory broker."""
    port = _free_port()
    data = Path(tempfile.mkdtemp(prefix="push-bench-data-"))
    log = logs / "run.log"
    process = subprocess.Popen([MICROBLOG, "run", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
                               env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base, process, log)
        yield Site(base, process.pid, log, {})
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def running_site(args, logs: Path):
    _wait_until_up(args.url.rstrip("/"), None, None, timeout=30)
    yield Site(args.url.rstrip("/"), args.server_pid, None, {})


class Site:
    def __init__(self, base: str, pid: int | None, log: Path | None, others: dict[str, list[int]]):
        self.base, self.pid, self.log, self.others = base, pid, log, others
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80

    def pids(self) -> list[int]:
        """The server process and all its descendants (gunicorn master + workers)."""
        return [self.pid, *descendants(self.pid)] if self.pid else []


# ------------------------------------------------------------------- /proc helpers

def descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return sorted(found)


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in KiB over the processes still alive."""
    rss = pss = 0
    for pid in pids:
        try:
            rss += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
            pss += int(re.search(r"Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return rss, pss


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ users, sends

def _hidden_fields(html: str) -> dict[str, str]:
    return dict(HIDDEN.findall(html))


def sign_up(base: str, username: str) -> tuple[requests.Session, float]:
    """Register and sign in through the pages; the session and the user's latest timestamp."""
    browser = requests.Session()
    page = browser.get(f"{base}/auth/register", timeout=60)
    answer = browser.post(f"{base}/auth/register", allow_redirects=False, timeout=60, data={
        **_hidden_fields(page.text), "username": username, "email": f"{username}@example.com",
        "password": PASSWORD, "password2": PASSWORD, "submit": "Register"})
    if answer.status_code != 302:
        raise RuntimeError(f"registering {username}: {answer.status_code} {answer.text[:300]!r}")
    page = browser.get(f"{base}/auth/login", timeout=60)
    answer = browser.post(f"{base}/auth/login", allow_redirects=False, timeout=60, data={
        **_hidden_fields(page.text), "username": username, "password": PASSWORD, "submit": "Sign In"})
    if answer.status_code != 302:
        raise RuntimeError(f"signing in {username}: {answer.status_code} {answer.text[:300]!r}")
    rows = browser.get(f"{base}/notifications", timeout=60)
    rows.raise_for_status()
    return browser, max([row["timestamp"] for row in rows.json()], default=0)


def cookie_header(browser: requests.Session) -> str:
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in browser.cookies)


def sign_up_all(base: str, names: list[str], threads: int) -> list[tuple[requests.Session, float]]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda name: sign_up(base, name), names))


class Sender:
    """Sends at a steady rate from a thread of its own (plus one thread per sender user),
    so that nothing it does delays the stream loop's reads but the GIL."""

    def __init__(self, base, sessions, recipients, names, rate, seconds):
        self.base, self.names, self.rate, self.seconds = base, names, rate, seconds
        self.recipients = recipients  # user indexes with at least one open stream
        self.idle_sessions = queue.SimpleQueue()
        for session in sessions:
            self.idle_sessions.put(session)
        self.workers = len(sessions)
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        self.sent: dict[int, int] = {}  # user index -> sends acknowledged (= their unread count)
        self.sends: list[tuple[int, int, float]] = []  # (recipient, count it produced, t0)
        self.response_times: list[float] = []  # GET form + POST, seconds
        self.failed: list[str] = []
        self.skipped = 0  # ticks when every recipient had a send in flight
        self.done = threading.Event()

    def start(self):
        self.thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self.thread.start()

    def _run(self):
        total = int(self.rate * self.seconds)
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="send")
        self.began = time.monotonic()
        for n in range(total):
            delay = self.began + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self.lock:
                free = [r for r in random.sample(self.recipients, min(8, len(self.recipients)))
                        if r not in self.in_flight]
                if not free:
                    self.skipped += 1
                    continue
                recipient = free[0]
                self.in_flight.add(recipient)
            pool.submit(self._send, recipient)
        pool.shutdown(wait=True)
        self.elapsed = time.monotonic() - self.began
        self.done.set()

    def _send(self, recipient: int):
        browser = self.idle_sessions.get()
        began = time.monotonic()
        try:
            url = f"{self.base}/send_message/{self.names[recipient]}"
            form = browser.get(url, timeout=30)
            answer = browser.post(url, allow_redirects=False, timeout=30,
                                  data={**_hidden_fields(form.text), "message": "push bench", "submit": "Submit"})
            t0 = time.monotonic()
            ok = answer.status_code == 302
            problem = None if ok else f"{answer.status_code} {answer.text[:200]!r}"
        except requests.RequestException as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        finally:
            self.idle_sessions.put(browser)
        with self.lock:
            if ok:
                self.sent[recipient] = self.sent.get(recipient, 0) + 1
                self.sends.append((recipient, self.sent[recipient], t0))
                self.response_times.append(t0 - began)
            else:
                # A send that failed may still have committed (a timeout after the commit):
                # later expectations for this user would then be one short (flattering).
                self.failed.append(problem)
            self.in_flight.discard(recipient)


# ---------------------------------------------------------------------- streams

class Stream:
    """One EventSource: the state that survives reconnects, and the events it received."""

    __slots__ = ("index", "user", "since", "last_id", "retry", "events", "comments", "opened", "status", "closes",
                 "max_count", "last_rx", "max_gap", "violations", "protocol", "open_error")

    def __init__(self, index: int, user: int, since: float):
        self.index, self.user, self.since = index, user, since
        self.last_id: str | None = None
        self.retry = 3.0  # browsers' default, until the server says otherwise
        self.events: list[tuple[float, str | None, str]] = []  # (receipt time, id, data)
        self.comments = 0
        self.opened: float | None = None  # when the first 200 header arrived
        self.status: int | None = None
        self.closes = 0
        self.max_count = -1  # highest unread_message_count seen
        self.last_rx = 0.0
        self.max_gap = 0.0  # the longest silence while gaps are watched
        self.violations: list[str] = []
        self.protocol: StreamProtocol | None = None
        self.open_error: str | None = None


class StreamProtocol(asyncio.Protocol):
    """HTTP/1.1 response head, chunked transfer decoding, then the SSE line protocol."""

    def __init__(self, stream: Stream, request: bytes, client: Client):
        self.stream, self.request, self.client = stream, request, client
        self.head = b""
        self.headed = asyncio.get_running_loop().create_future()
        self.chunked = False
        self.raw = b""  # undecoded chunked bytes
        self.left = 0  # bytes left in the current chunk, its CRLF included
        self.lines = b""  # decoded bytes not yet a whole line
        self.data: list[str] = []
        self.event_id: str | None = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes):
        now = time.monotonic()
        stream = self.stream
        if self.client.watch_gaps:
            stream.max_gap = max(stream.max_gap, now - stream.last_rx)
        stream.last_rx = now
        if not self.headed.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4:]
            status = int(head.split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])}
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            stream.status = status
            if status != 200 or "text/event-stream" not in headers.get("content-type", ""):
                self.headed.set_result(f"{status} {headers.get('content-type')} {data[:200]!r}")
                self.transport.close()
                return
            if stream.opened is None:
                stream.opened = now
            self.headed.set_result(None)
        if self.chunked:
            data = self._dechunk(data)
        if data:
            self._lines(data, now)

    def _dechunk(self, data: bytes) -> bytes:
        self.raw += data
        out = []
        while self.raw:
            if self.left == 0:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2:]
                if size == 0:  # the response ended
                    self.raw = b""
                    break
                self.left = size + 2
            taken = self.raw[:self.left]
            self.raw = self.raw[len(taken):]
            out.append(taken[:max(0, min(len(taken), self.left - 2))])
            self.left -= len(taken)
        return b"".join(out)

    def _lines(self, data: bytes, now: float):
        # Lines end in LF or CRLF (a lone CR is not handled: the gateway does not send one).
        self.lines += data
        *lines, self.lines = self.lines.split(b"\n")
        stream = self.stream
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:  # dispatch
                if self.event_id is not None:
                    stream.last_id = self.event_id
                if self.data:
                    self._event(now, "\n".join(self.data))
                self.data = []
                continue
            if line.startswith(":"):
                stream.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                self.data.append(value)
            elif field == "id":
                self.event_id = value
            elif field == "retry":
                if value.isdigit():
                    stream.retry = int(value) / 1000
            elif field == "event":
                stream.violations.append(f"an event: field ({value!r})")
            else:
                stream.violations.append(f"unknown field {field!r}")

    def _event(self, now: float, data: str):
        stream = self.stream
        stream.events.append((now, self.event_id, data))
        try:
            row = json.loads(data)
        except ValueError:
            stream.violations.append(f"data is not JSON: {data[:80]!r}")
            return
        if self.event_id is not None:
            try:
                if float(self.event_id) != row.get("timestamp"):
                    stream.violations.append(f"id {self.event_id} is not the row's timestamp {row.get('timestamp')}")
            except ValueError:
                stream.violations.append(f"id {self.event_id!r} is not a number")
        if row.get("name") == "unread_message_count":
            value = row.get("data")
            if isinstance(value, int):
                if value < stream.max_count:
                    stream.violations.append(f"count {value} after {stream.max_count}")
                stream.max_count = max(stream.max_count, value)

    def connection_lost(self, exc):
        if not self.headed.done():
            self.headed.set_result(f"closed before the header ({exc or 'EOF'})")
        self.client.lost(self.stream, self)


class Client:
    def __init__(self, site: Site, cookies: list[str], open_timeout: float):
        self.site, self.cookies, self.open_timeout = site, cookies, open_timeout
        self.watch_gaps = False
        self.closing = False
        self.reconnects: list[asyncio.Task] = []
        self.connect_retries = 0

    def request(self, stream: Stream) -> bytes:
        since = repr(stream.since) if isinstance(stream.since, float) else str(stream.since)
        lines = [f"GET /notifications/stream?since={quote(since)} HTTP/1.1",
                 f"Host: {self.site.host}:{self.site.port}", f"Cookie: {self.cookies[stream.user]}",
                 "Accept: text/event-stream", "Cache-Control: no-cache", "User-Agent: push-bench"]
        if stream.last_id is not None:
            lines.append(f"Last-Event-ID: {stream.last_id}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def open(self, stream: Stream) -> None:
        """Connect and wait for the response head; ``stream.open_error`` says why not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_timeout
        while True:
            try:
                _, protocol = await asyncio.wait_for(loop.create_connection(
                    lambda: StreamProtocol(stream, self.request(stream), self), self.site.host, self.site.port),
                    timeout=max(0.1, deadline - loop.time()))
                stream.protocol = protocol
                problem = await asyncio.wait_for(protocol.headed, timeout=max(0.1, deadline - loop.time()))
            except (OSError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, OSError) and loop.time() < deadline:
                    self.connect_retries += 1
                    await asyncio.sleep(0.05)
                    continue
            stream.open_error = problem
            return

    def lost(self, stream: Stream, protocol: StreamProtocol):
        if self.closing or stream.protocol is not protocol or stream.opened is None:
            return
        stream.closes += 1
        self.reconnects.append(asyncio.get_running_loop().create_task(self._reopen(stream)))

    async def _reopen(self, stream: Stream):
        await asyncio.sleep(stream.retry)
        if not self.closing:
            await self.open(stream)

    def close_all(self, streams: list[Stream]):
        self.closing = True
        for task in self.reconnects:
            task.cancel()
        for stream in streams:
            if stream.protocol is not None and stream.protocol.transport is not None:
                stream.protocol.transport.close()


# ------------------------------------------------------------------------ the run

def deliveries(sends, streams_of):
    """Per (send, stream of its recipient): latency in seconds, or None (lost)."""
    latencies, lost, early, per_send = [], 0, 0, []
    counts = {}  # stream index -> [(receipt time, count)] of its unread_message_count events
    for stream in (s for group in streams_of.values() for s in group):
        rows = []
        for when, _, data in stream.events:
            try:
                row = json.loads(data)
            except ValueError:
                continue
            if row.get("name") == "unread_message_count" and isinstance(row.get("data"), int):
                rows.append((when, row["data"]))
        counts[stream.index] = rows
    for recipient, count, t0 in sends:
        per_send.append((t0, recipient, []))
        for stream in streams_of[recipient]:
            when = next((when for when, value in counts[stream.index] if value >= count), None)
            if when is None:
                lost += 1
            else:
                early += when < t0
                latencies.append(max(0.0, when - t0))
                per_send[-1][2].append(latencies[-1])
    return latencies, lost, early, per_send


async def measure(args, site: Site, names, cookies, since, sender_sessions, report):
    loop = asyncio.get_running_loop()
    # The poll is measured as a sender (they never receive a message: always "nothing new").
    poll_user = (cookie_header(sender_sessions[0]), report["sender since"])
    if args.poll_seconds:
        report["poll without streams"] = await loop.run_in_executor(None, wrk_poll, args, site, *poll_user)
    gateway_pids = site.pids()
    report["gateway processes"] = len(gateway_pids)
    report["memory before streams"] = memory_kib(gateway_pids)

    users_with_streams = min(args.users, args.streams)
    streams = [Stream(i, i % args.users, since[i % args.users]) for i in range(args.streams)]
    streams_of = {}
    for stream in streams:
        streams_of.setdefault(stream.user, []).append(stream)
    client = Client(site, cookies, args.open_timeout)

    # Open every stream, at most --open-concurrency connecting at once (the listen backlog).
    gate = asyncio.Semaphore(args.open_concurrency)

    open_times = []

    async def open_one(stream):
        async with gate:
            began = time.monotonic()
            await client.open(stream)
            if stream.opened is not None:
                open_times.append(stream.opened - began)

    meter = CpuMeter(report["cpu groups"]())
    meter.start()
    began = time.monotonic()
    await asyncio.gather(*(open_one(stream) for stream in streams))
    report["cpu open phase"] = meter.stop()
    report["open times"] = open_times
    failed = [s for s in streams if s.open_error is not None]
    opened = [s.opened for s in streams if s.opened is not None]
    report["open time"] = (max(opened) - began) if opened else float("nan")
    report["open failures"] = len(failed)
    report["open connect retries"] = client.connect_retries
    if failed:
        kinds = {}
        for stream in failed:
            kinds[stream.open_error[:120]] = kinds.get(stream.open_error[:120], 0) + 1
        report["open failure kinds"] = kinds
    if len(failed) == len(streams):
        client.close_all(streams)
        return
    # The client's own pauses would count as delivery time: its long-lived objects (the
    # streams) are moved out of the collector's way, and its collections are timed.
    gc.collect()
    gc.freeze()
    pauses, gc_began = [], [0.0]

    def timed(phase, info):
        if phase == "start":
            gc_began[0] = time.monotonic()
        else:
            pauses.append((time.monotonic() - gc_began[0], gc_began[0], info["generation"]))

    gc.callbacks.append(timed)
    report["client gc pauses"] = pauses
    await asyncio.sleep(args.settle)
    report["memory streams open"] = memory_kib(site.pids())
    report["gateway pids at open"] = site.pids()

    # Sends, from threads of their own; the loop keeps reading.
    recipients = [user for user in range(users_with_streams)
                  if any(s.open_error is None for s in streams_of[user])]
    sender = Sender(site.base, sender_sessions, recipients, names, args.rate, args.seconds)
    meter = CpuMeter(report["cpu groups"]())
    meter.start()
    sender.start()
    report["send began"] = time.monotonic()
    while not sender.done.is_set():
        await asyncio.sleep(0.1)
    report["cpu send phase"] = meter.stop()
    report["send phase seconds"] = sender.elapsed

    def satisfied():
        return all(s.max_count >= count for user, count in sender.sent.items() for s in streams_of[user]
                   if s.open_error is None)

    grace_began = time.monotonic()
    while not satisfied() and time.monotonic() - grace_began < args.grace:
        await asyncio.sleep(0.05)
    report["grace used"] = time.monotonic() - grace_began

    # Idle: no sends; the streams only hear keepalives.
    meter = CpuMeter(report["cpu groups"]())
    for stream in streams:
        stream.last_rx = time.monotonic()
        stream.max_gap = 0.0
    client.watch_gaps = True
    meter.start()
    comments_before = sum(s.comments for s in streams)
    await asyncio.sleep(args.idle)
    report["cpu idle phase"] = meter.stop()
    client.watch_gaps = False
    now = time.monotonic()
    live = [s for s in streams if s.open_error is None]
    gaps = [max(s.max_gap, now - s.last_rx) for s in live]
    report["idle comments"] = sum(s.comments for s in streams) - comments_before
    report["max silence"] = max(gaps) if gaps else float("nan")
    report["streams silent too long"] = sum(gap > KEEPALIVE_PROMISE + 1.0 for gap in gaps)
    report["memory after idle"] = memory_kib(site.pids())
    report["gateway pids after idle"] = site.pids()

    if args.poll_seconds:
        report["poll with streams"] = await loop.run_in_executor(None, wrk_poll, args, site, *poll_user)

    client.close_all(streams)
    await asyncio.sleep(0.2)

    latencies, lost, early, per_send = deliveries(sender.sends, {u: [s for s in g if s.open_error is None]
                                                        for u, g in streams_of.items()})
    report.update(
        worst=sorted(((max(lat), t0 - sender.began, r, min(lat), len(lat)) for t0, r, lat in per_send if lat),
                     reverse=True)[:5],
        sends=len(sender.sends), send_failures=sender.failed, send_skipped=sender.skipped,
        send_response_times=sender.response_times, latencies=latencies, lost=lost, early=early,
        streams_live=len(live), closes=sum(s.closes for s in streams),
        retry_hints=sorted({s.retry for s in live}),
        events=sum(len(s.events) for s in streams), comments=sum(s.comments for s in streams),
        violations=[v for s in streams for v in s.violations],
    )


def wrk_poll(args, site: Site, cookie: str, since: float) -> str:
    """The "nothing new" poll's requests/s with wrk, as bench.notify_bench poll measures it."""
    if shutil.which("wrk") is None:
        return "skipped (wrk is not installed)"
    url = f"{site.base}/notifications?since={since!r}"
    result = subprocess.run(["wrk", "-t2", f"-c{args.poll_connections}", f"-d{args.poll_seconds}s",
                             "-H", f"Cookie: {cookie}", url], capture_output=True, text=True)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    return f"{float(rate.group(1)):.0f} requests/s" if rate else f"wrk failed: {result.stdout}{result.stderr}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_report(args, report):
    mode = "embedded (microblog run)" if args.embedded else ("external site" if args.url else
                                                              f"real (gunicorn, {args.workers} workers)")
    print(f"mode:                 {mode}, {report.get('gateway processes', 0)} server processes")
    print(f"fd limit (client):    {report['fd limit']}")
    print(f"users:                {args.users} + {args.senders} senders, registered and signed in through the "
          f"pages in {report['signup seconds']:.1f} s ({args.signup_threads} threads)")
    if "memory before streams" in report and report.get("gateway processes"):
        rss, pss = report["memory before streams"]
        print(f"server memory before: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
    print(f"streams:              {args.streams} over {min(args.users, args.streams)} users; all open in "
          f"{report.get('open time', float('nan')):.2f} s ({args.open_concurrency} opening at once; "
          f"{report.get('open failures', 0)} failed, {report.get('open connect retries', 0)} connect retries)")
    if report.get("open times"):
        times = report["open times"]
        print(f"one stream's open:    p50 {ms(percentile(times, 0.5))}, p99 {ms(percentile(times, 0.99))} "
              "(connect to 200 header, queued behind the others opening)")
        cpu = report["cpu open phase"]
        print("CPU, opening:         " + ", ".join(f"{name} {used:.1f} s" for name, used in cpu.items()))
    for kind, count in report.get("open failure kinds", {}).items():
        print(f"  failed to open ({count}): {kind}")
    if "memory streams open" not in report:
        return
    before_rss, before_pss = report["memory before streams"]
    live = report.get("streams_live") or args.streams
    for label, key in (("streams open, idle", "memory streams open"), ("after the idle phase", "memory after idle")):
        rss, pss = report[key]
        if report.get("gateway processes"):
            print(f"server memory, {label + ':':22s}RSS {rss / 1024:.1f} MiB ({(rss - before_rss) / live:.1f} KiB per "
                  f"stream), PSS {pss / 1024:.1f} MiB ({(pss - before_pss) / live:.1f} KiB per stream)")
    sends = report["sends"]
    print(f"sends:                {sends} acknowledged at {args.rate:g}/s target ({sends / report['send phase seconds']:.1f}"
          f"/s achieved) from {args.senders} senders; {len(report['send_failures'])} failed, "
          f"{report['send_skipped']} skipped (every sampled recipient busy)")
    for problem in sorted(set(report["send_failures"]))[:5]:
        print(f"  send failed: {problem}")
    if report["send_response_times"]:
        times = report["send_response_times"]
        print(f"send (GET form + POST): p50 {ms(percentile(times, 0.5))}, p99 {ms(percentile(times, 0.99))}")
    latencies = report["latencies"]
    print(f"deliveries:           {len(latencies)} (send x open stream of its recipient); lost {report['lost']} "
          f"(not there {args.grace:g} s after the last send; waited {report['grace used']:.2f} s)")
    if latencies:
        print(f"latency from the send's 302 to the event: p50 {ms(percentile(latencies, 0.5))}, "
              f"p99 {ms(percentile(latencies, 0.99))}, max {ms(max(latencies))} "
              f"({report['early']} arrived before the sender's own 302: counted as 0; "
              f"{sum(latency > 0.1 for latency in latencies)} over 100 ms)")
    for worst, at, recipient, best, n in report["worst"] if latencies and max(latencies) > 0.1 else []:
        print(f"  slow send at {at:.1f} s into the send phase to user {recipient}: its {n} streams got it after "
              f"{ms(best)} .. {ms(worst)}")
    pauses = sorted(report["client gc pauses"], reverse=True)
    print(f"client GC:            {len(pauses)} collections after the streams opened, longest "
          + (", ".join(f"{ms(d)} (gen {g}, {at - report['send began']:.1f} s into the send phase)"
                       for d, at, g in pauses[:3]) if pauses else "none"))
    print(f"stream health:        {report['closes']} closed by the server (reopened with Last-Event-ID), "
          f"retry hints {report['retry_hints']}, {report['events']} events, {report['comments']} comments")
    print(f"idle {args.idle:g} s:             {report['idle comments']} comments, longest silence on a stream "
          f"{report['max silence']:.1f} s, {report['streams silent too long']} streams silent > "
          f"{KEEPALIVE_PROMISE + 1:g} s")
    violations = report["violations"]
    kinds = {}
    for violation in violations:
        kind = re.sub(r"[\d.]+", "N", violation)
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"contract violations:  {len(violations)}" + "".join(f"\n  {n} x {kind}" for kind, n in kinds.items()))
    for label, key in (("send phase", "cpu send phase"), ("idle phase", "cpu idle phase")):
        seconds = args.seconds if key == "cpu send phase" else args.idle
        cpu = report[key]
        print(f"CPU, {label + ':':19s}" + ", ".join(f"{name} {used:.1f} s ({used / seconds * 100:.0f}%)"
                                                    for name, used in cpu.items()))
    if report.get("gateway pids at open") != report.get("gateway pids after idle"):
        print(f"WARNING: the server's processes changed during the run: {report.get('gateway pids at open')} -> "
              f"{report.get('gateway pids after idle')} (a worker restarted?)")
    if "poll with streams" in report:
        print(f"nothing-new poll (wrk, {args.poll_connections} connections, {args.poll_seconds} s each): "
              f"{report['poll without streams']} before the streams open, {report['poll with streams']} "
              f"with {report.get('streams_live')} streams open")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--embedded", action="store_true", help="microblog run instead of the real cluster")
    where.add_argument("--url", help="a site already running (skips starting one)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for memory and CPU")
    parser.add_argument("--streams", type=int, help="open streams (default 10000; embedded 1000)")
    parser.add_argument("--users", type=int, default=1000, help="users the streams are spread over")
    parser.add_argument("--senders", type=int, default=4, help="sender users (one thread each)")
    parser.add_argument("--rate", type=float, default=20.0, help="sends per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the send phase")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds after the last send before a delivery is lost")
    parser.add_argument("--idle", type=float, default=30.0, help="length of the idle phase")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between opening and measuring memory")
    parser.add_argument("--workers", type=int, default=2, help="GATEWAY_WORKERS (real mode)")
    parser.add_argument("--signup-threads", type=int, default=16)
    parser.add_argument("--open-concurrency", type=int, default=500, help="streams connecting at once")
    parser.add_argument("--open-timeout", type=float, default=60.0, help="seconds one stream may take to open")
    parser.add_argument("--poll-seconds", type=int, default=0,
                        help="if set, measure the nothing-new poll with wrk this long while the streams are open")
    parser.add_argument("--poll-connections", type=int, default=32)
    parser.add_argument("--keep-logs", action="store_true", help="print where the server logs are and keep them")
    args = parser.parse_args()
    if args.streams is None:
        args.streams = 1000 if args.embedded else 10000
    if args.users > args.streams:
        parser.error("--users must not exceed --streams (every user gets at least one stream)")

    report = {"fd limit": raise_fd_limit()}
    if report["fd limit"] < args.streams + 200:
        print(f"warning: the fd limit {report['fd limit']} is below --streams {args.streams}", file=sys.stderr)
    logs = Path(tempfile.mkdtemp(prefix="push-bench-logs-"))
    start = embedded_site if args.embedded else running_site if args.url else real_site
    try:
        with ExitStack() as stack:
            site = stack.enter_context(start(args, logs))
            prefix = f"pb{os.urandom(3).hex()}"  # new names each run: a running site may have earlier ones
            names = [f"{prefix}u{i}" for i in range(args.users)]
            senders = [f"{prefix}s{i}" for i in range(args.senders)]
            began = time.monotonic()
            signed_in = sign_up_all(site.base, names + senders, args.signup_threads)
            report["signup seconds"] = time.monotonic() - began
            cookies = [cookie_header(browser) for browser, _ in signed_in[:args.users]]
            for browser, _ in signed_in[:args.users]:
                # An idle keep-alive connection holds a server green thread as a stream does
                # (eventlet.wsgi serves at most 1024 connections at once): only cookies stay.
                browser.close()
            since = [latest for _, latest in signed_in[:args.users]]
            sender_sessions = [browser for browser, _ in signed_in[args.users:]]
            report["sender since"] = signed_in[args.users][1]

            def cpu_groups():
                groups = {"server": site.pids(), "bench client": [os.getpid()]}
                groups.update(site.others)
                if not args.embedded and not args.url:
                    groups["RabbitMQ"] = processes_named("beam.smp")
                    groups["PostgreSQL"] = processes_named("postgres:")
                return groups

            report["cpu groups"] = cpu_groups
            try:
                asyncio.run(measure(args, site, names, cookies, since, sender_sessions, report))
            except BaseException:
                if site.log is not None:
                    print(f"server log ({site.log}):\n{site.log.read_text()[-3000:]}", file=sys.stderr)
                raise
            if site.log is not None and "Traceback" in site.log.read_text():
                print(f"note: the server log has tracebacks: {site.log}", file=sys.stderr)
                args.keep_logs = True
        print_report(args, report)
    finally:
        if args.keep_logs:
            print(f"server logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
