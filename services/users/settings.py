"""Settings of the users service, from environment variables (read when called, not at import)."""
from kernel import settings as env


def nameko_config() -> dict:
    return env.service_config("users", **env.outbox_config())
