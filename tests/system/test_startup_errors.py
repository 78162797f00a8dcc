"""Start-up errors a person can act on: every ``microblog`` command pointed at a wrong
vhost, an unreachable broker, a missing database or a bad URL exits non-zero with ONE line
on stderr that says what and where (the password hidden), never a traceback, and a service
never claims to be running. And a service started a moment before its broker still comes up.
"""
import os
import subprocess
import time

import pytest
import requests

from tests.fault.proxy import TcpProxy
from tests.system.test_commands import CSRF, MICROBLOG, free_port, start, stop, wait_for_http, wait_for_log
from tests.waiting import wait_until

WRONG_VHOST = "amqp://guest:guest@127.0.0.1:5672/no-such-vhost"
MISSING_DB = "postgresql://postgres:sekrit@127.0.0.1:5432/microblog_no_such_database"
BAD_AMQP = "amqp://guest:guest@127.0.0.1:notaport/"
BAD_DB = "postgresql://postgres:sekrit@127.0.0.1:notaport/x"


def unreachable_broker() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there


def run(args, env, timeout=60) -> subprocess.CompletedProcess:
    base = {**os.environ, "PYTHONWARNINGS": "ignore", "STARTUP_TIMEOUT": "1", "SECRET_KEY": "startup-test",
            "PORT": str(free_port())}
    return subprocess.run([MICROBLOG, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def good_dbs(real_infra, postgres):
    """Databases that exist, so that each case fails only on the fault it names."""
    return {f"{name.upper()}_DATABASE_URL": postgres.create(f"{name}_startup")
            for name in ("users", "messages", "notifications")}


# (command, what is wrong, expected exit code, words the one line must hold)
CASES = [
    (["serve", "users"], {"AMQP_URI": WRONG_VHOST}, 1,
     ["amqp://guest:***@127.0.0.1:5672/no-such-vhost", "vhost no-such-vhost not found"]),
    (["serve", "users"], {"AMQP_URI": "unreachable"}, 1, ["cannot reach the broker at", "tried for"]),
    (["serve", "users"], {"USERS_DATABASE_URL": MISSING_DB}, 1,
     ["cannot reach database postgresql://postgres:***@127.0.0.1:5432/microblog_no_such_database",
      "does not exist"]),
    (["serve", "users"], {"AMQP_URI": BAD_AMQP}, 2, ["AMQP_URI is not a usable broker URL", "notaport"]),
    (["serve", "users"], {"USERS_DATABASE_URL": BAD_DB}, 2, ["USERS_DATABASE_URL is not a usable database URL"]),
    (["serve", "users"], {"USERS_DATABASE_URL": "sqlite-ish nonsense"}, 2,
     ["USERS_DATABASE_URL is not a usable database URL"]),
    (["serve", "messages"], {"MESSAGES_DATABASE_URL": MISSING_DB}, 1, ["cannot reach database", "does not exist"]),
    (["serve", "notifications"], {"AMQP_URI": WRONG_VHOST}, 1, ["refused the virtual host"]),
    (["serve", "gateway", "--host", "127.0.0.1"], {"AMQP_URI": WRONG_VHOST}, 1, ["refused the virtual host"]),
    (["serve", "gateway", "--host", "127.0.0.1"], {"AMQP_URI": "nonsense"}, 2, ["AMQP_URI is not a broker URL"]),
    (["migrate", "users"], {"USERS_DATABASE_URL": MISSING_DB}, 1, ["cannot reach database", "does not exist"]),
    (["migrate", "all"], {"NOTIFICATIONS_DATABASE_URL": BAD_DB}, 2, ["NOTIFICATIONS_DATABASE_URL is not a usable"]),
    (["replay", "messages"], {"MESSAGES_DATABASE_URL": MISSING_DB}, 1, ["cannot reach database"]),
    (["replay", "notifications"], {"AMQP_URI": WRONG_VHOST}, 1, ["refused the virtual host"]),
    (["verify"], {"AMQP_URI": "unreachable"}, 1, ["cannot reach the broker at"]),
    (["verify"], {"NOTIFICATIONS_DATABASE_URL": MISSING_DB}, 1, ["cannot reach database"]),
    (["verify"], {}, 1, ["Unknown service", "running"]),  # nothing serves on this test's vhost
    (["health", "users"], {"AMQP_URI": WRONG_VHOST}, 1, ["users: unhealthy", "refused the virtual host"]),
    (["status"], {"AMQP_URI": WRONG_VHOST}, 1, ["refused the virtual host"]),
]


def case_id(case) -> str:
    args, fault = case[0], case[1]
    kind = {WRONG_VHOST: "wrong-vhost", MISSING_DB: "missing-database", BAD_AMQP: "bad-url", BAD_DB: "bad-url",
            "unreachable": "unreachable-broker"}
    what = next((f"{kind.get(v, 'bad-url')}-{k}" for k, v in fault.items()), "no-service-running")
    return "-".join(a for a in args[:2] if not a.startswith("-")) + ":" + what


@pytest.mark.parametrize("args, fault, code, words", CASES, ids=[case_id(c) for c in CASES])
def test_a_startup_error_is_one_line_and_a_non_zero_exit(args, fault, code, words, good_dbs, rabbit_config, tmp_path):
    fault = {key: unreachable_broker() if value == "unreachable" else value for key, value in fault.items()}
    # A fresh vhost of its own (nothing serves there) unless the case names another broker.
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "MICROBLOG_DATA_DIR": str(tmp_path), **good_dbs, **fault}
    started = time.monotonic()
    result = run(args, env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "sekrit" not in result.stderr and "guest:guest" not in result.stderr  # passwords hidden
    assert "is running" not in result.stdout
    assert time.monotonic() - started < 30  # bounded: STARTUP_TIMEOUT is 1 s here


def test_the_gateway_serves_while_its_broker_does_not_answer_and_says_so_once(tmp_path, good_dbs):
    """A broker that does not answer (yet) is no reason for the gateway to stay down: it
    warns in one line and serves (pages that need a service answer 503 until the broker
    does). A broker that refuses it (wrong vhost, login) or a malformed URL stops it: above."""
    port = free_port()
    log = tmp_path / "gateway.log"
    gateway = start(["serve", "gateway", "--host", "127.0.0.1"],
                    {"AMQP_URI": unreachable_broker(), "SECRET_KEY": "startup-test", "PORT": str(port),
                     "RPC_TIMEOUT": "2", "GATEWAY_ACCESS_LOG": ""}, log)
    try:
        response = wait_for_http(f"http://127.0.0.1:{port}/healthz", gateway, log)
        assert response.status_code == 200
        browser = requests.Session()
        page = browser.get(f"http://127.0.0.1:{port}/auth/login", timeout=30)
        assert page.status_code == 200  # needs no service
        token = CSRF.search(page.text).group(1)
        signing_in = browser.post(f"http://127.0.0.1:{port}/auth/login", allow_redirects=False, timeout=30,
                                  data={"csrf_token": token, "username": "susan", "password": "whatever12"})
        assert signing_in.status_code == 503  # needs the users service, through the broker
        warnings = [line for line in log.read_text().splitlines() if line.startswith("Warning:")]
        assert len(warnings) == 1 and "cannot reach the broker at" in warnings[0], log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        assert stop(gateway) == 0


def test_a_service_started_before_its_broker_comes_up_once_the_broker_does(tmp_path, good_dbs, rabbit_config):
    broker = TcpProxy(("127.0.0.1", 5672)).start()
    broker.cut()  # as if RabbitMQ were still starting: connections refused
    uri = rabbit_config["AMQP_URI"].replace(":5672", f":{broker.port}")
    log = tmp_path / "users.log"
    users = start(["serve", "users"], {"AMQP_URI": uri, "STARTUP_TIMEOUT": "20", **good_dbs}, log)
    try:
        time.sleep(2)  # not a wait: the broker stays "starting" 2 s; the service must keep trying, quietly
        assert users.poll() is None, log.read_text()
        assert "is running" not in log.read_text()
        broker.restore()
        wait_for_log(log, "users service is running", users, timeout=30)
        assert "Traceback" not in log.read_text()
    finally:
        assert stop(users) == 0
        broker.stop()


def test_a_broker_that_hangs_after_the_check_stops_the_start_in_bounded_time(tmp_path, good_dbs, rabbit_config):
    """The check passed, then the broker stops answering (a hung peer) before the service's
    consumers connect: the service gives up after STARTUP_TIMEOUT + 10 s with one line,
    instead of hanging, and never says it is running."""
    import threading

    broker = TcpProxy(("127.0.0.1", 5672)).start()
    uri = rabbit_config["AMQP_URI"].replace(":5672", f":{broker.port}")

    stalled = threading.Event()

    def stall_after_the_check():
        # the check's connection came and went
        wait_until(lambda: broker.accepted >= 1 and not broker._connections, timeout=30, interval=0.005,
                   message="the start-up check never connected")
        broker.stall()
        stalled.set()

    staller = threading.Thread(target=stall_after_the_check, daemon=True)
    staller.start()
    started = time.monotonic()
    try:
        result = run(["serve", "users"], {"AMQP_URI": uri, **good_dbs}, timeout=60)
    finally:
        broker.stop()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert stalled.is_set(), "the proxy never stalled: the test did not test"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is running" not in result.stdout
    assert "Traceback" not in result.stderr
    # kombu's "Error connecting ... Retrying in N seconds" lines may come first (progress a
    # person can read); the last line says why the service gave up.
    assert "users service could not start" in lines[-1] and "did not connect within 11 s" in lines[-1], result.stderr
    assert time.monotonic() - started < 40
