"""nameko's ``@rpc``, replying without waiting for a publisher confirm.

nameko publishes every RPC reply with publisher confirms: a round trip to RabbitMQ and a
frame to read per call, measured at a quarter of the messages service's CPU under load.
A confirmed reply buys nothing here: the work is committed before the reply is sent, the
request is acknowledged either way, and a reply the broker drops (its caller has gone)
leaves that caller to time out exactly as an unconfirmed one would. Callers still publish
requests with confirms, so an unknown service is still reported at once.

Use it for every entry point of a service (``from kernel.rpc import rpc``): two kinds of
RPC consumer in one service would compete for its queue.

RPC requests and replies are also published *transient* (delivery mode 1), where nameko
makes them persistent. A persistent message in the durable ``rpc-<service>`` queue is
written to RabbitMQ's queue index, measured at 0.4 ms of broker CPU per call (a quarter
of the broker's work per send). Persistence buys nothing for a call: its caller waits at
most its timeout and its reply queue does not survive a broker restart, so a request
replayed after a restart would run with nobody to tell, and be retried by a caller that
was told it failed. Events (the outbox relay) stay persistent: they are the state.
``RpcProxy`` (between services) and ``ClusterRpcProxy`` (the gateway's pool, the CLI) here
publish requests that way.

And a request expires (AMQP per-message TTL) when its caller stops waiting: its timeout
for ``ClusterRpcProxy``, ``kernel.calls.DEFAULT_TIMEOUT`` between services. Without that,
a request to a service that is down waits in the service's durable queue; the caller is
told "unavailable", and the service runs the request when it comes back: a message the
sender was told had failed would be sent after all.
"""
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.standalone import rpc as standalone_rpc

from kernel.calls import DEFAULT_TIMEOUT

TRANSIENT = {"delivery_mode": NON_PERSISTENT}


class UnconfirmedPublisher(Publisher):
    use_confirms = False
    delivery_mode = NON_PERSISTENT


class Responder(nameko_rpc.Responder):
    publisher_cls = UnconfirmedPublisher


class RpcConsumer(nameko_rpc.RpcConsumer):
    def handle_result(self, message, result, exc_info):
        # nameko 2.14.1's RpcConsumer.handle_result (pinned), with our Responder.
        config = self.container.config
        responder = Responder(
            config[AMQP_URI_CONFIG_KEY],
            nameko_rpc.get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        result, exc_info = responder.send_response(result, exc_info)
        self.queue_consumer.ack_message(message)
        return result, exc_info


class Rpc(nameko_rpc.Rpc):
    rpc_consumer = RpcConsumer()

    def handle_result(self, message, worker_ctx, result, exc_info):
        # One place for every service: an entry point that failed because its database
        # does not answer replies with the typed ``DatabaseUnavailable`` (the gateway
        # answers 503), not the driver's error (which it could only answer with a 500).
        if exc_info is not None:
            from kernel.db import database_unavailable_reply

            exc_info = database_unavailable_reply(exc_info, self.container.service_name)
        return super().handle_result(message, worker_ctx, result, exc_info)


rpc = Rpc.decorator


class RpcProxy(nameko_rpc.RpcProxy):
    """nameko's ``RpcProxy`` dependency; requests transient, expiring after ``expiration`` s."""

    def __init__(self, target_service, expiration: float = DEFAULT_TIMEOUT, **options):
        super().__init__(target_service, **{**TRANSIENT, "expiration": expiration, **options})


class _ClusterProxy(standalone_rpc.ClusterProxy):
    def __init__(self, worker_ctx, reply_listener, options: dict):
        super().__init__(worker_ctx, reply_listener)
        self._options = options

    def __getattr__(self, name):
        if name not in self._proxies:
            self._proxies[name] = nameko_rpc.ServiceProxy(self._worker_ctx, name, self._reply_listener,
                                                          **self._options)
        return self._proxies[name]


class ClusterRpcProxy(standalone_rpc.ClusterRpcProxy):
    """nameko's standalone ``ClusterRpcProxy``; requests transient, expiring with ``timeout``."""

    def __init__(self, config, context_data=None, timeout=None, **kwargs):
        super().__init__(config, context_data, timeout, **kwargs)
        options = dict(TRANSIENT, expiration=timeout) if timeout else dict(TRANSIENT)
        self._proxy = _ClusterProxy(self._worker_ctx, self._reply_listener, options)
