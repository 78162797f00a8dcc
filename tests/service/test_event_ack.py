"""A broker connection reset while an event handler's worker runs: the ack at the end of
the worker meets a dead socket before the consumer's own thread has read the reset.

nameko 2.14.1 catches only amqp's ``ConnectionError`` around that ack; the OS's
``BrokenPipeError`` escapes ``handle_result`` and nameko kills the container. That is how a
broker cut ended the notifications service in CI. Our handler
(``services.notifications.service.ProjectedEventHandler``) survives it, and the broker
delivers the unacknowledged event again once the connection is back."""
import eventlet
import pytest
from eventlet import patcher
from nameko.events import EventHandler
from nameko.standalone.events import event_dispatcher

from services.notifications.service import ProjectedEventHandler
from tests.fault.proxy import TcpProxy
from tests.waiting import wait_until

# A sleep that does not yield to eventlet's hub: the consumer's thread cannot run (and so
# cannot notice the reset) before the worker's ack, which is the window CI hit by chance.
blocking_sleep = patcher.original("time").sleep


def probe_service(handler_cls, proxy, calls):
    class Probe:
        name = "ack_probe"

        @handler_cls.decorator("ack_source", "Ping", requeue_on_error=True)
        def on_ping(self, payload):
            calls.append(payload)
            if len(calls) == 1:
                proxy.cut()  # reset every connection of this service, under the worker
                blocking_sleep(0.2)  # the reset has reached our socket; nobody has read it

    return Probe


@pytest.mark.parametrize("handler_cls", [EventHandler, ProjectedEventHandler], ids=["nameko", "ours"])
def test_a_reset_under_an_event_worker_does_not_kill_the_service(handler_cls, real_infra, rabbit_config,
                                                                 container_factory):
    proxy = TcpProxy(("127.0.0.1", 5672)).start()
    try:
        config = dict(rabbit_config, AMQP_URI=rabbit_config["AMQP_URI"].replace(":5672", f":{proxy.port}"))
        calls: list = []
        container = container_factory(probe_service(handler_cls, proxy, calls), config)
        container.start()
        event_dispatcher(rabbit_config)("ack_source", "Ping", {"n": 1})
        wait_until(lambda: calls, message="the event was not delivered")
        proxy.restore()
        if handler_cls is EventHandler:
            # The fault is real: nameko's own handler dies of it (this is what we guard).
            with pytest.raises(BrokenPipeError):
                with eventlet.Timeout(10):
                    container.wait()
            return
        # Ours lives on, and the event it could not acknowledge comes back once.
        wait_until(lambda: len(calls) >= 2, timeout=30,
                   message="the unacknowledged event was not delivered again after the reset")
        assert calls == [{"n": 1}, {"n": 1}]
        assert not container._died.ready(), "the service died of the reset"
        event_dispatcher(rabbit_config)("ack_source", "Ping", {"n": 2})
        wait_until(lambda: len(calls) == 3, message="the service does not consume after the reset")
        assert calls[2] == {"n": 2}
    finally:
        proxy.stop()
