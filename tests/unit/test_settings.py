"""Settings come from the environment, fail clearly, and nothing connects at import."""
import subprocess
import sys

import pytest

from gateway.settings import GatewaySettings, persistent_secret_key
from kernel.settings import SettingsError, database_url, env_bool, env_float, env_int


def test_numbers_are_parsed_and_bad_values_named(monkeypatch):
    monkeypatch.setenv("RPC_POOL_SIZE", "12")
    assert env_int("RPC_POOL_SIZE", 8, minimum=1) == 12
    monkeypatch.setenv("RPC_POOL_SIZE", "lots")
    with pytest.raises(SettingsError, match="RPC_POOL_SIZE must be a whole number"):
        env_int("RPC_POOL_SIZE", 8)
    monkeypatch.setenv("RPC_POOL_SIZE", "0")
    with pytest.raises(SettingsError, match="at least 1"):
        env_int("RPC_POOL_SIZE", 8, minimum=1)
    for bad in ("nan", "inf", "soon"):
        monkeypatch.setenv("POLL_INTERVAL", bad)
        with pytest.raises(SettingsError, match="POLL_INTERVAL"):
            env_float("POLL_INTERVAL", 10.0)
    monkeypatch.setenv("SECURE_COOKIES", "maybe")
    with pytest.raises(SettingsError, match="true or false"):
        env_bool("SECURE_COOKIES", False)


def test_each_service_has_its_own_database_url(monkeypatch):
    monkeypatch.setenv("USERS_DATABASE_URL", "postgresql://u@db/users")
    assert database_url("users") == "postgresql://u@db/users"
    assert database_url("messages").endswith("/microblog_messages")


def test_each_services_config_comes_from_its_own_variables(monkeypatch):
    from services.messages.settings import nameko_config as messages_config
    from services.notifications.settings import nameko_config as notifications_config

    monkeypatch.setenv("AMQP_URI", "amqp://u:p@broker:5672/")
    monkeypatch.setenv("MESSAGES_DATABASE_URL", "postgresql://m@db/messages")
    monkeypatch.setenv("MESSAGES_DB_POOL_SIZE", "3")
    monkeypatch.setenv("FEED_CHECK_INTERVAL", "0.5")
    config = messages_config()
    assert (config["AMQP_URI"], config["MESSAGES_DATABASE_URL"], config["DB_POOL_SIZE"]) == (
        "amqp://u:p@broker:5672/", "postgresql://m@db/messages", 3)
    assert config["OUTBOX_POLL_INTERVAL"] == 1.0 and config["OUTBOX_LINGER"] == 0.0
    assert notifications_config()["FEED_CHECK_INTERVAL"] == 0.5
    monkeypatch.setenv("NOTIFICATIONS_MAX_WORKERS", "many")
    with pytest.raises(SettingsError, match="NOTIFICATIONS_MAX_WORKERS"):
        notifications_config()


def test_gateway_refuses_to_start_without_a_secret_key(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(SettingsError, match="SECRET_KEY is not set"):
        GatewaySettings.from_env()
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("POLL_INTERVAL", "2.5")
    settings = GatewaySettings.from_env()
    assert (settings.secret_key, settings.poll_interval) == ("s3cret", 2.5)


def test_embedded_secret_key_is_made_once_and_private(tmp_path):
    key = persistent_secret_key(tmp_path)
    assert len(key) == 64
    assert persistent_secret_key(tmp_path) == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_nothing_connects_at_import_or_app_creation():
    # Unreachable broker and databases: importing everything and building the app must
    # still work, because connections are made on first use only.
    code = (
        "import eventlet; eventlet.monkey_patch()\n"
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('connected at import')\n"
        "socket.create_connection = refuse\n"
        "socket.socket.connect = refuse\n"
        "import gateway, gateway.auth.routes, gateway.main.routes, services.users.service, deploy.cli, deploy.embedded\n"
        "from gateway import create_app\n"
        "from gateway.settings import GatewaySettings\n"
        "app = create_app(GatewaySettings(secret_key='x', amqp_uri='amqp://nowhere.invalid:1//'))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
