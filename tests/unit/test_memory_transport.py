"""The embedded broker: kombu's memory transport with the three shims nameko needs."""
import time

import pytest
from kombu import Connection, Exchange, Queue
from nameko.events import event_handler
from nameko.rpc import RpcProxy, rpc
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_waiter

from kernel import memory_transport


class EchoService:
    name = "echo"

    @rpc
    def echo(self, value):
        return value


class RelayService:
    """Each event it handles waits on an RPC to echo: the reply must come in through the
    same channel its event deliveries arrived on."""
    name = "relayer"
    echo = RpcProxy("echo")
    handled = []

    @event_handler("source", "ping")
    def on_ping(self, value):
        RelayService.handled.append(self.echo.echo(value))


@pytest.fixture
def embedded_config():
    memory_transport.register()
    return {"AMQP_URI": "embedded://"}


def test_messages_carry_content_type_in_their_properties(embedded_config):
    # Shim 1: nameko's responder reads message.properties["content_type"].
    exchange = Exchange("shim-test", type="direct")
    queue = Queue("shim-test-q", exchange, routing_key="k")
    with Connection("embedded://") as connection:
        producer = connection.Producer(serializer="json")
        producer.publish({"a": 1}, exchange=exchange, routing_key="k", declare=[queue])
        message = queue(connection.default_channel).get(no_ack=True)
    assert message.payload == {"a": 1}
    assert message.properties["content_type"] == "application/json"
    assert message.properties["content_encoding"] == "utf-8"


def test_plain_memory_transport_lacks_it():
    # The reason for shim 1, so that this test fails if kombu ever fixes it upstream.
    exchange = Exchange("plain-test", type="direct")
    queue = Queue("plain-test-q", exchange, routing_key="k")
    with Connection("memory://") as connection:
        connection.Producer(serializer="json").publish({"a": 1}, exchange=exchange, routing_key="k", declare=[queue])
        message = queue(connection.default_channel).get(no_ack=True)
    assert "content_type" not in message.properties


def test_nameko_rpc_round_trips_quickly_over_the_embedded_transport(embedded_config, container_factory):
    container = container_factory(EchoService, embedded_config)
    container.start()
    with ClusterRpcProxy(embedded_config, timeout=5) as proxy:
        assert proxy.echo.echo({"x": [1, 2]}) == {"x": [1, 2]}
        # Shim 2: with kombu's default 1 s polling interval, 20 calls take 20 s or more.
        started = time.monotonic()
        for i in range(20):
            assert proxy.echo.echo(i) == i
        assert time.monotonic() - started < 5
    assert memory_transport.Transport.polling_interval < 0.05


def test_event_handlers_waiting_on_rpc_replies_do_not_starve_them(embedded_config, container_factory):
    # Shim 3: with a channel-wide prefetch of max_workers (2 here), two handlers waiting on
    # their replies hold both slots and the replies are never delivered.
    config = dict(embedded_config, max_workers=2)
    container_factory(EchoService, config).start()
    relayer = container_factory(RelayService, config)
    relayer.start()
    RelayService.handled.clear()
    dispatch = event_dispatcher(embedded_config)
    done = []

    def sixth_handled(worker_ctx, result, exc_info):
        done.append(exc_info)
        return len(done) == 6

    with entrypoint_waiter(relayer, "on_ping", callback=sixth_handled, timeout=5):
        for i in range(6):
            dispatch("source", "ping", i)
    assert done == [None] * 6  # no handler failed
    assert sorted(RelayService.handled) == list(range(6))
