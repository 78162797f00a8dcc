"""Settings of the notifications service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return env.service_config(
        "notifications",
        # How often the service compares its position with the feed's head, to notice an
        # event the broker lost when no later event arrives to reveal the gap.
        FEED_CHECK_INTERVAL=env.env_float("FEED_CHECK_INTERVAL", 3.0, minimum=0.05),
    )
