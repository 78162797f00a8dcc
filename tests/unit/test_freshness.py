"""The gateway's knowledge of users' latest notification timestamps: never a wrong "nothing new"."""
import time

from gateway.freshness import LatestTimestamps
from tests.waiting import wait_until


def test_nothing_is_vouched_for_before_the_listener_is_connected():
    latest = LatestTimestamps()
    token = latest.reading()
    latest.record(1, 10.0, token)
    assert token is None and not latest.nothing_newer(1, 10.0)


def test_a_recorded_read_answers_later_polls_until_a_change_arrives():
    latest = LatestTimestamps()
    latest.connection_up()
    latest.record(1, 10.0, latest.reading())
    assert latest.nothing_newer(1, 10.0) and latest.nothing_newer(1, 11.0)
    assert not latest.nothing_newer(1, 9.0)
    latest.changed(1, 12.0)
    assert not latest.nothing_newer(1, 10.0)
    assert latest.nothing_newer(1, 12.0)
    assert not latest.nothing_newer(2, 100.0)  # never read: unknown


def test_a_change_heard_during_the_read_is_not_overwritten_by_the_older_read():
    latest = LatestTimestamps()
    latest.connection_up()
    latest.record(1, 5.0, latest.reading())
    token = latest.reading()
    latest.changed(1, 12.0)  # committed and broadcast while our read was in flight
    latest.record(1, 10.0, token)  # the read saw only up to 10
    assert not latest.nothing_newer(1, 10.0)


def test_a_reconnect_forgets_everything_and_stale_tokens_record_nothing():
    latest = LatestTimestamps()
    latest.connection_up()
    token = latest.reading()
    latest.record(1, 10.0, token)
    latest.connection_down()
    assert not latest.nothing_newer(1, 10.0)
    latest.connection_up()
    latest.record(1, 10.0, token)  # read began in the previous epoch: changes may be missed
    assert not latest.nothing_newer(1, 10.0)


def test_entries_expire(monkeypatch):
    import types

    clock = [1000.0]  # the module's clock, moved by hand: no waiting
    monkeypatch.setattr("gateway.freshness.time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    latest = LatestTimestamps(ttl=0.05)
    latest.connection_up()
    latest.record(1, 10.0, latest.reading())
    assert latest.nothing_newer(1, 10.0)
    clock[0] += 0.04
    assert latest.nothing_newer(1, 10.0)
    clock[0] += 0.02
    assert not latest.nothing_newer(1, 10.0)


def test_the_listener_survives_a_broker_cut_reconnects_and_logs_the_outage_once(real_infra, rabbit_config, caplog):
    import logging

    from gateway.hub import Hub
    from tests.fault.proxy import TcpProxy

    broker = TcpProxy(("127.0.0.1", 5672)).start()
    hub = Hub(rabbit_config["AMQP_URI"].replace(":5672", f":{broker.port}"))
    latest, listener = hub.latest, hub.listener
    caplog.set_level(logging.WARNING, logger="gateway.freshness")
    try:
        listener.ensure_started()
        wait_until(lambda: latest.connected, timeout=10, message="the listener did not connect")
        epoch = latest.epoch
        latest.record(1, 10.0, latest.reading())
        broker.cut()
        wait_until(lambda: not latest.connected, timeout=5, message="the listener did not notice the cut")
        assert not latest.nothing_newer(1, 10.0)  # while down, every poll goes to the service
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
