"""The users service in a nameko container on real RabbitMQ and PostgreSQL."""
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook

from kernel.errors import (
    EmailTaken,
    InvalidCredentials,
    UsernameTaken,
    UserNotFound,
    ValidationFailed,
)
from kernel.rpc_pool import RpcPool, ServiceUnavailable
from services.users.service import UsersService

PASSWORD = "correct horse battery"


@pytest.fixture
def config(real_infra, rabbit_config, users_pg_url):
    from tests.conftest import empty_tables

    empty_tables(users_pg_url)
    return dict(rabbit_config, USERS_DATABASE_URL=users_pg_url)


@pytest.fixture
def container(config, container_factory):
    container = container_factory(UsersService, config)
    container.start()
    return container


def test_entrypoint_hook_registers_and_authenticates(container):
    with entrypoint_hook(container, "register") as register:
        profile = register("susan", "susan@example.com", PASSWORD)
    with entrypoint_hook(container, "authenticate") as authenticate:
        assert authenticate("susan", PASSWORD)["id"] == profile["id"]


def test_typed_errors_cross_the_broker_with_their_field(container, config):
    with ClusterRpcProxy(config, timeout=10) as rpc:
        rpc.users.register("susan", "susan@example.com", PASSWORD)
        with pytest.raises(UsernameTaken) as error:
            rpc.users.register("Susan", "x@example.com", PASSWORD)
        assert (error.value.field, error.value.message) == ("username", "Please use a different username.")
        with pytest.raises(EmailTaken):
            rpc.users.register("john", "susan@example.com", PASSWORD)
        with pytest.raises(ValidationFailed) as error:
            rpc.users.register("john", "nope", PASSWORD)
        assert error.value.field == "email"
        with pytest.raises(InvalidCredentials):
            rpc.users.authenticate("susan", "wrong password")
        with pytest.raises(UserNotFound):
            rpc.users.get_user_by_username("nobody")


def test_sessions_are_returned_after_each_worker(container, config):
    # Many more calls than the pool has connections: a leaked session would exhaust it.
    with ClusterRpcProxy(config, timeout=10) as rpc:
        susan = rpc.users.register("susan", "susan@example.com", PASSWORD)
        for _ in range(60):
            with pytest.raises(UserNotFound):
                rpc.users.get_user(999)
            assert rpc.users.get_user(susan["id"])["username"] == "susan"


def test_pool_reports_a_service_that_is_not_running_as_unavailable(config):
    pool = RpcPool({"AMQP_URI": config["AMQP_URI"]}, size=1, timeout=5)
    with pytest.raises(ServiceUnavailable, match="users"):
        pool.users.get_user(1)
    pool.stop()
