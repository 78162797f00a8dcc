"""nameko's ``@rpc``, replying without waiting for a publisher confirm.

nameko publishes every RPC reply with publisher confirms: a round trip to RabbitMQ and a
frame to read per call, measured at a quarter of the messages service's CPU under load.
A confirmed reply buys nothing here: the work is committed before the reply is sent, the
request is acknowledged either way, and a reply the broker drops (its caller has gone)
leaves that caller to time out exactly as an unconfirmed one would. Callers still publish
requests with confirms, so an unknown service is still reported at once.

Use it for every entry point of a service (``from kernel.rpc import rpc``): two kinds of
RPC consumer in one service would compete for its queue.
"""
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)


class UnconfirmedPublisher(Publisher):
    use_confirms = False


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


rpc = Rpc.decorator
