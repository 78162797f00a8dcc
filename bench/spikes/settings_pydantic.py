"""Spike (issue 12, item 0): the settings of kernel/settings.py, gateway/settings.py and
services/*/settings.py written with pydantic-settings, with errors that name the variable
and the value as ours do. Not used by the product; settings_spike.py measures it.
"""
from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """An environment variable holds a value that cannot be used."""


_COMMON = dict(env_ignore_empty=True, str_strip_whitespace=True, allow_inf_nan=False, extra="ignore")

# pydantic's own words for each failure, turned into ours ("X must be ..., got 'v'").
_PHRASES = {
    "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_parsing": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "greater_than_equal": "at least {ge}", "less_than_equal": "at most {le}",
}


def _load(cls, **kwargs):
    """Build ``cls`` from the environment; a bad value raises SettingsError naming it."""
    try:
        return cls(**kwargs)
    except ValidationError as error:
        first = error.errors()[0]
        where = str(first["loc"][0])  # the field's name, or its alias if it has one
        name = where if where in _ALIASES else (kwargs.get("_env_prefix", "") + where).upper()
        phrase = _PHRASES.get(first["type"], first["msg"]).format(**first.get("ctx", {}))
        raise SettingsError(f"{name} must be {phrase}, got {first['input']!r}") from None


_ALIASES = {"AMQP_URI", "METRICS_PORT", "METRICS_REFRESH", "REMEMBER_COOKIE_DAYS"}


class ServiceSettings(BaseSettings):
    """What every service shares; ``<SERVICE>_`` prefixes its own variables."""
    model_config = SettingsConfigDict(**_COMMON)
    amqp_uri: str = Field("amqp://guest:guest@127.0.0.1:5672/", validation_alias=AliasChoices("AMQP_URI"))
    database_url: str | None = None
    db_pool_size: int = Field(10, ge=1)
    max_workers: int = Field(10, ge=1)
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias=AliasChoices("METRICS_PORT"))
    metrics_refresh: float = Field(5.0, ge=0.1, validation_alias=AliasChoices("METRICS_REFRESH"))


class MessagesExtra(BaseSettings):
    model_config = SettingsConfigDict(**_COMMON)
    outbox_poll_interval: float = Field(1.0, ge=0.01)
    outbox_linger: float = Field(0.0, ge=0.0)


class NotificationsExtra(BaseSettings):
    model_config = SettingsConfigDict(**_COMMON)
    feed_check_interval: float = Field(3.0, ge=0.05)


def service_config(service: str, extra: type[BaseSettings] | None = None) -> dict:
    prefix = service.upper()
    common = _load(ServiceSettings, _env_prefix=f"{prefix}_")
    return {
        "AMQP_URI": common.amqp_uri,
        f"{prefix}_DATABASE_URL": common.database_url or f"postgresql://postgres@127.0.0.1:5432/microblog_{service}",
        "DB_POOL_SIZE": common.db_pool_size, "max_workers": common.max_workers,
        "METRICS_PORT": common.metrics_port, "METRICS_REFRESH": common.metrics_refresh,
        **({key.upper(): value for key, value in _load(extra).model_dump().items()} if extra else {}),
    }


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(**_COMMON)
    secret_key: str = ""
    amqp_uri: str = "amqp://guest:guest@127.0.0.1:5672/"
    rpc_pool_size: int = Field(8, ge=1)
    rpc_timeout: float = Field(10.0, ge=0.1)
    poll_interval: float = Field(10.0, ge=0.05)
    languages: ClassVar[list[str]] = ["en", "es"]  # not from the environment (as today)
    poll_cache_ttl: float = Field(5.0, ge=0.0)
    use_stream: bool = True
    stream_keepalive: float = Field(15.0, ge=0.05)
    stream_retry_ms: int = Field(3000, ge=0)
    remember_days: int = Field(14, ge=1, validation_alias=AliasChoices("REMEMBER_COOKIE_DAYS"))
    secure_cookies: bool = False

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_set(cls, value: str) -> str:
        if not value:
            raise SettingsError(
                "SECRET_KEY is not set: the gateway signs sessions with it. "
                "Set it to a long random string (python -c 'import secrets; print(secrets.token_hex(32))').")
        return value

    @classmethod
    def from_env(cls, secret_key: str | None = None) -> "GatewaySettings":
        return _load(cls, **({"secret_key": secret_key} if secret_key else {}))
