"""kill -9 of single service processes, with real processes, RabbitMQ and PostgreSQL:
nothing acknowledged is lost, nothing is applied twice, every process is alive after.

The exact moment that once duplicated messages is made deterministic: the messages
service commits a send, its answer from PostgreSQL is held on the way back (a proxy), and
it is killed before it can reply. RabbitMQ then gives the unacknowledged request to the
restarted service, which must find the send already made (its idempotency key) instead
of making it again.
"""
import re
import subprocess

import eventlet
import pytest
import requests
from sqlalchemy import create_engine, text

from tests.fault.cluster import MICROBLOG, Cluster
from tests.fault.proxy import TcpProxy
from tests.waiting import wait_until


def _bodies(session, base) -> list[str]:
    return re.findall(r'<p class="card-text message-body">(.*?)</p>', session.get(base + "/messages").text, re.S)


def _logged_sends(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT data::json->>'body' FROM event_log WHERE event_type = 'MessageSent' ORDER BY position"))
            return [row[0] for row in rows]
    finally:
        engine.dispose()


@pytest.fixture
def databases(postgres):
    return {name: postgres.create(f"{name}_crash") for name in ("users", "messages", "notifications")}


def test_a_send_committed_by_a_service_killed_before_it_replied_is_made_once(tmp_path, real_infra, rabbit_config,
                                                                             databases):
    database = TcpProxy(("127.0.0.1", 5432)).start()
    messages_url = databases["messages"].replace(":5432/", f":{database.port}/")
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "RPC_TIMEOUT": "20",
           **{f"{name.upper()}_DATABASE_URL": url for name, url in databases.items()}}
    cluster = Cluster(tmp_path, env, per_process={"messages": {"MESSAGES_DATABASE_URL": messages_url}})
    try:
        cluster.start_all()
        susan, john = cluster.sign_in("susan"), cluster.sign_in("john")
        form = cluster.send_form(susan, "john")
        assert susan.post(cluster.base + "/send_message/john", data={**form, "message": "warm-up"},
                          allow_redirects=False).status_code == 302

        form = cluster.send_form(susan, "john")
        # PostgreSQL commits the send; the service hears nothing back on that connection.
        database.hold_answers_after("the one".encode())

        def submit():
            return susan.post(cluster.base + "/send_message/john", data={**form, "message": "the one"},
                              allow_redirects=False, timeout=60)

        pending = eventlet.spawn(submit)
        wait_until(lambda: _logged_sends(databases["messages"]) == ["warm-up", "the one"], timeout=20,
                   interval=0.05, message="the send never reached the log")
        cluster.kill9("messages")  # committed, never replied, never acknowledged the request
        database.cut()
        database.restore()
        cluster.launch("messages")  # RabbitMQ hands it the unacknowledged request again

        response = pending.wait()
        if response.status_code != 302:  # the gateway gave up first: the person presses Send again
            assert response.status_code == 503
            response = submit()
        assert response.status_code == 302, response.text
        assert submit().status_code == 302  # and once more, for good measure: still one send

        assert _logged_sends(databases["messages"]) == ["warm-up", "the one"]
        cluster.wait_for_unread(john, 2)
        assert _bodies(john, cluster.base) == ["the one", "warm-up"]
        assert cluster.dead() == [], cluster.dead_logs()
        restarted = cluster.log_of("messages").read_text()
        assert "Traceback" not in restarted, restarted[-3000:]
    finally:
        cluster.stop_all()
        database.stop()


def test_kill_9_of_messages_and_notifications_during_sends_loses_and_duplicates_nothing(
        tmp_path, real_infra, rabbit_config, databases):
    env = {"AMQP_URI": rabbit_config["AMQP_URI"], "RPC_TIMEOUT": "5",
           **{f"{name.upper()}_DATABASE_URL": url for name, url in databases.items()}}
    cluster = Cluster(tmp_path, env)
    acknowledged: list[str] = []
    stop = []
    try:
        cluster.start_all()
        senders = [cluster.sign_in(f"sender{i}") for i in range(3)]
        john = cluster.sign_in("john")

        def send_forever(number, session):
            # A person who presses Send again on the same form until it says "sent".
            i = 0
            while not stop:
                body = f"s{number}-{i}"
                try:
                    form = cluster.send_form(session, "john")
                except (AssertionError, requests.RequestException):
                    eventlet.sleep(0.2)  # pacing, not a wait: the form page failed (503); open it again
                    continue
                for _ in range(200):
                    try:
                        response = session.post(cluster.base + "/send_message/john", allow_redirects=False,
                                                timeout=30, data={**form, "message": body})
                    except requests.RequestException:
                        response = None
                    if response is not None and response.status_code == 302:
                        acknowledged.append(body)
                        break
                    eventlet.sleep(0.2)  # pacing, not a wait: a person presses Send again
                i += 1

        workers = [eventlet.spawn(send_forever, n, s) for n, s in enumerate(senders)]
        def sends_flow(more):  # wait until `more` further sends are acknowledged
            wanted = len(acknowledged) + more
            wait_until(lambda: len(acknowledged) >= wanted, timeout=60, interval=0.05,
                       message=f"sends did not reach {wanted} acknowledged")

        sends_flow(5)
        for victim in ("messages", "notifications", "messages"):
            cluster.kill9(victim)
            eventlet.sleep(0.5)  # not a wait: the victim stays down a moment while the senders keep pressing
            cluster.launch(victim)
            sends_flow(6)
        stop.append(True)
        for worker in workers:
            worker.wait()

        assert len(acknowledged) > 20
        logged = _logged_sends(databases["messages"])
        assert sorted(logged) == sorted(acknowledged)  # every acknowledged send once, nothing else
        assert len(set(logged)) == len(logged)
        cluster.wait_for_unread(john, len(acknowledged), timeout=60)
        assert sorted(_bodies(john, cluster.base)[:25]) == sorted(logged[::-1][:25])
        assert cluster.dead() == [], cluster.dead_logs()
        result = subprocess.run([MICROBLOG, "verify"], env={**cluster.env_of("notifications"), "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop.append(True)
        cluster.stop_all()
