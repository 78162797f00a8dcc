"""Settings of the notifications service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return {
        "AMQP_URI": env.amqp_uri(),
        "NOTIFICATIONS_DATABASE_URL": env.database_url("notifications"),
        "DB_POOL_SIZE": env.env_int("NOTIFICATIONS_DB_POOL_SIZE", 10, minimum=1),
        "max_workers": env.env_int("NOTIFICATIONS_MAX_WORKERS", 10, minimum=1),
        # How often the service compares its position with the feed's head, to notice an
        # event the broker lost when no later event arrives to reveal the gap.
        "FEED_CHECK_INTERVAL": env.env_float("FEED_CHECK_INTERVAL", 3.0, minimum=0.05),
    }
