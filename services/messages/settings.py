"""Settings of the messages service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return env.service_config("messages", **env.outbox_config())
