"""Settings of the messages service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return {
        "AMQP_URI": env.amqp_uri(),
        "MESSAGES_DATABASE_URL": env.database_url("messages"),
        "DB_POOL_SIZE": env.env_int("MESSAGES_DB_POOL_SIZE", 10, minimum=1),
        "max_workers": env.env_int("MESSAGES_MAX_WORKERS", 10, minimum=1),
        # How often the outbox relay looks for unpublished events when nothing woke it.
        "OUTBOX_POLL_INTERVAL": env.env_float("OUTBOX_POLL_INTERVAL", 1.0, minimum=0.01),
        # How long the relay waits after a wake-up to gather more events into one batch
        # (0: publish at once; measured best for send-to-visible latency).
        "OUTBOX_LINGER": env.env_float("OUTBOX_LINGER", 0.0, minimum=0.0),
    }
