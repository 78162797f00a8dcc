"""The gateway's listener: it survives broker outages, and the memory it feeds trusts nothing while down."""
import time

from tests.waiting import wait_until



def test_the_listener_survives_a_broker_cut_reconnects_and_logs_the_outage_once(real_infra, rabbit_config, caplog):
    import logging

    from gateway.hub import Hub
    from tests.fault.proxy import TcpProxy

    broker = TcpProxy(("127.0.0.1", 5672)).start()
    hub = Hub(rabbit_config["AMQP_URI"].replace(":5672", f":{broker.port}"))
    latest, listener = hub.known.notifications, hub.listener
    caplog.set_level(logging.WARNING, logger="gateway.freshness")
    try:
        listener.ensure_started()
        wait_until(lambda: latest.connected, timeout=10, message="the listener did not connect")
        epoch = latest.epoch
        assert latest.keep(1, {}, latest.reading())
        broker.cut()
        wait_until(lambda: not latest.connected, timeout=5, message="the listener did not notice the cut")
        assert latest.get(1) is None  # while down, every read goes to the service
        # Not a wait for a state: the cut is held 7 s, through several refused reconnect attempts,
        # to show the outage is logged once, not once per attempt.
        time.sleep(7)
        broker.restore()
        wait_until(lambda: latest.connected, timeout=10, message="the listener did not reconnect")  # the backoff is bounded: back within a few seconds
        assert latest.epoch > epoch
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.freshness"]
        # Down once, back once: not a line per attempt.
        assert len(lines) == 2 and "working again" in lines[1], lines
        assert not any(r.exc_info for r in caplog.records if r.name == "gateway.freshness")
    finally:
        listener.stop(wait=5)
        broker.stop()
