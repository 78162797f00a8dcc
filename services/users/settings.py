"""Settings of the users service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return {
        "AMQP_URI": env.amqp_uri(),
        "USERS_DATABASE_URL": env.database_url("users"),
        "DB_POOL_SIZE": env.env_int("USERS_DB_POOL_SIZE", 10, minimum=1),
        "max_workers": env.env_int("USERS_MAX_WORKERS", 10, minimum=1),
    }
