"""What kernel/rpc.py promises, observed on a real RabbitMQ: RPC requests (from the
gateway's pool and from one service to another) and replies travel transient, requests
expire when their caller stops waiting, and replies still reach their caller."""
import json
import uuid

import eventlet
import pytest
from kombu import Connection, Exchange, Queue
from nameko.constants import NON_PERSISTENT

from kernel.calls import DEFAULT_TIMEOUT
from kernel.rpc import RpcProxy, rpc
from kernel.rpc_pool import RpcPool, ServiceUnavailable
from tests.waiting import wait_until


class EchoService:
    name = "echo"

    @rpc
    def ping(self, text):
        return f"pong {text}"


class CallerService:
    name = "caller"
    probe = RpcProxy("probe")

    @rpc
    def call_probe(self):
        return self.probe.ping()


@pytest.fixture
def config(real_infra, rabbit_config):
    return dict(rabbit_config)


@pytest.fixture
def broker(config):
    with Connection(config["AMQP_URI"]) as connection:
        yield connection


def _probe_queue(broker) -> Queue:
    """A queue standing in for a service called "probe", so its requests can be read."""
    queue = Queue("rpc-probe", Exchange("nameko-rpc", type="topic", durable=True), routing_key="probe.*",
                  auto_delete=True)
    queue(broker.default_channel).declare()
    return queue


def _get(broker, queue: Queue):
    message = queue(broker.default_channel).get(no_ack=True)
    assert message is not None, "nothing arrived on " + queue.name
    return message


def _wait_for(broker, queue: Queue, seconds=3.0):
    return wait_until(lambda: queue(broker.default_channel).get(no_ack=True), timeout=seconds, interval=0.05,
                      message="nothing arrived on " + queue.name)


def _depth(broker, queue: Queue) -> int:
    return queue(broker.default_channel).queue_declare(passive=True).message_count


def test_the_pools_requests_are_transient_and_expire_with_its_timeout(config, broker):
    queue = _probe_queue(broker)
    pool = RpcPool(config, size=1, timeout=2)
    try:
        caller = eventlet.spawn(pool.probe.ping)
        request = _wait_for(broker, queue)  # read while the caller still waits
        with pytest.raises(ServiceUnavailable):  # nobody answers the probe
            caller.wait()
    finally:
        pool.stop()
    assert request.properties["delivery_mode"] == NON_PERSISTENT
    assert request.properties["expiration"] == "2000"
    assert json.loads(request.body) == {"args": [], "kwargs": {}}


def test_a_request_nobody_took_in_time_is_gone_when_the_service_comes_back(config, broker):
    # The service is down (its queue exists, nobody consumes): the caller is told it is
    # unavailable, so the request must not run later.
    queue = _probe_queue(broker)
    pool = RpcPool(config, size=1, timeout=1)
    try:
        with pytest.raises(ServiceUnavailable):
            pool.probe.ping()
    finally:
        pool.stop()
    # The broker drops it once its expiration (the caller's timeout) has passed; without
    # one it would stay queued and this wait would fail.
    wait_until(lambda: _depth(broker, queue) == 0, timeout=3, message="the expired request is still queued")
    assert queue(broker.default_channel).get(no_ack=True) is None


def test_requests_between_services_are_transient(config, broker, container_factory):
    queue = _probe_queue(broker)
    container_factory(CallerService, config).start()  # its call waits forever; the container is killed at the end
    pool = RpcPool(config, size=1, timeout=1)
    try:
        with pytest.raises(ServiceUnavailable):  # the caller waits on the silent probe
            pool.caller.call_probe()
    finally:
        pool.stop()
    request = _get(broker, queue)
    assert request.properties["delivery_mode"] == NON_PERSISTENT
    assert request.properties["expiration"] == str(int(DEFAULT_TIMEOUT * 1000))


def test_replies_are_transient_and_arrive(config, broker, container_factory):
    container_factory(EchoService, config).start()
    reply_to = f"probe-replies-{uuid.uuid4().hex}"
    exchange = Exchange("nameko-rpc", type="topic", durable=True)
    replies = Queue(reply_to, exchange, routing_key=reply_to, auto_delete=True)
    replies(broker.default_channel).declare()
    producer = broker.Producer(serializer="json")
    producer.publish({"args": ["x"], "kwargs": {}}, exchange=exchange, routing_key="echo.ping",
                     reply_to=reply_to, correlation_id="1")
    message = wait_until(lambda: replies(broker.default_channel).get(no_ack=True), timeout=5, message="no reply")
    assert message.properties["delivery_mode"] == NON_PERSISTENT
    assert json.loads(message.body) == {"result": "pong x", "error": None}
