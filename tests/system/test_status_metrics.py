"""An operator can see: ``microblog status`` against the real services (positions, the
log's head, the lag, the outbox backlog; exit 1 when a bound is crossed or a service does
not answer), and each process's Prometheus metrics, scraped and parsed, with the figures
checked after known calls."""
import os
import subprocess

import psycopg2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kernel.errors import ValidationFailed
from kernel.rpc import ClusterRpcProxy
from tests.fault.cluster import SERVICES, Cluster
from tests.system.test_commands import MICROBLOG, free_port, stop
from tests.waiting import wait_until


def status(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([MICROBLOG, "status", *args], env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
                          capture_output=True, text=True, timeout=60)


def scrape(url) -> dict:
    """{(sample name, frozenset of labels): value} of a /metrics page."""
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def connect(url):
    return psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))


def eventually(check, timeout=15, what="condition"):
    return wait_until(check, timeout=timeout, interval=0.2, message=f"{what} never held")


def test_status_and_metrics_against_the_running_services(tmp_path, real_infra, rabbit_config, postgres):
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "RPC_TIMEOUT": "3", "METRICS_REFRESH": "0.2"}
    for name in SERVICES:
        env[f"{name.upper()}_DATABASE_URL"] = postgres.create(name + "_status")
    ports = {name: free_port() for name in SERVICES}
    metrics = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    cluster = Cluster(tmp_path, env, per_process={name: {"METRICS_PORT": str(ports[name])} for name in SERVICES})
    locks = []
    try:
        cluster.start_all()
        susan, john = cluster.sign_in("susan"), cluster.sign_in("john")

        def send(count):
            for n in range(count):
                form = cluster.send_form(susan, "john")
                response = susan.post(cluster.base + "/send_message/john", data={**form, "message": f"hi {n}"},
                                      allow_redirects=False)
                assert response.status_code == 302, response.text

        send(3)
        cluster.wait_for_unread(john, 3)

        # Everything caught up: status says so and exits 0.
        result = eventually(lambda: (r := status(env)).returncode == 0 and r, what="status ok")
        assert "notifications  position 3  head 3  lag 0" in result.stdout, result.stdout
        assert "messages       log head 3  published 3  outbox backlog 0" in result.stdout, result.stdout
        assert "users          log head 2  published 2  outbox backlog 0" in result.stdout, result.stdout
        assert "status: ok" in result.stdout

        # Each service's metrics: RPC counts and timings per method and outcome, and gauges.
        with ClusterRpcProxy(rabbit_config, timeout=10) as rpc:
            with pytest.raises(ValidationFailed):
                rpc.messages.inbox(1, 0)  # a page below 1: answered with an error
        samples = eventually(lambda: (s := scrape(metrics["messages"])) and value(
            s, "microblog_outbox_log_head", service="messages") == 3 and s, what="messages gauges")
        assert value(samples, "microblog_rpc_requests_total", service="messages", method="send_message",
                     outcome="ok") == 3
        assert value(samples, "microblog_rpc_request_duration_seconds_count", service="messages",
                     method="send_message") == 3
        assert value(samples, "microblog_rpc_requests_total", service="messages", method="inbox",
                     outcome="ValidationFailed") == 1
        assert value(samples, "microblog_outbox_published", service="messages") == 3
        assert value(samples, "microblog_outbox_backlog", service="messages") == 0
        samples = eventually(lambda: (s := scrape(metrics["notifications"])) and value(
            s, "microblog_projection_head", projection="notifications") == 3 and s, what="notifications gauges")
        assert value(samples, "microblog_projection_position", projection="notifications") == 3
        assert value(samples, "microblog_projection_lag", projection="notifications") == 0
        samples = scrape(metrics["users"])
        assert value(samples, "microblog_rpc_requests_total", service="users", method="register", outcome="ok") == 2
        assert value(samples, "microblog_rpc_requests_total", service="users", method="authenticate",
                     outcome="ok") == 2
        assert value(samples, "microblog_outbox_log_head", service="users") == 2

        # The gateway's /metrics: every gunicorn worker's requests and RPC calls, summed.
        samples = scrape(cluster.base + "/metrics")
        assert value(samples, "microblog_http_requests_total", endpoint="main.send_message", method="POST",
                     status="302") == 3
        assert value(samples, "microblog_http_request_duration_seconds_count", endpoint="main.send_message",
                     method="POST") == 3
        assert value(samples, "microblog_rpc_calls_total", service="messages", method="send_message",
                     outcome="ok") == 3
        assert value(samples, "microblog_rpc_call_duration_seconds_count", service="messages",
                     method="send_message") == 3

        # The projection falls behind (its tracking row held by someone else): status
        # reports the lag and exits 1 naming the bound; the lag gauge shows it too.
        notifications_db = connect(env["NOTIFICATIONS_DATABASE_URL"])
        locks.append(notifications_db)
        notifications_db.cursor().execute("SELECT position FROM tracking FOR UPDATE")
        send(2)
        result = eventually(lambda: (r := status(env, "--max-lag", "1")).returncode == 1 and "lag 2" in r.stdout
                            and r, what="status reporting lag 2")
        assert "notifications  position 3  head 5  lag 2" in result.stdout
        assert "status: notifications lag 2 is over --max-lag 1" in result.stderr
        assert "Traceback" not in result.stderr
        assert status(env, "--max-lag", "2").returncode == 0  # within the bound: fine
        eventually(lambda: value(scrape(metrics["notifications"]), "microblog_projection_lag",
                                 projection="notifications") == 2, what="lag gauge at 2")
        notifications_db.rollback()
        cluster.wait_for_unread(john, 5)
        eventually(lambda: status(env, "--max-lag", "0").returncode == 0, what="lag back to 0")

        # The outbox falls behind (its `published` row held): the backlog, and exit 1.
        messages_db = connect(env["MESSAGES_DATABASE_URL"])
        locks.append(messages_db)
        messages_db.cursor().execute("SELECT position FROM counters WHERE name = 'published' FOR UPDATE")
        send(2)
        result = status(env, "--max-backlog", "1")
        assert result.returncode == 1
        assert "log head 7  published 5  outbox backlog 2" in result.stdout
        assert "status: messages outbox backlog 2 is over --max-backlog 1" in result.stderr
        eventually(lambda: value(scrape(metrics["messages"]), "microblog_outbox_backlog", service="messages") == 2,
                   what="backlog gauge at 2")
        messages_db.rollback()
        eventually(lambda: status(env, "--max-backlog", "0", "--max-lag", "0").returncode == 0,
                   what="backlog back to 0")
        cluster.wait_for_unread(john, 7)

        # A service that does not answer: status says which, and exits 1.
        assert stop(cluster.processes["notifications"]) == 0
        result = status(env, "--timeout", "2")
        assert result.returncode == 1
        assert "notifications  unavailable" in result.stdout
        assert "status: the notifications service did not answer" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        for connection in locks:
            connection.close()
        cluster.stop_all()


def test_embedded_mode_serves_every_metric_from_its_one_process(tmp_path):
    """``microblog run``: services and gateway share one process, so the gateway's /metrics
    shows both the requests it answered and the RPC requests the services handled."""
    from flask.testing import FlaskClient

    from deploy.embedded import EmbeddedSystem
    from tests.helpers import login, register

    def scrape_app(client: FlaskClient) -> dict:
        response = client.get("/metrics")
        assert response.status_code == 200
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(response.get_data(as_text=True))
                for sample in family.samples}

    def delta(after, before, name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    system = EmbeddedSystem(tmp_path, secret_key="embedded-metrics").start()
    try:
        client = system.app.test_client()
        before = scrape_app(client)  # the registry is per process: other tests' figures are in it too
        assert register(client, "susan").status_code == 302
        assert login(client, "susan").status_code == 302
        assert client.get("/no/such/page").status_code == 404
        for made_up in ("ZZZQQ1", "ZZZQQ2"):  # a client's made-up methods add no series
            client.open("/index", method=made_up)
        assert system.rpc.call("messages", "stats") == {"head": 0, "published": 0, "backlog": 0}
        after = scrape_app(client)
        assert delta(after, before, "microblog_http_requests_total", endpoint="auth.register", method="POST",
                     status="302") == 1
        assert delta(after, before, "microblog_http_requests_total", endpoint="unmatched", method="GET",
                     status="404") == 1
        assert delta(after, before, "microblog_rpc_requests_total", service="users", method="register",
                     outcome="ok") == 1
        assert delta(after, before, "microblog_rpc_requests_total", service="messages", method="stats",
                     outcome="ok") == 1
        assert value(after, "microblog_outbox_backlog", service="messages") == 0
        assert not any(dict(labels).get("method", "").startswith("ZZZ") for _, labels in after)
        assert delta(after, before, "microblog_http_requests_total", endpoint="unmatched", method="OTHER",
                     status="405") == 2
        # The gateway's side of the same calls: what it waited for, by outcome.
        assert delta(after, before, "microblog_rpc_calls_total", service="users", method="register",
                     outcome="ok") == 1
    finally:
        system.stop()
