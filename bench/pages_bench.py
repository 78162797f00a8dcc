"""Benchmark: requests/s per page and form sends/s for two checkouts side by side (issue 13).

    .venv/bin/python -m bench.pages_bench --a /work/wt/base740 --b .
    .venv/bin/python -m bench.pages_bench --a ../old --b . --seconds 10 --rounds 4 --json pages.json
    .venv/bin/python -m bench.pages_bench --a ../old --b . --pages index,messages --seconds 3 --rounds 1

Each side, A and B, is a checkout with its own ``.venv`` (``make install translations``)
and runs a full real-mode stack of its own, from its own ``.venv/bin/microblog``: a
private RabbitMQ vhost, fresh PostgreSQL databases, ``microblog serve users|messages|
notifications`` as their own processes and ``microblog serve gateway`` (gunicorn,
``GATEWAY_WORKERS`` = ``--workers`` on both sides). Both stacks stay up for the whole
run; RabbitMQ and PostgreSQL themselves are the same servers for both.

On each stack, through the pages: registers and signs in ``susan`` (the measured user)
and ``john``; john sends susan 30 messages with the send form (so susan's inbox holds 30
and her badge says 30 before the first Messages page). Then, page by page, with susan's
session cookie:

* ``/index``, ``/user/john``, ``/send_message/john`` (GET), ``/messages`` (marks the inbox
  read and renders the first page, 25 of the 30), ``/notifications?since=0``: wrk with
  ``--connections`` connections (16) and 2 threads, requests/s;
* form sends: ``--senders`` client threads (4), each with its own ``requests.Session``
  signed in as susan, each cycle a full GET /send_message/john -> POST (CSRF token and
  idempotency key from the form) -> follow the 302 to /user/john; completed sends/s.
  They go to john, so susan's inbox stays at 30.

Each measurement is ``--warmup`` seconds (not counted) then ``--seconds`` seconds, and
the sides alternate page by page, A,B then B,A in the next round (``--rounds``, 2 by
default: A,B,B,A), so the machine's drift hits both. The figure per side is the mean
over rounds (each round's figure is printed next to it).

CPU: per measurement, the CPU seconds each process group used (from /proc/<pid>/stat;
wrk from this process's waited-for children) divided by the requests served: gateway
(gunicorn master + workers), users, messages, notifications, RabbitMQ (beam.smp, shared
by both stacks), PostgreSQL (the backends of this stack's databases plus the server's
own processes: WAL writer, checkpointer ...), the client (wrk, or this process for the
form sends), the other side's idle stack, and the rest of the machine (all busy CPU from
/proc/stat minus the groups above: other work on the VM, which makes a run noisy).
"""
from __future__ import annotations

import argparse
import json
import os
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
from dataclasses import dataclass, field
from pathlib import Path

import requests

warnings.filterwarnings("ignore")

from bench.common import cpu_seconds, databases, processes_named, services, stop_process, vhost  # noqa: E402
from bench.push_bench import HIDDEN, cookie_header, descendants, sign_up  # noqa: E402

ALL = ("users", "messages", "notifications")
USER, PEER = "susan", "john"
INBOX = 30
PAGES = {  # key: (label, path); None: the form-send cycle
    "index": ("/index", "/index"),
    "user": ("/user/<name>", f"/user/{PEER}"),
    "send_message": ("/send_message/<name>", f"/send_message/{PEER}"),
    "messages": ("/messages", "/messages"),
    "notifications": ("/notifications?since=0", "/notifications?since=0"),
    "form_sends": ("form sends (sends/s)", None),
}
GROUPS = ("gateway", "users", "messages", "notifications", "RabbitMQ", "PostgreSQL", "client", "idle stack",
          "rest of machine")


@dataclass
class Stack:
    label: str
    checkout: Path
    base: str
    gateway: subprocess.Popen
    pids: dict[str, list[int]]
    database_names: list[str]
    cookie: str = ""
    page_bytes: dict[str, int] = field(default_factory=dict)
    browsers: list[requests.Session] = field(default_factory=list)

    def process_groups(self) -> dict[str, list[int]]:
        return {"gateway": [self.gateway.pid, *descendants(self.gateway.pid)], **{n: self.pids[n] for n in ALL}}

    def postgres_pids(self) -> list[int]:
        """The backends serving this stack's databases, and the server's own processes
        (postmaster, checkpointer, WAL writer ...), not other databases' backends."""
        found = []
        for pid, command in cmdlines().items():
            if command.startswith("postgres: "):
                words = command.split()
                if "(" not in command or any(name in words for name in self.database_names):
                    found.append(pid)
            elif "/bin/postgres " in command or command.endswith("/bin/postgres"):
                found.append(pid)
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cmdlines() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore").strip()
            except OSError:
                pass
    return found


class Meter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``: per pid,
    so a process that ends (or starts) in between counts 0, not minus what it had used."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def start(self):
        self.before = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        after = {pid: cpu_seconds(pid) for pid in self.before}
        return {name: sum(max(0.0, after[pid] - self.before[pid]) for pid in set(pids) if after[pid] > 0)
                for name, pids in self.groups.items()}


def _hidden(html: str) -> dict[str, str]:
    return dict(HIDDEN.findall(html))


@contextmanager
def stack(label: str, checkout: Path, workers: int, logs: Path):
    """A full real-mode stack run from ``checkout``'s own ``.venv/bin/microblog``."""
    microblog = checkout / ".venv" / "bin" / "microblog"
    if not microblog.exists():
        raise SystemExit(f"{label}: {microblog} does not exist (make install in {checkout})")
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    with vhost() as amqp_uri, databases(*ALL) as urls:
        env = {"AMQP_URI": amqp_uri, "PYTHONWARNINGS": "ignore", "SECRET_KEY": f"pages-bench-{label}",
               "PORT": str(port), "GATEWAY_WORKERS": str(workers), "GATEWAY_ACCESS_LOG": "/dev/null",
               **{f"{name.upper()}_DATABASE_URL": url for name, url in urls.items()}}
        # A PYTHONPATH of this process would make the other checkout's commands import this
        # one's code: off while its processes start (services() passes on os.environ).
        saved = {k: os.environ.pop(k) for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") if k in os.environ}
        try:
            with services(list(ALL), env, logs, microblog=str(microblog), cwd=str(checkout)) as pids:
                log = logs / "gateway.log"
                gateway = subprocess.Popen([str(microblog), "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)],
                                           env={**os.environ, **env}, cwd=str(checkout), stdout=open(log, "w"),
                                           stderr=subprocess.STDOUT)
                try:
                    base = f"http://127.0.0.1:{port}"
                    _wait_until_up(base, gateway, log)
                    yield Stack(label, checkout, base, gateway, dict(pids),
                                [url.rsplit("/", 1)[1] for url in urls.values()])
                finally:
                    stop_process(gateway)
        finally:
            os.environ.update(saved)


def _wait_until_up(base: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(base + "/auth/register", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway at {base} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


# ------------------------------------------------------------------------- data

def send_form(browser: requests.Session, base: str, recipient: str, text: str) -> None:
    """One full form send: GET the form, POST it, follow the redirect; raises unless it worked."""
    page = browser.get(f"{base}/send_message/{recipient}", timeout=30)
    page.raise_for_status()
    answer = browser.post(f"{base}/send_message/{recipient}", timeout=30,
                          data={**_hidden(page.text), "message": text, "submit": "Submit"})
    if answer.status_code != 200 or not answer.history or answer.history[0].status_code != 302:
        raise RuntimeError(f"send to {recipient}: {answer.status_code} {[r.status_code for r in answer.history]} "
                           f"{answer.text[:300]!r}")


def set_up(site: Stack, senders: int) -> None:
    """susan and john, signed in; 30 messages from john in susan's inbox; susan's cookie."""
    susan, _ = sign_up(site.base, USER)
    john, _ = sign_up(site.base, PEER)
    for number in range(INBOX):
        send_form(john, site.base, USER, f"message {number + 1} of {INBOX}")
    deadline = time.monotonic() + 30
    while True:  # the badge comes from the notifications projection, a moment behind
        rows = susan.get(f"{site.base}/notifications?since=0", timeout=30).json()
        count = max([row["data"] for row in rows if row["name"] == "unread_message_count"], default=0)
        if count == INBOX:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{site.label}: susan's badge says {count}, not {INBOX}")
        time.sleep(0.1)
    site.cookie = cookie_header(susan)
    for _ in range(senders):
        browser = requests.Session()
        browser.cookies.update(susan.cookies)
        site.browsers.append(browser)
    for key, (_, path) in PAGES.items():  # every page answers 200 to susan, no redirect to the login
        if path:
            answer = requests.get(site.base + path, headers={"Cookie": site.cookie}, allow_redirects=False, timeout=30)
            if answer.status_code != 200:
                raise RuntimeError(f"{site.label} {path}: {answer.status_code} {answer.text[:300]!r}")
            site.page_bytes[key] = len(answer.content)
    inbox = requests.get(f"{site.base}/messages", headers={"Cookie": site.cookie}, timeout=30).text
    if inbox.count("message ") < 25 or f"of {INBOX}" not in inbox:
        raise RuntimeError(f"{site.label}: /messages does not show susan's inbox")


# ----------------------------------------------------------------- measurements

def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, cookie: str, seconds: float, connections: int) -> dict:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
               "-H", f"Cookie: {cookie}", url]
    result = subprocess.run(command, capture_output=True, text=True)
    out = result.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if result.returncode != 0 or not rate or not total:
        raise RuntimeError(f"wrk failed on {url}: {out}{result.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def latency(percent):
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return None
        return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]

    return {"rate": float(rate.group(1)), "count": int(total.group(1)),
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
            "p50_ms": latency(50), "p99_ms": latency(99)}


def run_sends(site: Stack, seconds: float) -> dict:
    """Form sends from len(site.browsers) threads for ``seconds``: completed sends/s."""
    stop_at = time.monotonic() + seconds
    counts, failures = [0] * len(site.browsers), []

    def sender(index: int, browser: requests.Session):
        while time.monotonic() < stop_at:
            try:
                send_form(browser, site.base, PEER, "benchmark message")
                counts[index] += 1
            except Exception as exc:  # counted and shown, not fatal: a slow spell must not end the run
                failures.append(repr(exc)[:200])

    began = time.monotonic()
    threads = [threading.Thread(target=sender, args=(i, b)) for i, b in enumerate(site.browsers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    return {"rate": sum(counts) / elapsed, "count": sum(counts), "errors": len(failures),
            "error_sample": failures[:3], "p50_ms": None, "p99_ms": None}


def measure(site: Stack, other: Stack, key: str, args) -> dict:
    _, path = PAGES[key]
    url = site.base + path if path else None
    if args.warmup > 0:
        run_wrk(url, site.cookie, args.warmup, args.connections) if url else run_sends(site, args.warmup)
    groups = site.process_groups()
    groups["RabbitMQ"] = processes_named("beam.smp")
    groups["PostgreSQL"] = site.postgres_pids()
    groups["idle stack"] = [pid for pids in other.process_groups().values() for pid in pids]
    meter = Meter(groups)
    client_before = cpu_children() if url else cpu_self()
    busy_before = machine_busy()
    meter.start()
    began = time.monotonic()
    result = run_wrk(url, site.cookie, args.seconds, args.connections) if url else run_sends(site, args.seconds)
    cpu = meter.stop()
    elapsed = time.monotonic() - began
    cpu["client"] = (cpu_children() if url else cpu_self()) - client_before
    cpu["rest of machine"] = max(0.0, machine_busy() - busy_before - sum(cpu.values()))
    result["cpu_seconds"] = {name: cpu[name] for name in GROUPS}
    # The share of the machine's cores that went to other work meanwhile: noise.
    result["other_work_share"] = cpu["rest of machine"] / (elapsed * (os.cpu_count() or 1))
    return result


# ---------------------------------------------------------------------- report

def mean(values):
    return sum(values) / len(values) if values else 0.0


def print_report(args, stacks, results, pages) -> None:
    a, b = stacks
    print()
    print(f"A: {a.checkout} ({git_head(a.checkout)})")
    print(f"B: {b.checkout} ({git_head(b.checkout)})")
    print(f"{args.workers} gateway workers each; wrk -t2 -c{args.connections}; form sends from {args.senders} threads; "
          f"{args.warmup:g} s warm-up + {args.seconds:g} s per measurement, {args.rounds} round(s), sides alternated")
    print()
    print(f"{'page':26s} {'A req/s':>9s} {'B req/s':>9s} {'B/A':>6s}   {'bytes A | B':>15s}   rounds A | rounds B")
    for key in pages:
        label, _ = PAGES[key]
        ra = [r["rate"] for r in results[key]["A"]]
        rb = [r["rate"] for r in results[key]["B"]]
        ratio = mean(rb) / mean(ra) if mean(ra) else float("nan")
        errors = sum(r["errors"] for side in "AB" for r in results[key][side])
        note = f"   ERRORS: {errors}" if errors else ""
        size = f"{a.page_bytes.get(key, 0)} | {b.page_bytes.get(key, 0)}" if PAGES[key][1] else "-"
        print(f"{label:26s} {mean(ra):9.1f} {mean(rb):9.1f} {ratio:6.2f}   {size:>15s}   "
              f"{' '.join(f'{v:.0f}' for v in ra)} | {' '.join(f'{v:.0f}' for v in rb)}{note}")
    print()
    print("Latency p50/p99 (wrk, ms):")
    for key in pages:
        if PAGES[key][1] is None:
            continue
        cells = []
        for side in "AB":
            p50 = mean([r["p50_ms"] or 0 for r in results[key][side]])
            p99 = mean([r["p99_ms"] or 0 for r in results[key][side]])
            cells.append(f"{side} {p50:6.1f} / {p99:6.1f}")
        print(f"  {PAGES[key][0]:24s} " + "   ".join(cells))
    print()
    print("CPU per request (per send for form sends), ms, over all rounds. RabbitMQ and PostgreSQL serve both")
    print("stacks; 'idle stack' is the other side's processes meanwhile; 'rest of machine' is all other busy CPU.")
    short = {"notifications": "notifs", "RabbitMQ": "rabbit", "PostgreSQL": "postgres", "idle stack": "idle",
             "rest of machine": "rest"}
    names = [short.get(g, g) for g in GROUPS]
    print(f"{'page':26s} {'':2s}" + "".join(f"{n:>9s}" for n in names) + f"{'total':>9s}")
    for key in pages:
        for side in "AB":
            runs = results[key][side]
            count = sum(r["count"] for r in runs) or 1
            per = {g: sum(r["cpu_seconds"][g] for r in runs) / count * 1e3 for g in GROUPS}
            own = sum(v for g, v in per.items() if g not in ("idle stack", "rest of machine"))
            label = PAGES[key][0] if side == "A" else ""
            print(f"{label:26s} {side:2s}" + "".join(f"{per[g]:9.2f}" for g in GROUPS) + f"{own:9.2f}")
    print("(total: the page's own stack + RabbitMQ + PostgreSQL + client, without idle/rest)")
    shares = [r["other_work_share"] for key in pages for side in "AB" for r in results[key][side]]
    print(f"Other work on the machine during the measurements: {mean(shares):.0%} of the cores on average "
          f"(max {max(shares):.0%})" + ("; the figures are noisy, run again on a quieter machine"
                                         if mean(shares) > 0.10 else ""))


def git_head(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()[:70]
    except (OSError, subprocess.SubprocessError):
        return "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, type=Path, help="checkout A (with its own .venv), e.g. the baseline")
    parser.add_argument("--b", required=True, type=Path, help="checkout B (with its own .venv)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="not counted, before each measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="A,B then B,A ... per page (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--senders", type=int, default=4, help="form-send client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="GATEWAY_WORKERS on both sides (default 2)")
    parser.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated subset of {','.join(PAGES)}")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stacks' logs and print where")
    args = parser.parse_args()
    pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    unknown = [p for p in pages if p not in PAGES]
    if unknown:
        parser.error(f"unknown page(s) {unknown}; choose from {list(PAGES)}")
    if shutil.which("wrk") is None and any(PAGES[p][1] for p in pages):
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")

    logs = Path(tempfile.mkdtemp(prefix="pages-bench-"))
    results = {key: {"A": [], "B": []} for key in pages}
    try:
        with ExitStack() as exits:
            started = time.monotonic()
            a = exits.enter_context(stack("A", args.a.resolve(), args.workers, logs / "A"))
            b = exits.enter_context(stack("B", args.b.resolve(), args.workers, logs / "B"))
            for site in (a, b):
                set_up(site, args.senders)
            print(f"stacks up and data set up in {time.monotonic() - started:.0f} s "
                  f"(A {a.base}, B {b.base}; logs in {logs})", flush=True)
            for key in pages:
                for round_number in range(args.rounds):
                    order = (a, b) if round_number % 2 == 0 else (b, a)
                    for site in order:
                        other = b if site is a else a
                        result = measure(site, other, key, args)
                        results[key][site.label].append(result)
                        print(f"  {PAGES[key][0]:26s} round {round_number + 1} {site.label}: {result['rate']:8.1f}/s"
                              f"   other work on the machine: {result['other_work_share']:4.0%} of the cores"
                              + (f"  ({result['errors']} errors)" if result["errors"] else ""), flush=True)
            print_report(args, (a, b), results, pages)
            if args.json:
                args.json.write_text(json.dumps({
                    "a": {"checkout": str(a.checkout), "commit": git_head(a.checkout)},
                    "b": {"checkout": str(b.checkout), "commit": git_head(b.checkout)},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "pages": {key: {"label": PAGES[key][0], "path": PAGES[key][1],
                                    "bytes": {"A": a.page_bytes.get(key), "B": b.page_bytes.get(key)},
                                    **results[key]} for key in pages},
                }, indent=2))
                print(f"figures written to {args.json}")
    finally:
        if args.keep_logs:
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
