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

And nothing here waits long for a broker that is gone (issue 10). nameko publishes with
three retries, sleeping 2-5 s before each reconnect: ~10 s per request or reply while the
broker is down, and a reply that finally fails raises out of the worker, which kills the
whole container (nameko's ``_handle_thread_exited``). Here every publish tries once more on
a fresh connection (a pooled connection the broker dropped is only found dead when used),
without sleeping, then gives up: the caller hears "unavailable" at once, and a service
whose reply cannot go out logs it (once per outage) and carries on; its consumer
reconnects by itself (kombu's ``ConsumerMixin``). A reply is worth nothing once its caller
stopped waiting, and a caller that was refused can be retried by the person.
"""
import logging
import select
import socket

from kombu import Connection
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    DEFAULT_TRANSPORT_OPTIONS,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.standalone import rpc as standalone_rpc

from kernel.calls import DEFAULT_TIMEOUT
from kernel.outage import OutageLog

logger = logging.getLogger(__name__)

TRANSIENT = {"delivery_mode": NON_PERSISTENT}

# One more try on a fresh connection, at once; then the publish raises (kombu's
# OperationalError). Used both for the publish itself (``retry_policy``) and for getting a
# pooled connection (``transport_options``, read by ``Connection.default_channel``).
NO_WAIT_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}
CONNECT_TIMEOUT = 3.0  # seconds; kombu's default is 4, per attempt


class RequestPublisher(Publisher):
    """RPC requests: confirmed (an unknown service is reported at once), transient. nameko's
    publisher, without its sleeps between reconnects (see the module doc), and with a bound
    on waiting for the broker's confirm (a hung broker never sends it)."""

    retry_policy = NO_WAIT_RETRY
    transport_options = {**DEFAULT_TRANSPORT_OPTIONS, **NO_WAIT_RETRY, "connect_retries_timeout": CONNECT_TIMEOUT}
    delivery_mode = NON_PERSISTENT

    def __init__(self, amqp_uri, **options):
        options.setdefault("confirm_timeout", CONNECT_TIMEOUT)
        super().__init__(amqp_uri, **options)


class UnconfirmedPublisher(RequestPublisher):
    """RPC replies: the same, unconfirmed."""

    use_confirms = False


class Responder(nameko_rpc.Responder):
    publisher_cls = UnconfirmedPublisher


_replies = OutageLog(logger, "RPC replies")


class RpcConsumer(nameko_rpc.RpcConsumer):
    def handle_result(self, message, result, exc_info):
        # nameko 2.14.1's RpcConsumer.handle_result (pinned), with our Responder, and a
        # reply that cannot be published is given up instead of raised: raised, it would
        # end the worker's thread with an error, and nameko kills the container for that.
        config = self.container.config
        responder = Responder(
            config[AMQP_URI_CONFIG_KEY],
            nameko_rpc.get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
        )
        try:
            result, exc_info = responder.send_response(result, exc_info)
        except Exception as exc:  # the broker is unreachable: the caller will not hear back
            _replies.failed(exc, "dropping replies (their callers time out or have given up)")
        else:
            _replies.succeeded()
        # Acknowledged even when the reply was lost: the work is done, and running it again
        # would not reach that caller either. On a connection that is already gone nameko
        # skips the ack and the broker requeues the request, whose TTL (its caller's
        # timeout) keeps it from running again after the caller gave up.
        try:
            self.queue_consumer.ack_message(message)
        except Exception as exc:  # the connection died under the ack: as above
            logger.debug("could not acknowledge an RPC request: %s", exc)
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


class MethodProxy(nameko_rpc.MethodProxy):
    publisher_cls = RequestPublisher


class ServiceProxy(nameko_rpc.ServiceProxy):
    def __getattr__(self, name):
        return MethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, **self.options)


class RpcProxy(nameko_rpc.RpcProxy):
    """nameko's ``RpcProxy`` dependency; requests transient, expiring after ``expiration`` s,
    and failing at once while the broker is unreachable."""

    def __init__(self, target_service, expiration: float = DEFAULT_TIMEOUT, **options):
        super().__init__(target_service, **{**TRANSIENT, "expiration": expiration, **options})

    def get_dependency(self, worker_ctx):
        return ServiceProxy(worker_ctx, self.target_service, self.rpc_reply_listener, **self.options)


class _ClusterProxy(standalone_rpc.ClusterProxy):
    def __init__(self, worker_ctx, reply_listener, options: dict):
        super().__init__(worker_ctx, reply_listener)
        self._options = options

    def __getattr__(self, name):
        if name not in self._proxies:
            self._proxies[name] = ServiceProxy(self._worker_ctx, name, self._reply_listener, **self._options)
        return self._proxies[name]


class _ReplyConsumer(standalone_rpc.PollingQueueConsumer):
    """The standalone proxy's reply consumer, (re)connecting in one attempt.

    nameko's reconnects through ``Connection.connection``, which sleeps 2 s between two
    attempts: a proxy started, or a reply awaited, while the broker is down took 2 s to
    fail. One attempt answers at once (refused) and still reconnects a connection the
    broker dropped, as soon as the broker is back.
    """

    def register_provider(self, provider):
        # nameko's, with a bounded connect and a single attempt (_setup_consumer).
        from nameko import serialization

        self.provider = provider
        config = provider.container.config
        self.serializer, self.accept = serialization.setup(config)
        self.connection = Connection(config[AMQP_URI_CONFIG_KEY], ssl=config.get(AMQP_SSL_CONFIG_KEY),
                                     login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
                                     connect_timeout=CONNECT_TIMEOUT)
        self.queue = provider.queue
        self._setup_consumer()
        self.stopped = False

    def _setup_consumer(self):
        if not self.connection.connected:
            self.connection.collect()  # drop the dead socket's channels, so nothing reuses them
            self.connection.ensure_connection(max_retries=0, timeout=CONNECT_TIMEOUT)
        super()._setup_consumer()

    def alive(self) -> bool:
        """False if the broker has closed or reset this connection (found without blocking)."""
        return self.connection.connected and not _socket_closed(self.connection)


def _socket_closed(connection: Connection) -> bool:
    try:
        sock = connection.connection.sock
    except AttributeError:  # not a socket transport (memory): nothing to look at
        return False
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False  # nothing to read: open (as far as can be told without a round trip)
        return sock.recv(1, socket.MSG_PEEK) == b""  # readable and empty: the peer closed it
    except ValueError:  # a socket that cannot peek (TLS): the first use will tell
        return False
    except OSError:  # reset
        return True


class _ReplyListener(standalone_rpc.SingleThreadedReplyListener):
    def __init__(self, timeout=None):
        super().__init__(timeout=timeout)
        self.queue_consumer = _ReplyConsumer(timeout=timeout)


class ClusterRpcProxy(standalone_rpc.ClusterRpcProxy):
    """nameko's standalone ``ClusterRpcProxy``; requests transient, expiring with ``timeout``,
    and failing at once while the broker is unreachable."""

    def __init__(self, config, context_data=None, timeout=None, **kwargs):
        kwargs.setdefault("reply_listener_cls", _ReplyListener)
        super().__init__(config, context_data, timeout, **kwargs)
        options = dict(TRANSIENT, expiration=timeout) if timeout else dict(TRANSIENT)
        self._proxy = _ClusterProxy(self._worker_ctx, self._reply_listener, options)

    def alive(self) -> bool:
        """Whether this started proxy's reply connection is still open (see ``RpcPool``)."""
        consumer = self._reply_listener.queue_consumer
        return not consumer.stopped and (not hasattr(consumer, "alive") or consumer.alive())

    def abandon(self) -> None:
        """Stop, without the closing handshake (``stop()`` waits for the broker's answer
        without a bound: forever, from a broker that hangs)."""
        consumer = self._reply_listener.queue_consumer
        consumer.stopped = True
        connection = getattr(consumer, "connection", None)
        if connection is not None:
            connection.collect()
