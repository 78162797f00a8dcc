"""Settings of the gateway, from environment variables (read when called, not at import)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kernel import settings as env


@dataclass
class GatewaySettings:
    secret_key: str
    amqp_uri: str = "amqp://guest:guest@127.0.0.1:5672/"
    rpc_pool_size: int = 8
    rpc_timeout: float = 10.0
    # How often a page asks /notifications for news, in seconds (the tutorial's 10 s).
    poll_interval: float = 10.0
    languages: list[str] = field(default_factory=lambda: ["en", "es"])
    # How long a process trusts a user's notification rows it keeps in memory (the badge,
    # the poll) at most; events keep them current meanwhile (0 turns that memory off).
    poll_cache_ttl: float = 5.0
    # How many users' profiles, sessions and notification rows a process keeps in memory
    # (each; least recently used first out). 0 keeps none: every page asks the services.
    memory_users: int = 10_000
    # The push stream (/notifications/stream): pages use it (and poll only when it fails);
    # a comment line every ``stream_keepalive`` seconds keeps idle connections open through
    # proxies; browsers reconnect ``stream_retry_ms`` after a stream ends.
    use_stream: bool = True
    stream_keepalive: float = 15.0
    stream_retry_ms: int = 3000
    # Avatars: "gravatar" (the tutorial's Gravatar URL, d=identicon) or "local" (an
    # identicon drawn by the gateway itself: no request leaves the site).
    avatars: str = "gravatar"
    remember_days: int = 14
    # How long a token of the API (POST /api/tokens) lives, in seconds, unless revoked first.
    api_token_lifetime: float = 3600.0
    secure_cookies: bool = False

    @classmethod
    def from_env(cls, secret_key: str | None = None) -> "GatewaySettings":
        key = secret_key or env.env_str("SECRET_KEY", "")
        if not key:
            raise env.SettingsError(
                "SECRET_KEY is not set: the gateway signs sessions with it. "
                "Set it to a long random string (python -c 'import secrets; print(secrets.token_hex(32))')."
            )
        return cls(
            secret_key=key,
            amqp_uri=env.amqp_uri(),
            rpc_pool_size=env.env_int("RPC_POOL_SIZE", 8, minimum=1),
            rpc_timeout=env.rpc_timeout(),
            poll_interval=env.env_float("POLL_INTERVAL", 10.0, minimum=0.05),
            remember_days=env.env_int("REMEMBER_COOKIE_DAYS", 14, minimum=1),
            api_token_lifetime=api_token_lifetime(),
            avatars=_avatars(env.env_str("AVATARS", "gravatar")),
            poll_cache_ttl=env.env_float("POLL_CACHE_TTL", 5.0, minimum=0.0),
            memory_users=env.env_int("MEMORY_USERS", 10_000, minimum=0),
            secure_cookies=env.env_bool("SECURE_COOKIES", False),
            use_stream=env.env_bool("USE_STREAM", True),
            stream_keepalive=env.env_float("STREAM_KEEPALIVE", 15.0, minimum=0.05),
            stream_retry_ms=env.env_int("STREAM_RETRY_MS", 3000, minimum=0),
        )


def api_token_lifetime() -> float:
    return env.env_float("API_TOKEN_LIFETIME", 3600.0, minimum=1.0)


def _avatars(value: str) -> str:
    if value not in ("gravatar", "local"):
        raise env.SettingsError(f"AVATARS must be gravatar or local, not {value!r}.")
    return value


def persistent_secret_key(data_dir: Path) -> str:
    """Embedded mode's secret key: made once, kept (owner-readable only) in the data folder,
    so sessions survive a restart and no key ever sits in the repository."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(key)
    return key
