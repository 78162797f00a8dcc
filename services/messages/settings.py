"""Settings of the messages service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return env.service_config(
        "messages",
        # How often the outbox relay looks for unpublished events when nothing woke it.
        OUTBOX_POLL_INTERVAL=env.env_float("OUTBOX_POLL_INTERVAL", 1.0, minimum=0.01),
        # How long the relay waits after a wake-up to gather more events into one batch
        # (0: publish at once; measured best for send-to-visible latency).
        OUTBOX_LINGER=env.env_float("OUTBOX_LINGER", 0.0, minimum=0.0),
    )
