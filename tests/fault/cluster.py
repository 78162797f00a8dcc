"""The real system as separate processes (``microblog serve ...``), for fault tests: each
service and the gateway in its own process group, so a test can kill -9 one, restart it,
and point any of them at a ``TcpProxy`` instead of the real broker or database."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.helpers import http_send_form, http_sign_in
from tests.waiting import wait_until
from tests.system.test_commands import MICROBLOG, free_port, start, stop

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SERVICES = ("users", "messages", "notifications")
DATABASE_KEYS = {name: f"{name.upper()}_DATABASE_URL" for name in SERVICES}


class Cluster:
    """``env`` is shared by every process; ``per_process`` adds to (or overrides) it for one
    (e.g. only notifications' database URL through a proxy).

    More gateway processes (``microblog serve gateway`` on ports of their own, e.g. one
    whose broker is behind a proxy and one direct) are added with ``add_gateway``: any
    name starting with ``gateway`` is a gateway, reached at ``base_of(name)``."""

    def __init__(self, tmp_path: Path, env: dict, per_process: dict | None = None):
        self.tmp_path = Path(tmp_path)
        self.port = free_port()
        self.env = {"SECRET_KEY": "fault-test-secret", "PORT": str(self.port), "FEED_CHECK_INTERVAL": "0.5",
                    "GATEWAY_ACCESS_LOG": "", **env}
        self.per_process = per_process or {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}
        self.base = f"http://127.0.0.1:{self.port}"

    def env_of(self, name: str) -> dict:
        return {**self.env, **self.per_process.get(name, {})}

    def add_gateway(self, name: str, **env: str) -> str:
        """One more gateway process named ``name`` (not started: ``launch(name)``), on a free
        port, with ``env`` over the shared settings; returns its base URL."""
        assert is_gateway(name) and name != "gateway", name
        self.per_process[name] = {**self.per_process.get(name, {}), **env, "PORT": str(free_port())}
        return self.base_of(name)

    def base_of(self, name: str = "gateway") -> str:
        return f"http://127.0.0.1:{self.env_of(name)['PORT']}"

    def log_of(self, name: str) -> Path:
        return self.tmp_path / f"{name}.{self.starts.get(name, 0)}.log"

    def launch(self, name: str, wait: bool = True) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        args = ["serve", "gateway", "--host", "127.0.0.1"] if is_gateway(name) else ["serve", name]
        self.processes[name] = start(args, self.env_of(name), self.log_of(name))
        if wait:
            self.wait_healthy(name)
        return self.processes[name]

    def start_all(self) -> "Cluster":
        for name in SERVICES + ("gateway",):
            self.launch(name)
        return self

    def wait_healthy(self, name: str, timeout: float = 60) -> None:
        def healthy() -> bool:
            process = self.processes[name]
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}):\n{self.log_of(name).read_text()[-4000:]}")
            if is_gateway(name):
                return requests.get(self.base_of(name) + "/healthz", timeout=2).status_code == 200
            result = subprocess.run([MICROBLOG, "health", name, "--timeout", "2"],
                                    env={**os.environ, "PYTHONWARNINGS": "ignore", **self.env_of(name)},
                                    capture_output=True, text=True, timeout=30)
            return result.returncode == 0

        wait_until(healthy, timeout=timeout, interval=0.3, ignore=(requests.RequestException,),
                   message=lambda: f"{name} never became healthy:\n{self.log_of(name).read_text()[-4000:]}")

    def kill9(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def dead(self) -> list[str]:
        """Names of processes that exited on their own."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def dead_logs(self) -> str:
        """What each process that exited on its own said last (for a failure's message)."""
        return "\n".join(f"--- {name} exited ({self.processes[name].returncode}):\n"
                         f"{self.log_of(name).read_text()[-4000:]}" for name in self.dead())

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name in reversed(list(self.processes)):
            try:
                codes[name] = stop(self.processes[name])
            except subprocess.TimeoutExpired:
                codes[name] = None
        return codes

    # Browser-side helpers.

    def sign_in(self, username: str, base: str | None = None) -> requests.Session:
        """Register and sign in (through the gateway at ``base``, the first one by default).
        Every gateway shares SECRET_KEY and the users service: the session works on all."""
        return http_sign_in(base or self.base, username)

    def send_form(self, session: requests.Session, recipient: str, base: str | None = None) -> dict:
        """The fields of a fresh send form (CSRF token and whatever hidden fields it has)."""
        return http_send_form(session, base or self.base, recipient)

    def unread(self, session: requests.Session) -> int:
        rows = session.get(self.base + "/notifications?since=0", timeout=30).json()
        return next((row["data"] for row in rows if row["name"] == "unread_message_count"), 0)

    def wait_for_unread(self, session: requests.Session, expected: int, timeout: float = 30) -> None:
        counts = [None]

        def reached() -> bool:
            counts.append(self.unread(session))
            return counts[-1] == expected

        wait_until(reached, timeout=timeout, interval=0.2, ignore=(requests.RequestException, ValueError),
                   message=lambda: f"unread count stayed {counts[-1]}, expected {expected}")


def is_gateway(name: str) -> bool:
    return name.startswith("gateway")
