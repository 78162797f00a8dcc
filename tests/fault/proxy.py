"""A TCP proxy a test can cut and restore, to put an outage between a process and a
server (RabbitMQ, PostgreSQL) without touching the server itself.

    proxy = TcpProxy(("127.0.0.1", 5672)).start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    proxy.cut()        # every open connection is reset and new ones are refused
    proxy.restore()    # accepts again, on the same port
    proxy.stall()      # connections stay open but nothing passes either way (a hung peer)
    proxy.stop()

Threads (green under the tests' ``eventlet.monkey_patch()``) copy bytes each way; the
listening socket is closed while cut, so a client gets ECONNREFUSED, as it would from a
host whose server is down.
"""
from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._generation = 0
        self.accepted = 0

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
            self._generation += 1
            generation = self._generation
        threading.Thread(target=self._accept, args=(listener, generation), daemon=True,
                         name=f"proxy-accept-{self.port}").start()
        return self

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def _accept(self, listener: socket.socket, generation: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (OSError, EOFError):  # cut: shut down under us (see _wake_and_close)
                _close_quietly(listener)
                return
            if generation != self._generation:
                client.close()
                _close_quietly(listener)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        # Each socket is closed only by the thread that reads it; others only shut it down,
        # which wakes that reader. Under eventlet, a socket closed while another green
        # thread waits on it leaves that thread and its read listener behind for good, and
        # the next socket given the same descriptor number (psycopg2's, in a later test)
        # fails with "Second simultaneous read".
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self._stalled.is_set():
                    time.sleep(0.01)
                sink.sendall(data)
        except (OSError, EOFError):  # eventlet raises EOFError when another thread closed it
            pass
        finally:
            self._shut(sink)  # wakes the pipe reading it, which closes it
            with self._lock:
                self._connections.discard(source)
            _close_quietly(source)

    def _shut(self, sock: socket.socket, reset: bool = False) -> None:
        try:
            if reset:  # RST on close, as a dead host's kernel or a restarted server would answer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.shutdown(socket.SHUT_RD)  # its reader sees the end now; nothing is sent yet
        except OSError:
            pass

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._generation += 1
            connections = list(self._connections)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which closes it
            except OSError:
                _close_quietly(listener)
        for sock in connections:
            self._shut(sock, reset=True)
        self._stalled.clear()

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._stalled.clear()
        if self._listener is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def stall(self) -> None:
        """Keep connections open but pass nothing: a peer that hangs rather than refuses."""
        self._stalled.set()

    def stop(self) -> None:
        self.cut()
        deadline = time.monotonic() + 2
        while self._connections and time.monotonic() < deadline:  # the pipes close their sockets
            time.sleep(0.01)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
