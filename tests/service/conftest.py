"""Configuration for services in nameko containers: real RabbitMQ + PostgreSQL, or the
embedded transport + SQLite, from the same test body."""
from kernel import memory_transport
from tests.conftest import empty_tables


def services_config(request, tmp_path, names) -> dict:
    """A nameko config with migrated, empty databases for ``names``; ``request.param``
    picks "real" (a fresh vhost, the session's PostgreSQL databases) or "embedded"."""
    from deploy.registry import SERVICES

    if request.param == "embedded":
        from kernel.migrations import upgrade

        memory_transport.register()
        config = {"AMQP_URI": "embedded://", "DB_POOL_SIZE": 1}
        for name in names:
            url = f"sqlite:///{tmp_path / name}.db"
            upgrade(SERVICES[name].migrations, url)
            config[SERVICES[name].database_key] = url
        return config
    request.getfixturevalue("real_infra")
    config = dict(request.getfixturevalue("rabbit_config"))
    for name in names:
        url = request.getfixturevalue(f"{name}_pg_url")
        empty_tables(url)
        config[SERVICES[name].database_key] = url
    return config
