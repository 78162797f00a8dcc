"""Sign-out ends the session for every gateway process: the real system as processes
(``microblog serve``, gunicorn with two workers)."""
import requests

from tests.fault.cluster import CSRF, Cluster
from tests.helpers import PASSWORD


def _get(cluster, path, cookies):
    return requests.get(cluster.base + path, cookies=cookies, allow_redirects=False, timeout=30)


def _login(cluster, username):
    browser = requests.Session()
    token = CSRF.search(browser.get(cluster.base + "/auth/login").text).group(1)
    response = browser.post(cluster.base + "/auth/login", allow_redirects=False,
                            data={"csrf_token": token, "username": username, "password": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/index"
    return browser


def test_cookies_copied_before_logout_stop_working_in_every_gateway_worker(tmp_path, real_infra, rabbit_config,
                                                                           postgres):
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "GATEWAY_WORKERS": "2"}
    for name in ("users", "messages", "notifications"):
        env[f"{name.upper()}_DATABASE_URL"] = postgres.create(name + "_sess")
    cluster = Cluster(tmp_path, env).start_all()
    try:
        susan = cluster.sign_in("susan")
        copy = dict(susan.cookies)
        for _ in range(6):  # a new connection each time: both workers answer some
            assert _get(cluster, "/index", copy).status_code == 200  # a copy works ... until sign-out
        assert susan.get(cluster.base + "/auth/logout", allow_redirects=False).status_code == 302
        for _ in range(6):
            response = _get(cluster, "/index", copy)
            assert response.status_code == 302 and "/auth/login" in response.headers["Location"]

        # Signed in again (a new session), copied, signed out: the poll, which trusts a
        # session some process checked in the last 30 s, has nothing to trust here.
        again = _login(cluster, "susan")
        copy = dict(again.cookies)
        assert again.get(cluster.base + "/auth/logout", allow_redirects=False).status_code == 302
        for _ in range(6):
            assert _get(cluster, "/notifications", copy).status_code == 401
        assert not cluster.dead()
    finally:
        codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
