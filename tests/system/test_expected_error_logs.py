"""Expected errors in a service's log, as processes: one clipped line each, no traceback.

``microblog serve users`` and ``microblog run`` both install ``kernel.logs``."""
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from kernel.errors import UserNotFound
from tests.helpers import PASSWORD
from tests.system.test_commands import free_port, post_form, start, stop, wait_for_http, wait_for_log

LONG_NAME = "z" * 5000


def _check_log(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "UserNotFound" in line]
    assert len(lines) == 1, text[-3000:]
    assert "(expected) users.get_user_by_username: UserNotFound: User " + "z" * 100 + "…(+" in lines[0]
    assert len(lines[0]) < 400
    assert "z" * 200 not in text


def test_serve_users_logs_an_unknown_user_as_one_line(tmp_path, real_infra, rabbit_config, postgres):
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "USERS_DATABASE_URL": postgres.create("users_logs")}
    log = tmp_path / "users.log"
    users = start(["serve", "users"], env, log)
    try:
        wait_for_log(log, "users service is running", users)
        with ClusterRpcProxy(rabbit_config, timeout=10) as rpc:
            with pytest.raises(UserNotFound):
                rpc.users.get_user_by_username(LONG_NAME)
    finally:
        assert stop(users) == 0
    _check_log(log.read_text())


def test_run_logs_an_unknown_user_as_one_line(tmp_path):
    port = free_port()
    log = tmp_path / "run.log"
    process = start(["run", "--port", str(port)], {"MICROBLOG_DATA_DIR": str(tmp_path / "data")}, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/auth/login", process, log)
        browser = requests.Session()
        post_form(browser, base + "/auth/register",
                  {"username": "susan", "email": "susan@example.com", "password": PASSWORD, "password2": PASSWORD})
        post_form(browser, base + "/auth/login", {"username": "susan", "password": PASSWORD})
        assert browser.get(f"{base}/user/{LONG_NAME}").status_code == 404
    finally:
        assert stop(process) == 0
    _check_log(log.read_text())
