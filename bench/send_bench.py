"""Benchmark: sends per second through the gateway's RPC pool to committed events, and
p50/p99 send latency, on RabbitMQ + PostgreSQL with each service in its own process.

    make bench            # or: .venv/bin/python -m bench.send_bench --sends 5000 --concurrency 16
"""
from __future__ import annotations

import uuid

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore")

import os  # noqa: E402

from bench.common import CpuMeter, databases, percentile, processes_named, services, vhost  # noqa: E402
from kernel.rpc_pool import RpcPool  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1, help="messages service processes (scale-out)")
    args = parser.parse_args()

    with vhost() as amqp_uri, databases("users", "messages") as urls, tempfile.TemporaryDirectory() as logs:
        env = {"AMQP_URI": amqp_uri, "USERS_DATABASE_URL": urls["users"], "MESSAGES_DATABASE_URL": urls["messages"],
               "PYTHONWARNINGS": "ignore"}
        with services(["users"] + ["messages"] * args.instances, env, Path(logs)):
            pool = RpcPool({"AMQP_URI": amqp_uri}, size=args.concurrency, timeout=30)
            susan = pool.users.register("susan", "susan@example.com", "correct horse battery")
            john = pool.users.register("john", "john@example.com", "correct horse battery")
            for _ in range(50):  # warm up connections and workers
                pool.messages.send_message(susan["id"], john["id"], "warm-up", idempotency_key=uuid.uuid4().hex)
            start_head = pool.messages.head()

            latencies = []
            remaining = [args.sends]

            def sender():
                while remaining[0] > 0:
                    remaining[0] -= 1
                    began = time.perf_counter()
                    pool.messages.send_message(susan["id"], john["id"], "benchmark message", idempotency_key=uuid.uuid4().hex)
                    latencies.append(time.perf_counter() - began)

            meter = CpuMeter({
                "messages service": services.pids["messages"],
                "users service": services.pids["users"],
                "benchmark client (RPC pool)": [os.getpid()],
                "RabbitMQ": processes_named("beam.smp"),
                "PostgreSQL": processes_named("postgres:"),
            })
            meter.start()
            began = time.perf_counter()
            workers = [eventlet.spawn(sender) for _ in range(args.concurrency)]
            for worker in workers:
                worker.wait()
            elapsed = time.perf_counter() - began
            cpu = meter.stop()
            committed = pool.messages.head() - start_head
            pool.stop()

    print(f"sends:               {len(latencies)} ({args.concurrency} concurrent callers, RPC pool of "
          f"{args.concurrency}, {args.instances} messages service processes)")
    print(f"committed events:    {committed}")
    print(f"throughput:          {len(latencies) / elapsed:.0f} sends/s")
    print(f"latency p50:         {percentile(latencies, 0.50) * 1000:.1f} ms")
    print(f"latency p99:         {percentile(latencies, 0.99) * 1000:.1f} ms")
    print("CPU per send:        " + ", ".join(f"{name} {seconds / len(latencies) * 1e3:.2f} ms"
                                             for name, seconds in cpu.items()))
    assert committed == len(latencies), "every acknowledged send must be a committed event"


if __name__ == "__main__":
    main()
