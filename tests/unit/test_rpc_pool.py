"""The gateway's pool of started RPC proxies (over the embedded transport)."""
import eventlet
import pytest
from nameko.rpc import rpc

from kernel import memory_transport
from kernel.errors import UserNotFound
from kernel.rpc import rpc as kernel_rpc
from kernel.rpc_pool import RpcPool, ServiceUnavailable


class SlowService:
    name = "slow"

    @rpc
    def wait(self, seconds):
        eventlet.sleep(seconds)  # not a wait: the service under test is slow on purpose
        return seconds

    @rpc
    def missing(self):
        raise UserNotFound("No user with id 3.")


@pytest.fixture
def config(container_factory):
    memory_transport.register()
    config = {"AMQP_URI": "embedded://"}
    container_factory(SlowService, config).start()
    return config


def test_proxies_are_reused_not_made_per_call(config, monkeypatch):
    pool = RpcPool(config, size=3)
    started = []
    original = pool._start_proxy
    monkeypatch.setattr(pool, "_start_proxy", lambda: started.append(1) or original())
    for _ in range(10):
        assert pool.slow.wait(0) == 0
    assert len(started) == 1
    pool.stop()


def test_concurrent_callers_get_their_own_proxy_up_to_the_size(config):
    pool = RpcPool(config, size=3)
    results = [eventlet.spawn(pool.slow.wait, 0.2) for _ in range(6)]
    assert [r.wait() for r in results] == [0.2] * 6
    assert pool._created == 3
    pool.stop()


def test_service_errors_arrive_typed_and_keep_the_proxy(config):
    pool = RpcPool(config, size=1)
    with pytest.raises(UserNotFound, match="No user with id 3."):
        pool.slow.missing()
    assert pool._created == 1 and pool._idle.qsize() == 1
    assert pool.slow.wait(0) == 0
    pool.stop()


def test_a_timed_out_proxy_is_discarded_and_reported_as_unavailable(config):
    pool = RpcPool(config, size=1, timeout=0.2)
    with pytest.raises(ServiceUnavailable):
        pool.slow.wait(2)
    assert pool._created == 0
    assert pool.slow.wait(0) == 0  # a fresh proxy takes its place
    pool.stop()


def test_a_service_nobody_runs_is_unavailable(config):
    # The memory transport cannot return unroutable messages, so here this is a timeout;
    # on RabbitMQ it is nameko's UnknownService at once (tests/service).
    pool = RpcPool(config, size=1, timeout=0.5)
    with pytest.raises(ServiceUnavailable):
        pool.nobody.anything()
    pool.stop()


def test_an_unreachable_broker_is_unavailable_not_a_crash():
    pool = RpcPool({"AMQP_URI": "amqp://guest:guest@127.0.0.1:1//"}, size=1, timeout=1)
    with pytest.raises(ServiceUnavailable):
        pool.users.get_user(1)
    assert pool._created == 0


def test_a_stopped_pool_refuses_work(config):
    pool = RpcPool(config, size=1)
    pool.stop()
    with pytest.raises(ServiceUnavailable):
        pool.slow.wait(0)


def test_replies_are_published_without_waiting_for_a_confirm():
    from kernel.rpc import Responder, Rpc, RpcConsumer

    assert Responder.publisher_cls.use_confirms is False
    assert isinstance(Rpc.rpc_consumer, RpcConsumer)
    from services.messages.service import MessagesService
    from services.notifications.service import NotificationsService
    from services.users.service import UsersService

    for service in (UsersService, MessagesService, NotificationsService):
        from nameko.rpc import Rpc as NamekoRpc

        entrypoints = [e for method in vars(service).values() for e in getattr(method, "nameko_entrypoints", ())]
        rpcs = [e for e in entrypoints if isinstance(e, NamekoRpc)]
        assert rpcs and all(type(e) is Rpc for e in rpcs), service.name


def test_calls_between_services_give_up_after_their_timeout():
    from kernel.calls import call_with_timeout
    from kernel.errors import DependencyUnavailable

    def never_answers(*args):
        eventlet.sleep(10)  # not a wait: a callee that never answers in time

    with pytest.raises(DependencyUnavailable, match="did not answer within 0.05 s"):
        call_with_timeout(never_answers, 1, timeout=0.05)
    assert call_with_timeout(lambda x: x + 1, 1, timeout=1) == 2


# On RabbitMQ, behind a proxy that cuts the gateway's connections (issue 10).

class EchoService:
    name = "echo"

    @kernel_rpc
    def ping(self, text):
        return f"pong {text}"


@pytest.fixture
def broker_cut(real_infra, rabbit_config, container_factory):
    """(pool config through a TcpProxy, the proxy); the echo service talks to RabbitMQ directly."""
    from tests.fault.proxy import TcpProxy

    container_factory(EchoService, dict(rabbit_config)).start()
    proxy = TcpProxy(("127.0.0.1", 5672)).start()
    yield {"AMQP_URI": rabbit_config["AMQP_URI"].replace(":5672", f":{proxy.port}")}, proxy
    proxy.stop()


def test_while_the_broker_is_unreachable_calls_fail_at_once_and_then_work_again(broker_cut):
    import time

    config, proxy = broker_cut
    pool = RpcPool(config, size=2, timeout=10)
    both = [eventlet.spawn(pool.echo.ping, i) for i in range(2)]  # two proxies started, now idle
    assert [g.wait() for g in both] == ["pong 0", "pong 1"] and pool._created == 2
    proxy.cut()
    for attempt in range(4):  # idle proxies whose connection was reset, then fresh ones refused
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            pool.echo.ping("lost")
        assert time.monotonic() - started < 2.0, f"attempt {attempt} took {time.monotonic() - started:.1f}s"
    proxy.restore()
    assert pool.echo.ping("back") == "pong back"  # at once: nothing to restart, no failed first call
    pool.stop()


def test_a_broker_that_hangs_makes_calls_fail_within_a_bound_not_hang(broker_cut):
    import time

    config, proxy = broker_cut
    pool = RpcPool(config, size=1, timeout=2)
    assert pool.echo.ping(1) == "pong 1"
    proxy.stall()  # connections stay open; nothing passes
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        pool.echo.ping("lost")
    took = time.monotonic() - started
    print(f"\nfailed after {took:.1f}s")
    assert took < 20  # confirm wait (3 s), then a reconnect whose handshake times out; not forever
    proxy.restore()
    proxy.cut()
    proxy.restore()
    assert pool.echo.ping("back") == "pong back"
    pool.stop()
