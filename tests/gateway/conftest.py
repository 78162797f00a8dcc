"""The gateway over a running system: the embedded one, and real services on RabbitMQ + PostgreSQL.

Each system starts once per test session (starting and stopping nameko services costs
seconds); every test gets empty databases and a fresh browser (test client).
"""
import eventlet
import eventlet.wsgi
import pytest

from tests.conftest import TEST_SECRET, empty_tables


class RunningSystem:
    def __init__(self, app, database_urls, stop, amqp_uri):
        self.app = app
        self.database_urls = database_urls
        self.stop = stop
        self.amqp_uri = amqp_uri

    def another_gateway(self):
        """A second gateway app on the same services and broker: its own hub, listener and
        memory (what a second gateway process has), sharing only the RPC pool."""
        from gateway import create_app
        from gateway.settings import GatewaySettings

        app = create_app(GatewaySettings(secret_key=TEST_SECRET, amqp_uri=self.amqp_uri, poll_interval=0.2),
                         rpc=self.app.extensions["rpc"])
        app.config["TESTING"] = True
        return app

    def settle(self, timeout=10):
        """Wait until every committed event has reached the notifications projection, so
        nothing from the previous test lands after the databases are emptied."""
        from tests.waiting import wait_until

        with self.app.app_context():
            from gateway.rpc import services

            wait_until(lambda: services().notifications.position() == services().messages.head(), timeout=timeout,
                       interval=0.02, message="the notifications projection did not catch up with the log")

    def reset(self):
        self.settle()
        for url in self.database_urls:
            empty_tables(url)
        # The gateway's memory of users and their rows is of data just deleted (ids are
        # used again): a running system never has its databases emptied under it.
        self.app.extensions["known"].clear()


@pytest.fixture(scope="session")
def session_rabbit_config(request, real_infra, vhost_pipeline):
    from urllib.parse import urlparse

    uri = urlparse(request.config.getoption("RABBIT_AMQP_URI"))
    with vhost_pipeline.get() as vhost:
        yield {"AMQP_URI": f"{uri.scheme}://{uri.netloc}/{vhost}"}


def _start_embedded(tmp_path_factory):
    from deploy.embedded import EmbeddedSystem
    from deploy.registry import SERVICES

    system = EmbeddedSystem(tmp_path_factory.mktemp("embedded"), secret_key=TEST_SECRET, poll_interval=0.2).start()
    urls = [system.config[spec.database_key] for spec in SERVICES.values()]
    from deploy.embedded import EMBEDDED_AMQP_URI

    return RunningSystem(system.app, urls, system.stop, EMBEDDED_AMQP_URI)


def _start_real(request):
    from nameko.runners import ServiceRunner

    from deploy.registry import SERVICES
    from gateway import create_app
    from gateway.settings import GatewaySettings
    from kernel.migrations import upgrade
    from kernel.rpc_pool import RpcPool

    config = dict(request.getfixturevalue("session_rabbit_config"))
    postgres = request.getfixturevalue("postgres")
    for spec in SERVICES.values():
        config[spec.database_key] = postgres.create(spec.name)
        upgrade(spec.migrations, config[spec.database_key])
    runner = ServiceRunner(config)
    for spec in SERVICES.values():
        runner.add_service(spec.service_class())
    runner.start()
    pool = RpcPool({"AMQP_URI": config["AMQP_URI"]}, size=4, timeout=10)
    app = create_app(GatewaySettings(secret_key=TEST_SECRET, amqp_uri=config["AMQP_URI"], poll_interval=0.2), rpc=pool)

    def stop():
        pool.stop()
        runner.stop()

    return RunningSystem(app, [config[spec.database_key] for spec in SERVICES.values()], stop, config["AMQP_URI"])


@pytest.fixture(scope="session", params=["embedded", "real"])
def running_system(request, tmp_path_factory):
    system = _start_embedded(tmp_path_factory) if request.param == "embedded" else _start_real(request)
    system.app.config["TESTING"] = True
    yield system
    system.stop()


@pytest.fixture
def system_app(running_system):
    running_system.reset()
    return running_system.app


@pytest.fixture
def second_gateway(running_system, system_app):
    """Another gateway process, as far as memory goes (``RunningSystem.another_gateway``)."""
    app = running_system.another_gateway()
    yield app
    app.extensions["hub"].stop()


@pytest.fixture
def client(system_app):
    return system_app.test_client()


@pytest.fixture
def other_client(system_app):
    """A second browser."""
    return system_app.test_client()


@pytest.fixture
def susan_and_john(client, other_client):
    """Two signed-in browsers: susan's and john's."""
    from tests.helpers import signed_in

    signed_in(other_client, "john")
    signed_in(client, "susan")
    return client, other_client


@pytest.fixture
def base(system_app):
    """``system_app`` served over HTTP on a free port (eventlet's WSGI server, as in
    embedded mode), for tests that read a real response stream: its base URL."""
    listener = eventlet.listen(("127.0.0.1", 0))
    server = eventlet.spawn(eventlet.wsgi.server, listener, system_app, log_output=False)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.kill()
    listener.close()
