"""The ``microblog`` command as separate processes: what a container or a developer runs."""
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from tests.helpers import PASSWORD
from tests.waiting import wait_until

MICROBLOG = str(Path(sys.executable).parent / "microblog")
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args, env, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(
        [MICROBLOG, *args], env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop(process, sig=signal.SIGTERM, timeout=20) -> int:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # fail the test, but leave nothing running behind it
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def wait_for_http(url, process, log_path, timeout=30):
    def answer():
        if process.poll() is not None:
            pytest.fail(f"process exited early:\n{Path(log_path).read_text()}")
        return requests.get(url, timeout=2)  # any answer, whatever its status

    return wait_until(lambda: [answer()], timeout=timeout, interval=0.2, ignore=(requests.ConnectionError,),
                      message=lambda: f"{url} did not answer:\n{Path(log_path).read_text()}")[0]


def wait_for_log(log_path, text, process, timeout=30):
    def logged():
        if text in Path(log_path).read_text():
            return True
        if process.poll() is not None:
            pytest.fail(f"{text!r} not logged, and the process exited:\n{Path(log_path).read_text()}")
        return False

    wait_until(logged, timeout=timeout, interval=0.1,
               message=lambda: f"{text!r} not logged:\n{Path(log_path).read_text()}")


def post_form(session, url, data):
    token = CSRF.search(session.get(url).text).group(1)
    return session.post(url, data={"csrf_token": token, **data}, allow_redirects=False)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_run_command_serves_the_embedded_system(tmp_path, stop_signal):
    port = free_port()
    log = tmp_path / "run.log"
    process = start(["run"], {"PORT": str(port), "MICROBLOG_DATA_DIR": str(tmp_path / "data")}, log)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/auth/login", process, log).status_code == 200
        assert f"http://127.0.0.1:{port}/" in log.read_text()
        browser = requests.Session()
        assert post_form(browser, f"http://127.0.0.1:{port}/auth/register", {
            "username": "susan", "email": "susan@example.com", "password": PASSWORD, "password2": PASSWORD,
        }).status_code == 302
        assert (tmp_path / "data" / "users.db").exists()
    finally:
        assert stop(process, stop_signal) == 0  # a clean stop, not killed by the signal


# ``microblog run`` in a process that also has a green thread busy with Python work and a
# bare ``except`` (as library code may have), so a signal is almost always handled in that
# thread rather than the server's, and a KeyboardInterrupt raised there is swallowed.
BUSY_RUN = """
import eventlet
eventlet.monkey_patch()

def busy():
    while True:
        try:
            sum(range(20000))
        except BaseException:
            pass
        eventlet.sleep(0)  # (the busy thread yields, as green code does)

eventlet.spawn_n(busy)
from deploy.cli import main
main(["run"])
"""


def test_ctrl_c_stops_the_embedded_system_whichever_green_thread_it_lands_in(tmp_path):
    # Ctrl-C used to rely on a KeyboardInterrupt reaching the server's green thread; one
    # swallowed on the way left the server running (the test above once hung in CI). Now
    # the signal handler raises nothing: it schedules the stop.
    port = free_port()
    log_path = tmp_path / "run.log"
    process = subprocess.Popen(
        [sys.executable, "-c", BUSY_RUN],
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PORT": str(port), "MICROBLOG_DATA_DIR": str(tmp_path / "data")},
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/auth/login", process, log_path).status_code == 200
    finally:
        assert stop(process, signal.SIGINT) == 0, log_path.read_text()


def test_each_service_runs_alone_and_the_gateway_under_gunicorn(tmp_path, real_infra, rabbit_config, postgres):
    users_url = postgres.create("users_cli")  # empty: `serve` applies the migrations
    messages_url = postgres.create("messages_cli")
    port = free_port()
    env = {
        "AMQP_URI": rabbit_config["AMQP_URI"],
        "USERS_DATABASE_URL": users_url,
        "MESSAGES_DATABASE_URL": messages_url,
        "SECRET_KEY": "process-test-secret",
        "PORT": str(port),
        "GATEWAY_WORKERS": "2",
        "RPC_TIMEOUT": "2",
    }
    users = start(["serve", "users"], env, tmp_path / "users.log")
    messages = start(["serve", "messages"], env, tmp_path / "messages.log")
    gateway = start(["serve", "gateway", "--host", "127.0.0.1"], env, tmp_path / "gateway.log")
    try:
        wait_for_log(tmp_path / "users.log", "users service is running", users)
        wait_for_log(tmp_path / "messages.log", "messages service is running", messages)
        base = f"http://127.0.0.1:{port}"
        assert wait_for_http(base + "/auth/login", gateway, tmp_path / "gateway.log").status_code == 200
        assert "deploy.wsgi_server.GatewayWorker" in (tmp_path / "gateway.log").read_text()  # gevent

        browser = requests.Session()
        response = post_form(browser, base + "/auth/register", {
            "username": "susan", "email": "susan@example.com", "password": PASSWORD, "password2": PASSWORD,
        })
        assert response.status_code == 302
        response = post_form(browser, base + "/auth/login", {"username": "susan", "password": PASSWORD})
        assert response.headers["Location"] == "/index"
        assert "Hi, susan!" in browser.get(base + "/index").text
        with ClusterRpcProxy(rabbit_config, timeout=10) as rpc:
            assert rpc.users.get_user_by_username("susan")["username"] == "susan"
        response = post_form(browser, base + "/send_message/susan", {"message": "note to self"})
        assert response.status_code == 302
        assert "note to self" in browser.get(base + "/messages").text

        # The users service stops alone: what the gateway keeps in memory still shows
        # (susan's own profile), what it must ask for is a 503, not a 500; then it recovers.
        assert stop(users) == 0
        assert browser.get(base + "/user/nobody_kept").status_code == 503
        users = start(["serve", "users"], env, tmp_path / "users2.log")
        wait_for_log(tmp_path / "users2.log", "users service is running", users)
        assert "User: susan" in browser.get(base + "/user/susan").text
    finally:
        stop(users)
        assert stop(messages) == 0
        assert stop(gateway) == 0


def test_gateway_refuses_to_start_without_a_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run([MICROBLOG, "serve", "gateway"], env={**env, "PYTHONWARNINGS": "ignore"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SECRET_KEY is not set" in result.stderr


def test_bad_settings_are_reported_not_raised(tmp_path):
    result = subprocess.run([MICROBLOG, "run", "--port", str(free_port())],
                            env={**os.environ, "POLL_INTERVAL": "soon", "PYTHONWARNINGS": "ignore",
                                 "MICROBLOG_DATA_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "POLL_INTERVAL must be a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_messages_rebuilds_the_inbox_from_the_log(tmp_path):
    from sqlalchemy.orm import sessionmaker

    from deploy.registry import SERVICES
    from kernel.db import create_db_engine
    from kernel.migrations import upgrade
    from services.messages import commands
    from services.messages.models import InboxMessage
    from services.messages.storage import STORAGE

    url = f"sqlite:///{tmp_path / 'messages.db'}"
    upgrade(SERVICES["messages"].migrations, url)
    engine = create_db_engine(url)
    storage = STORAGE.open(engine)
    for i in range(30):
        commands.send_message(storage, 1 + i % 3, 1 + i % 2, f"m{i}", lambda _: True)
        if i % 7 == 0:
            commands.mark_inbox_read(storage, 1 + i % 2)
    before = storage.snapshot()
    storage.session.query(InboxMessage).filter(InboxMessage.id % 2 == 0).delete()  # damage the read model
    storage.commit()
    assert storage.snapshot() != before
    storage.close()
    engine.dispose()

    result = subprocess.run([MICROBLOG, "replay", "messages"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "MESSAGES_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert "inbox rebuilt beside the live one from 35 events and swapped in" in result.stdout

    engine = create_db_engine(url)
    storage = STORAGE.open(engine, sessionmaker(engine))
    assert storage.snapshot() == before
    storage.close()
    engine.dispose()


def test_verify_and_replay_notifications_against_running_services(tmp_path, real_infra, rabbit_config, postgres):
    from sqlalchemy import text

    from kernel.db import create_db_engine

    env = {
        "AMQP_URI": rabbit_config["AMQP_URI"],
        "USERS_DATABASE_URL": postgres.create("users_v"),
        "MESSAGES_DATABASE_URL": postgres.create("messages_v"),
        "NOTIFICATIONS_DATABASE_URL": postgres.create("notifications_v"),
        "FEED_CHECK_INTERVAL": "0.5",
    }
    processes = {name: start(["serve", name], env, tmp_path / f"{name}.log") for name in ("users", "messages", "notifications")}

    def microblog(*args):
        return subprocess.run([MICROBLOG, *args], env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
                              capture_output=True, text=True, timeout=120)

    try:
        for name, process in processes.items():
            wait_for_log(tmp_path / f"{name}.log", f"{name} service is running", process)
        with ClusterRpcProxy(rabbit_config, timeout=10) as rpc:
            susan = rpc.users.register("susan", "susan@example.com", PASSWORD)["id"]
            john = rpc.users.register("john", "john@example.com", PASSWORD)["id"]
            for i in range(7):
                rpc.messages.send_message(susan, john, f"m{i}", idempotency_key=uuid.uuid4().hex)
            rpc.messages.mark_inbox_read(john)
            rpc.messages.send_message(john, susan, "hello back", idempotency_key=uuid.uuid4().hex)
            rpc.messages.send_message(susan, john, "again", idempotency_key=uuid.uuid4().hex)
            rpc.users.update_profile(susan, "susan2", "renamed")
        result = microblog("verify")
        assert result.returncode == 0, result.stderr
        assert "matches a fresh replay" in result.stdout and "the users table matches the users feed" in result.stdout

        # A profile changed without its event: the users feed no longer folds to the table.
        users = create_db_engine(env["USERS_DATABASE_URL"], pool_size=1)
        with users.begin() as connection:
            connection.execute(text("UPDATE users SET about_me = 'unlogged' WHERE id = :id"), {"id": john})
        result = microblog("verify")
        assert result.returncode == 1
        assert f"users: user {john}: the feed gives ('john', ''), the users table ('john', 'unlogged')" in result.stderr
        with users.begin() as connection:
            connection.execute(text("UPDATE users SET about_me = '' WHERE id = :id"), {"id": john})
        users.dispose()

        engine = create_db_engine(env["NOTIFICATIONS_DATABASE_URL"], pool_size=1)
        with engine.begin() as connection:
            connection.execute(text("UPDATE notifications SET payload_json = '42'"))
        engine.dispose()
        result = microblog("verify")
        assert result.returncode == 1
        assert "live 42" in result.stderr and "difference" in result.stderr

        result = microblog("replay", "notifications")
        assert result.returncode == 0, result.stderr
        assert "swapped in" in result.stdout
        result = microblog("verify")
        assert result.returncode == 0, result.stderr
        with ClusterRpcProxy(rabbit_config, timeout=10) as rpc:  # the live view kept serving
            assert rpc.notifications.unread_message_count(john) == 1
            assert rpc.notifications.unread_message_count(susan) == 1
    finally:
        for name in ("notifications", "messages", "users"):
            assert stop(processes[name]) == 0, name


def test_replay_messages_under_live_sends_keeps_every_send(messages_pg_url):
    # PostgreSQL, two processes: the replay (the command) and senders (this test). Sends
    # go on while it builds beside the live tables and wait for its swap; none fails and
    # the inbox ends holding every MessageSent of the log.
    from sqlalchemy import text

    from tests.conftest import empty_tables
    from kernel.db import create_db_engine, dispose
    from services.messages import commands
    from services.messages.storage import STORAGE

    empty_tables(messages_pg_url)
    engine = create_db_engine(messages_pg_url, pool_size=2)
    with engine.begin() as connection:  # 200,000 events straight into the log: a replay of a second or two
        connection.execute(text(
            "INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data) "
            "SELECT n, gen_random_uuid()::text, 'MessageSent', 1, now(), "
            "json_build_object('sender_id', 1, 'recipient_id', 1 + n % 50, 'body', 'seed')::text "
            "FROM generate_series(1, 200000) AS n"))
        connection.execute(text("UPDATE counters SET position = 200000 WHERE name = 'log_head'"))
    replay = subprocess.Popen([MICROBLOG, "replay", "messages"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                              "MESSAGES_DATABASE_URL": messages_pg_url})
    storage = STORAGE.open(engine)
    sent_during = 0
    try:
        while replay.poll() is None:
            commands.send_message(storage, 2, 999, f"live {sent_during}", lambda _: True)
            sent_during += 1
        out, err = replay.communicate(timeout=60)
        assert replay.returncode == 0, err
        assert "swapped in" in out
        assert sent_during > 0
        counts = storage.session.execute(text(
            "SELECT (SELECT count(*) FROM event_log WHERE event_type = 'MessageSent'), "
            "(SELECT count(*) FROM inbox_messages), (SELECT count(*) FROM inbox_messages WHERE recipient_id = 999)")).one()
        assert tuple(counts) == (200000 + sent_during, 200000 + sent_during, sent_during)
    finally:
        if replay.poll() is None:
            replay.kill()
        storage.close()
        dispose(engine)
