"""SIGTERM stops a service in a bounded time even while its broker is away (nameko's own
stop waits for a consumer that keeps reconnecting)."""
import os
import signal
import time

from tests.fault.cluster import Cluster
from tests.fault.proxy import TcpProxy


def test_a_service_stops_on_sigterm_while_the_broker_is_cut(tmp_path, real_infra, rabbit_config, postgres):
    broker = TcpProxy(("127.0.0.1", 5672)).start()
    env = {"AMQP_URI": rabbit_config["AMQP_URI"].replace(":5672", f":{broker.port}"),
           "USERS_DATABASE_URL": postgres.create("users_stop")}
    cluster = Cluster(tmp_path, env)
    try:
        process = cluster.launch("users")
        broker.cut()
        # Not a wait for a state: the broker stays cut for 3 s, so the service has noticed and its
        # consumer is retrying (nameko's stop then waits on that) when SIGTERM comes.
        time.sleep(3)
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=30)
        took = time.monotonic() - started
        log = cluster.log_of("users").read_text()
        assert took < 12, (took, log[-2000:])
        if code != 0:  # it could not stop cleanly: it says so, in one line
            assert "did not stop within 8 s" in log, log[-2000:]
    finally:
        cluster.stop_all()
        broker.stop()
