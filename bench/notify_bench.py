"""Benchmarks of the notifications path (issue 4), on RabbitMQ + PostgreSQL, each service
in its own process:

    python -m bench.notify_bench latency   # send-to-visible at 100 sends/s: p50/p99
    python -m bench.notify_bench replay    # replay of 1,000,000 events: events/s
    python -m bench.notify_bench poll      # "nothing new" polls through the gateway: requests/s (needs wrk)
"""
from __future__ import annotations

import uuid

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import eventlet.queue  # noqa: E402

warnings.filterwarnings("ignore")

from bench.common import MICROBLOG, databases, percentile, services, vhost  # noqa: E402
from kernel.rpc_pool import RpcPool  # noqa: E402

PASSWORD = "correct horse battery"
ALL = ("users", "messages", "notifications")


def _env(amqp_uri, urls):
    return {"AMQP_URI": amqp_uri, "PYTHONWARNINGS": "ignore",
            **{f"{name.upper()}_DATABASE_URL": url for name, url in urls.items()}}


def latency(args):
    with vhost() as amqp_uri, databases(*ALL) as urls, tempfile.TemporaryDirectory() as logs:
        with services(list(ALL) + ["notifications"] * (args.instances - 1), _env(amqp_uri, urls), Path(logs)):
            pool = RpcPool({"AMQP_URI": amqp_uri}, size=32, timeout=30)
            sender = pool.users.register("sender", "sender@example.com", PASSWORD)["id"]
            recipients = [pool.users.register(f"r{i}", f"r{i}@example.com", PASSWORD)["id"] for i in range(args.recipients)]
            for r in recipients:  # warm up, then start every count from zero
                pool.messages.send_message(sender, r, "warm-up", idempotency_key=uuid.uuid4().hex)
                pool.messages.mark_inbox_read(r)
            time.sleep(1)
            # Visibility: the gateway shows a change once it hears the NotificationChanged
            # broadcast the notifications service publishes after each commit (before that
            # its "nothing new" shortcut may still answer []). So the watcher listens to
            # that broadcast like a gateway does, and on each one reads the recipient's row:
            # a sent message counts as visible at the first broadcast after which the row
            # shows it. That is after the commit, so it never flatters the figure, and it
            # puts no load on the services (a 1 ms poll of the table ran ~1000 queries/s on
            # the machine being measured).
            from kombu import Connection, Consumer, Exchange, Queue
            from sqlalchemy import text

            from kernel.db import create_db_engine, dispose
            from kernel.events import Event

            watcher = create_db_engine(urls["notifications"], pool_size=1)
            sent = {r: 0 for r in recipients}
            waiting = {}  # recipient -> list of (expected count, began)
            latencies = []
            done = [False]
            # (user_id, row timestamp announced, when) in arrival order; the watcher blocks on
            # it (polling it every millisecond cost the machine being measured ~10% of a core)
            heard = eventlet.queue.LightQueue()

            def on_changed(body, message):
                changed = Event.from_dict(body)
                heard.put((changed.user_id, changed.timestamp, time.perf_counter()))
                message.ack()

            def listen():
                exchange = Exchange("notifications.events", type="topic", durable=True)
                with Connection(amqp_uri) as connection:
                    queue = Queue(exchange=exchange, routing_key="NotificationChanged", exclusive=True, auto_delete=True)
                    with Consumer(connection, queues=[queue], callbacks=[on_changed], accept=["json"]):
                        listening.send(True)
                        while not done[0] or waiting:
                            try:
                                connection.drain_events(timeout=0.2)
                            except TimeoutError:
                                pass

            def watch():
                with watcher.connect() as connection:
                    while not done[0] or waiting:
                        try:
                            user_id, announced, when = heard.get(timeout=0.2)
                        except eventlet.queue.Empty:
                            continue
                        if user_id not in waiting:
                            continue
                        row = connection.execute(
                            text("SELECT payload_json, timestamp FROM notifications WHERE user_id = :id"
                                 " AND name = 'unread_message_count'"), {"id": user_id}).one_or_none()
                        connection.commit()
                        if row is not None and row.timestamp > announced:
                            # A later change committed since this broadcast: its count is
                            # not what this broadcast made visible. That change's own
                            # broadcast (later) will credit it, so this never flatters.
                            continue
                        payload = row.payload_json if row is not None else None
                        pending = waiting.get(user_id, [])
                        while payload is not None and pending and int(payload) >= pending[0][0]:
                            latencies.append(when - pending.pop(0)[1])
                        if not pending:
                            waiting.pop(user_id, None)

            send_latencies = []

            def one(recipient, expected):
                began = time.perf_counter()
                # Waited for from the start: the broadcast may come before the reply does.
                waiting.setdefault(recipient, []).append((expected, began))
                pool.messages.send_message(sender, recipient, "benchmark", idempotency_key=uuid.uuid4().hex)
                send_latencies.append(time.perf_counter() - began)

            listening = eventlet.Event()
            listener_thread = eventlet.spawn(listen)
            listening.wait()
            watcher_thread = eventlet.spawn(watch)
            workers = []
            interval = 1.0 / args.rate
            began = time.perf_counter()
            for n in range(args.sends):
                recipient = recipients[n % len(recipients)]
                sent[recipient] += 1
                workers.append(eventlet.spawn(one, recipient, sent[recipient]))
                eventlet.sleep(max(0.0, began + (n + 1) * interval - time.perf_counter()))
            for worker in workers:
                worker.wait()
            elapsed = time.perf_counter() - began
            done[0] = True
            try:
                with eventlet.Timeout(30):
                    watcher_thread.wait()
                    listener_thread.wait()
            except eventlet.Timeout:
                raise SystemExit(f"the projection never showed the expected counts for users {sorted(waiting)}: "
                                 "a correctness bug, not a slow run") from None
            dispose(watcher)
            endpoint = []
            for r in recipients * 10:
                t = time.perf_counter()
                pool.notifications.notifications_since(r, 0)
                endpoint.append(time.perf_counter() - t)
            pool.stop()
    print(f"sends:               {args.sends} at {args.rate}/s target ({args.sends / elapsed:.0f}/s achieved), "
          f"{args.recipients} recipients, {args.instances} notifications service processes")
    print(f"send-to-visible p50: {percentile(latencies, 0.50) * 1000:.1f} ms")
    print(f"send-to-visible p99: {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"of which the send itself (until committed): p50 {percentile(send_latencies, 0.50) * 1000:.1f} ms, "
          f"p99 {percentile(send_latencies, 0.99) * 1000:.1f} ms")
    print(f"(sent until the broadcast after which the recipient's row shows it, which is when a gateway "
          f"stops answering 'nothing new'; one notifications_since call, what /notifications then makes, "
          f"adds p50 {percentile(endpoint, 0.5) * 1000:.1f} ms)")


SEED_SQL = """
INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data)
SELECT n, gen_random_uuid()::text,
       CASE WHEN n % 10 = 0 THEN 'InboxRead' ELSE 'MessageSent' END, 1,
       TIMESTAMPTZ '2026-11-24 00:00:00+00' + n * INTERVAL '1 millisecond',
       CASE WHEN n % 10 = 0 THEN json_build_object('user_id', 1 + n % :users)::text
            ELSE json_build_object('sender_id', 1 + (n * 7) % :users, 'recipient_id', 1 + n % :users, 'body', 'x')::text END
FROM generate_series(1, :events) AS n;
UPDATE counters SET position = :events;
"""


def replay(args):
    from sqlalchemy import text

    from deploy.registry import SERVICES
    from kernel.db import create_db_engine, dispose
    from kernel.migrations import upgrade
    from kernel.projector import json_feed
    from kernel.rpc import ClusterRpcProxy
    from services.notifications.replay import rebuild
    from services.notifications.storage import STORAGE

    with vhost() as amqp_uri, databases("messages", "notifications") as urls, tempfile.TemporaryDirectory() as logs:
        for name, url in urls.items():
            upgrade(SERVICES[name].migrations, url)
        engine = create_db_engine(urls["messages"], pool_size=1)
        seeded = time.perf_counter()
        with engine.begin() as connection:
            for statement in SEED_SQL.split(";\n"):
                if statement.strip():
                    connection.execute(text(statement), {"events": args.events, "users": args.users})
        dispose(engine)
        print(f"seeded {args.events} events for {args.users} users in {time.perf_counter() - seeded:.1f} s "
              "(written straight into the log: this measures the replay, not the sends)")
        with services(["messages"], _env(amqp_uri, urls), Path(logs)):
            # A proxy as `microblog replay notifications` makes one (deploy/cli.py)
            proxy = ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60)
            rpc = proxy.start()
            engine = create_db_engine(urls["notifications"], pool_size=2)
            messages_pid = services.pids["messages"][0]
            cpu_before, service_before, machine_before = os.times(), _cpu_seconds(messages_pid), _machine()
            began = time.perf_counter()
            position = rebuild(lambda: STORAGE.open(engine), json_feed(rpc.messages.events_after_json))
            elapsed = time.perf_counter() - began
            cpu = os.times()
            replayer_cpu = cpu.user + cpu.system - cpu_before.user - cpu_before.system
            service_cpu = _cpu_seconds(messages_pid) - service_before
            machine = [after - before for after, before in zip(_machine(), machine_before)]
            dispose(engine)
            proxy.stop()
    print(f"replayed:            {position} events in {elapsed:.1f} s")
    print(f"replay rate:         {position / elapsed:.0f} events/s")
    print(f"CPU per event:       replaying process {replayer_cpu / position * 1e6:.2f} us "
          f"(busy {replayer_cpu / elapsed:.0%} of the time), messages service {service_cpu / position * 1e6:.2f} us")
    # /proc/stat: user nice system idle iowait irq softirq steal
    print(f"machine:             busy {1 - (machine[3] + machine[4]) / sum(machine[:8]):.0%} of its {os.cpu_count()} cores "
          f"(every process, other work included), steal {machine[7] / sum(machine[:8]):.0%}")


def _machine():
    """The machine's CPU time so far, by kind (the first line of /proc/stat)."""
    return [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def _cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(args):
    import requests

    port = _free_port()
    with vhost() as amqp_uri, databases(*ALL) as urls, tempfile.TemporaryDirectory() as logs:
        env = {**_env(amqp_uri, urls), "SECRET_KEY": "benchmark-secret", "PORT": str(port),
               "GATEWAY_WORKERS": str(args.workers), "GATEWAY_THREADS": str(args.threads), "GATEWAY_ACCESS_LOG": "/dev/null"}
        with services(list(ALL), env, Path(logs)):
            gateway = subprocess.Popen([MICROBLOG, "serve", "gateway", "--host", "127.0.0.1"], env={**os.environ, **env},
                                       stdout=open(Path(logs) / "gateway.log", "w"), stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                browser = requests.Session()
                for _ in range(100):
                    try:
                        page = browser.get(base + "/auth/register", timeout=2)
                        break
                    except requests.ConnectionError:
                        time.sleep(0.2)
                token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
                browser.post(base + "/auth/register", data={"csrf_token": token, "username": "susan", "email": "s@example.com",
                                                            "password": PASSWORD, "password2": PASSWORD})
                token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', browser.get(base + "/auth/login").text).group(1)
                browser.post(base + "/auth/login", data={"csrf_token": token, "username": "susan", "password": PASSWORD})
                latest = max([n["timestamp"] for n in browser.get(base + "/notifications").json()], default=0)
                cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
                url = f"{base}/notifications?since={latest!r}"
                assert browser.get(url).json() == []
                result = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                                         "-H", f"Cookie: {cookie}", url], capture_output=True, text=True)
                print(result.stdout)
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    print(f"nothing-new polls:   {float(rate.group(1)):.0f} requests/s "
          f"(gunicorn {args.workers} workers x {args.threads} threads, {args.connections} connections)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--sends", type=int, default=2000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--recipients", type=int, default=20)
    p.add_argument("--instances", type=int, default=1, help="notifications service processes (scale-out)")
    p.set_defaults(run=latency)
    p = sub.add_parser("replay")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=1000)
    p.set_defaults(run=replay)
    p = sub.add_parser("poll")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(run=poll)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
