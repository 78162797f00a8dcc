"""Shared set-up for benchmarks: a private RabbitMQ vhost, fresh PostgreSQL databases,
and services started as their own processes with the ``microblog`` command."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

AMQP = os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
RABBIT_API = os.environ.get("BENCH_RABBIT_API", "http://guest:guest@127.0.0.1:15672")
PG_ADMIN = os.environ.get("BENCH_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
MICROBLOG = str(Path(sys.executable).parent / "microblog")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def vhost():
    name = f"bench_{uuid.uuid4().hex[:8]}"
    requests.put(f"{RABBIT_API}/api/vhosts/{name}", timeout=10).raise_for_status()
    requests.put(f"{RABBIT_API}/api/permissions/{name}/guest", json={"configure": ".*", "write": ".*", "read": ".*"},
                 timeout=10).raise_for_status()
    try:
        yield f"{AMQP}/{name}"
    finally:
        requests.delete(f"{RABBIT_API}/api/vhosts/{name}", timeout=10)


@contextmanager
def databases(*services):
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    names = {service: f"bench_{service}_{uuid.uuid4().hex[:8]}" for service in services}
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield {service: f"{base}/{name}" for service, name in names.items()}
    finally:
        with admin.connect() as connection:
            for name in names.values():
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def services(names, env, log_dir: Path, microblog: str = MICROBLOG, cwd: str | None = None):
    """Start ``microblog serve <name>`` for each name (a name may repeat: more instances).

    Yields ``{name: [pid, ...]}`` (also left in ``services.pids``, for the latest call).
    ``microblog``: the command to run, e.g. another checkout's ``.venv/bin/microblog``."""
    processes = []
    pids = services.pids = {}
    try:
        for number, name in enumerate(names):
            log_path = log_dir / f"{name}-{number}.log"
            process = subprocess.Popen([microblog, "serve", name], env={**os.environ, **env}, cwd=cwd,
                                       stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
            processes.append((name, process))
            pids.setdefault(name, []).append(process.pid)
            deadline = time.monotonic() + 60
            while f"{name} service is running" not in log_path.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
        yield pids
    finally:
        for _, process in processes:
            process.terminate()
        for _, process in processes:
            process.wait(timeout=30)


def stop_process(process, timeout: float = 40) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_named(fragment: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class CpuMeter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def _read(self):
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}

    def start(self):
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {name: after[name] - self.before[name] for name in self.groups}
