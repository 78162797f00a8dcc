"""A TCP proxy a test can cut and restore, to put an outage between a process and a
server (RabbitMQ, PostgreSQL) without touching the server itself.

    proxy = TcpProxy(("127.0.0.1", 5672)).start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    proxy.cut()        # every open connection is reset and new ones are refused
    proxy.restore()    # accepts again, on the same port
    proxy.stall()      # connections stay open but nothing passes either way (a hung peer)
    proxy.stall("down")  # the server receives (and commits) but its answers are held
    proxy.hold_answers_after(b"marker")  # the same, only for the connection that sends it
    proxy.stop()

Threads (green under the tests' ``eventlet.monkey_patch()``) copy bytes each way; the
listening socket is closed while cut, so a client gets ECONNREFUSED, as it would from a
host whose server is down.
"""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stalled = {"up": threading.Event(), "down": threading.Event()}
        self._flow = threading.Condition()  # notified when a stall ends or connections are cut
        self._marker: bytes | None = None
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
            except OSError:
                return
            if generation != self._generation:
                client.close()
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
            held = threading.Event()  # this connection's answers are held (hold_answers_after)
            for source, sink, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pipe, args=(source, sink, direction, held, generation),
                                 daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str, held: threading.Event,
              generation: int) -> None:
        stalled = self._stalled[direction]

        def blocked() -> bool:
            return stalled.is_set() or (direction == "down" and held.is_set())

        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if blocked():  # hold the bytes until the stall ends, or drop them with the connection
                    with self._flow:
                        self._flow.wait_for(lambda: not blocked() or generation != self._generation)
                    if generation != self._generation:
                        break
                sink.sendall(data)
                if direction == "up" and self._marker is not None and self._marker in data:
                    held.set()
        except (OSError, EOFError):  # eventlet raises EOFError when another thread closed it
            pass
        finally:
            for sock in (source, sink):
                self._close(sock)

    def _close(self, sock: socket.socket, reset: bool = False) -> None:
        with self._lock:
            self._connections.discard(sock)
        try:
            if reset:  # RST, as a dead host's kernel or a restarted server would answer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        _close_and_wake(sock)

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            self._generation += 1
            connections = list(self._connections)
        if listener is not None:
            _close_and_wake(listener)
        for sock in connections:
            self._close(sock, reset=True)
        self._unstall()
        self._notify()

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._unstall()
        if self._listener is None:
            from tests.waiting import wait_until

            # The port can take a moment to be free again after the cut closed it.
            wait_until(self.start, timeout=10, interval=0.1, ignore=(OSError,),
                       message=f"port {self.port} did not become free to listen on again")

    def stall(self, direction: str = "both") -> None:
        """Keep connections open but pass nothing: a peer that hangs rather than refuses.
        ``direction`` "down" holds only what the server sends (it still receives, and so
        commits, what the client sent: a reply lost on the way back); "up" only what the
        client sends."""
        for name in ("up", "down") if direction == "both" else (direction,):
            self._stalled[name].set()

    def hold_answers_after(self, marker: bytes | None) -> None:
        """From now on, a connection whose client sends ``marker`` gets nothing more back
        (the server still receives, and commits, what it was sent); other connections,
        new ones included, pass. ``None`` stops marking (held connections stay held until
        ``cut``). Deterministic where ``stall("down")`` is not: a client that must open a
        new connection first cannot even log in through a stall."""
        self._marker = marker

    def _unstall(self) -> None:
        self._marker = None
        for event in self._stalled.values():
            event.clear()
        self._notify()

    def _notify(self) -> None:
        with self._flow:
            self._flow.notify_all()

    def stop(self) -> None:
        self.cut()


def _close_and_wake(sock: socket.socket) -> None:
    """Close ``sock``; under eventlet (the tests monkey-patch), also wake any green thread
    still waiting on it (an accept or a recv in another thread), with an OSError. Without
    that its listener outlives the socket in eventlet's hub, and the next file to reuse the
    descriptor number in this process (a subprocess's pipe, a later test's socket) fails
    with "Second simultaneous read on fileno N"."""
    try:
        fileno = sock.fileno()
    except OSError:
        fileno = -1
    try:
        sock.close()
    except OSError:
        pass
    if fileno < 0:
        return
    try:
        from eventlet import hubs, patcher
    except ImportError:
        return
    if patcher.is_monkey_patched("socket"):
        hubs.notify_opened(fileno)  # eventlet's way to defang the listeners of a dead descriptor
