"""Oversized URLs, headers and cookies get an HTTP answer from both servers, as processes:
gunicorn (``microblog serve gateway``) and eventlet's (``microblog run``)."""
import pytest
import requests

from tests.system.test_commands import free_port, start, stop, wait_for_http

PAD_8K = "a" * 8000  # an 8 KB URL: served by both servers

# What each server answers (gunicorn answers the limits itself with 414/431; eventlet's
# server answers a header line over 8 KB with a 400 "Header Line Too Long").
EXPECTED = {
    "gateway": {"long_header_line": 431},
    "run": {"long_header_line": 400},
}


@pytest.fixture(params=["gateway", "run"])
def server(request, tmp_path):
    port = free_port()
    log = tmp_path / f"{request.param}.log"
    env = {"PORT": str(port), "SECRET_KEY": "large-requests-test",
           # Nothing here needs a service: a broker that is not there is never asked.
           "AMQP_URI": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
           "GATEWAY_WORKERS": "1", "MICROBLOG_DATA_DIR": str(tmp_path / "data")}
    args = ["serve", "gateway", "--host", "127.0.0.1"] if request.param == "gateway" else ["run"]
    process = start(args, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(base + "/healthz", process, log).status_code == 200
        yield request.param, base, process
    finally:
        assert stop(process) == 0


def _get(url, **kwargs):
    # A new connection each time (no session), and an answer required: a connection closed
    # without one raises here.
    return requests.get(url, timeout=10, allow_redirects=False, **kwargs)


def test_an_8_kb_url_is_served(server):
    _, base, _ = server
    assert _get(f"{base}/healthz?pad={PAD_8K}").status_code == 200
    response = _get(f"{base}/user/{PAD_8K}")
    assert response.status_code == 302 and "/auth/login?next=" in response.headers["Location"]


@pytest.mark.parametrize("size", [9000, 20_000, 200_000])
def test_a_longer_url_is_414(server, size):
    _, base, process = server
    assert _get(f"{base}/healthz?pad={'a' * size}").status_code == 414
    assert _get(f"{base}/healthz").status_code == 200 and process.poll() is None


def test_large_cookies_and_many_headers_are_answered(server):
    name, base, process = server
    assert _get(f"{base}/healthz", cookies={"big": "c" * 8000}).status_code == 200
    assert _get(f"{base}/healthz", cookies={"big": "c" * 9000}).status_code == EXPECTED[name]["long_header_line"]
    assert _get(f"{base}/healthz", cookies={"big": "c" * 100_000}).status_code == EXPECTED[name]["long_header_line"]
    many = {f"X-Pad-{i}": "h" * 100 for i in range(150)}
    assert _get(f"{base}/healthz", headers=many).status_code == 431
    assert _get(f"{base}/healthz").status_code == 200 and process.poll() is None
