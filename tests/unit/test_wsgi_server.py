"""The gateway's gunicorn response (deploy/wsgi_server.py, ``OneSendResponse``): a page's head
goes out in the same send as its body, and every kind of response is still whole."""
import io
import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from deploy.wsgi_server import OneSendResponse

PEER, SERVER = ("127.0.0.1", 50000), ("127.0.0.1", 8000)


class Recording:
    """A socket that records each send."""

    def __init__(self, sock):
        self.sock, self.sends = sock, []

    def sendall(self, data):
        self.sends.append(bytes(data))
        self.sock.sendall(data)

    def sendfile(self, file, offset=0, count=None):  # the tests' sockets are green (eventlet): copied here
        file.seek(offset)
        data = file.read(count)
        self.sends.append(("sendfile", data))
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def serve(monkeypatch):
    """``serve(raw_request, app)``: the sends of gunicorn's response to ``app``, and what the client read."""
    monkeypatch.setattr(wsgi, "Response", OneSendResponse)  # as GatewayWorker.init_process does
    pairs = []

    def serve(raw: bytes, app):
        server, client = socket.socketpair()
        pairs.append((server, client))
        client.sendall(raw)
        cfg = Config()
        request = next(iter(RequestParser(cfg, server, PEER)))
        recording = Recording(server)
        response, environ = wsgi.create(request, recording, PEER, SERVER, cfg)
        body = app(environ, response.start_response)
        try:
            if isinstance(body, wsgi.FileWrapper):
                response.write_file(body)
            else:
                for chunk in body:
                    response.write(chunk)
            response.close()
        finally:
            getattr(body, "close", lambda: None)()
        server.shutdown(socket.SHUT_WR)
        received = b"".join(iter(lambda: client.recv(65536), b""))
        return recording.sends, received

    yield serve
    for server, client in pairs:
        server.close(), client.close()


def _app(status, headers, chunks):
    def app(environ, start_response):
        start_response(status, headers)
        return chunks
    return app


def test_a_page_is_one_send_with_its_head(serve):
    page = b"<html>" + b"x" * 5000 + b"</html>"
    sends, received = serve(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                            _app("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(page)))], [page]))
    assert len(sends) == 1
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 5013" in head and body == page


def test_a_response_without_a_body_still_sends_its_head(serve):
    for raw, status, chunks in [(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", "200 OK", [b"ignored"]),
                                (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", "204 No Content", []),
                                (b"GET /r HTTP/1.1\r\nHost: h\r\n\r\n", "302 FOUND", [b""])]:
        headers = [("Content-Length", "7" if raw.startswith(b"HEAD") else "0")]
        if status.startswith("302"):
            headers.append(("Location", "/x"))
        sends, received = serve(raw, _app(status, headers, chunks))
        assert len(sends) == 1, (raw, sends)
        assert received.startswith(f"HTTP/1.1 {status}".encode()) and received.endswith(b"\r\n\r\n"), received


def test_a_stream_sends_its_head_with_the_first_chunk_then_each_chunk(serve):
    sends, received = serve(b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n",
                            _app("200 OK", [("Content-Type", "text/event-stream")], [b"data: 1\n\n", b"data: 2\n\n"]))
    assert len(sends) == 3  # head + first chunk, second chunk, the chunked terminator
    assert b"Transfer-Encoding: chunked" in sends[0] and sends[0].endswith(b"data: 1\n\n\r\n")
    assert received.endswith(b"data: 2\n\n\r\n0\r\n\r\n")


def test_a_file_is_sent_after_its_head(serve, tmp_path):
    path = tmp_path / "style.css"
    path.write_bytes(b"body { color: red }")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "19")])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    sends, received = serve(b"GET /static/style.css HTTP/1.1\r\nHost: h\r\n\r\n", app)
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"\r\n\r\nbody { color: red }")
    assert sends[0].startswith(b"HTTP/1.1 200 OK") and sends[1] == ("sendfile", b"body { color: red }")
