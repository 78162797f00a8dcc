"""The embedded system: every service and the gateway in one process.

SQLite files under a data folder, kombu's in-memory transport (with the shims in
``kernel.memory_transport``) instead of RabbitMQ: nothing to install but Python. The
caller must have run ``eventlet.monkey_patch()`` first.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from deploy.registry import SERVICES, migrate
from kernel import logs, memory_transport

EMBEDDED_AMQP_URI = "embedded://"
LOCK_FILE = "microblog.lock"
EMBEDDED_CONNECTIONS = 10_000


class DataFolderInUse(Exception):
    """Another process runs the embedded system on this data folder."""

    def __init__(self, data_dir: Path, pid: str):
        self.data_dir, self.pid = data_dir, pid
        holder = f" (pid {pid})" if pid else ""
        super().__init__(f"data folder {data_dir} is in use by another microblog run{holder}")


class DataFolderLock:
    """An exclusive ``flock`` on ``<data folder>/microblog.lock``, held while the system runs.

    Two embedded systems on one folder would each have their own in-memory broker: the
    second's pages and polls would miss the first's messages. The kernel releases the lock
    when its holder exits in any way, kill -9 included, so a stale lock file is harmless:
    only the lock counts, and the pid written in the file is there for the message.
    """

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "DataFolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DataFolderInUse(self.path.parent, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def embedded_config(data_dir: Path) -> dict:
    config = {"AMQP_URI": EMBEDDED_AMQP_URI, "DB_POOL_SIZE": 1, "max_workers": 10, "FEED_CHECK_INTERVAL": 3.0}
    for spec in SERVICES.values():
        config[spec.database_key] = f"sqlite:///{data_dir / (spec.name + '.db')}"
    return config


class EmbeddedSystem:
    """Services started in this process, plus a gateway app wired to them."""

    def __init__(self, data_dir: Path, secret_key: str | None = None, poll_interval: float = 10.0):
        self.data_dir = Path(data_dir).resolve()
        self.secret_key = secret_key
        self.poll_interval = poll_interval
        self.config = embedded_config(self.data_dir)
        self.runner = None
        self.app = None
        self.lock = DataFolderLock(self.data_dir)

    def start(self):
        """Start everything; ``DataFolderInUse`` if another process runs on this data folder."""
        from nameko.runners import ServiceRunner

        from gateway import create_app
        from gateway.settings import GatewaySettings, _avatars, api_token_lifetime, persistent_secret_key
        from kernel.settings import env_str
        from kernel.metrics import InstrumentedRpcPool

        memory_transport.register()
        logs.install()  # expected errors (an unknown user ...): one clipped line, no traceback
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        for spec in SERVICES.values():
            migrate(spec, self.config[spec.database_key])
        self.runner = ServiceRunner(self.config)
        for spec in SERVICES.values():
            self.runner.add_service(spec.service_class())
        self.runner.start()
        settings = GatewaySettings(
            secret_key=self.secret_key or persistent_secret_key(self.data_dir),
            amqp_uri=EMBEDDED_AMQP_URI,
            poll_interval=self.poll_interval,
            # Avatars drawn here unless AVATARS says otherwise: nothing fetched from outside.
            avatars=_avatars(env_str("AVATARS", "local")),
            api_token_lifetime=api_token_lifetime(),
        )
        self.rpc = InstrumentedRpcPool({"AMQP_URI": EMBEDDED_AMQP_URI}, size=settings.rpc_pool_size, timeout=settings.rpc_timeout)
        self.app = create_app(settings, rpc=self.rpc)
        return self

    def stop(self):
        if self.app is not None:
            self.app.extensions["hub"].stop()  # open streams end; browsers come back later
            self.rpc.stop()
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        self.lock.release()

    def serve(self, host: str, port: int, log=None):
        """Serve the gateway on host:port with eventlet's WSGI server until interrupted."""
        import eventlet
        import eventlet.wsgi

        # Every open page holds a push stream: room for thousands of connections (eventlet
        # caps them at 1024 by default), and a backlog for a burst of reconnects.
        listener = eventlet.listen((host, port), backlog=1024)
        eventlet.wsgi.server(listener, self.app, log=log, log_output=log is not None, max_size=EMBEDDED_CONNECTIONS)
