"""A small Server-Sent Events client for tests: one HTTP/1.0 request on a plain socket (so
the body is the event stream itself, not chunked), frames parsed as the spec says.

    stream = SseStream(base, cookie, since=0)        # or last_event_id="1796.5"
    assert stream.status == 200
    event = stream.next_event(timeout=2)             # {"id": "...", "data": {...}} or None
    stream.close()
"""
from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit


class SseStream:
    def __init__(self, base: str, cookie: str | None, since=None, last_event_id: str | None = None,
                 path: str = "/notifications/stream", timeout: float = 10, extra_headers: dict | None = None):
        parts = urlsplit(base)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        query = f"?since={since}" if since is not None else ""
        headers = [f"GET {path}{query} HTTP/1.0", f"Host: {parts.hostname}", "Accept: text/event-stream"]
        if cookie:
            headers.append(f"Cookie: {cookie}")
        if last_event_id is not None:
            headers.append(f"Last-Event-ID: {last_event_id}")
        headers += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
        self.sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.buffer = b""
        self.eof = False
        head = self._read_until(b"\r\n\r\n", timeout)
        if head is None:
            raise AssertionError(f"no response head within {timeout} s")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        self.comments: list[str] = []
        self.retry: int | None = None
        self.frames: list[str] = []  # every raw frame, in order

    def _read_until(self, marker: bytes, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                continue
            self.buffer += chunk
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def body(self, timeout: float = 5) -> str:
        """The rest of a non-stream answer (401, 400, 503 JSON ...)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read_until(b"\x00never\x00", min(0.2, deadline - time.monotonic()))
        return self.buffer.decode()

    def next_frame(self, timeout: float = 5) -> str | None:
        frame = self._read_until(b"\n\n", timeout)
        if frame is not None:
            self.frames.append(frame.decode())
        return None if frame is None else frame.decode()

    def next_event(self, timeout: float = 5) -> dict | None:
        """The next event (``id``, ``data`` parsed as JSON, ``fields``: every field name
        seen), skipping comments and ``retry:``; None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            event: dict = {"fields": []}
            data_lines = []
            for line in frame.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                event["fields"].append(name)
                if name == "data":
                    data_lines.append(value)
                elif name == "id":
                    event["id"] = value
                elif name == "retry":
                    self.retry = int(value)
            if data_lines:
                event["data"] = json.loads("\n".join(data_lines))
                return event

    def events_until(self, predicate, timeout: float = 5) -> list[dict]:
        """Events until one satisfies ``predicate`` (raises AssertionError past timeout)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event is None:
                raise AssertionError(f"no matching event within {timeout} s; saw {seen}")
            seen.append(event)
            if predicate(event):
                return seen

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def cookie_of(session) -> str:
    """The Cookie header of a ``requests.Session`` (or anything with ``.cookies``)."""
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)
