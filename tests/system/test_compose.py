"""The container set-up, checked without a Docker engine: docker-compose.yml against the
compose specification, the Dockerfile with hadolint, the settings it promises, and each
compose service's own command run as a local process against the local RabbitMQ and
PostgreSQL (the full flow through the gateway; one service stopped and restarted alone
while the others keep serving; nothing lost)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import http_sign_in
from tests.waiting import wait_until
from tests.system.test_commands import CSRF, MICROBLOG, free_port, start, stop, wait_for_http, wait_for_log

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
BIN = Path(sys.executable).parent
APP_SERVICES = ("users", "messages", "notifications", "gateway")
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the << merge keys


def interpolate(value: str, variables: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (and $$ for a dollar sign)."""
    def substitute(match):
        name, kind, argument = match.groups()
        if variables.get(name):
            return variables[name]
        if kind == "?":
            raise KeyError(f"{name}: {argument}")
        return argument if kind == "-" else ""
    return VARIABLE.sub(substitute, str(value)).replace("$$", "$")


def example_env() -> dict:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def test_the_compose_file_follows_the_compose_specification():
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dockerfile_passes_hadolint():
    dockerfiles = sorted((REPO / "deploy").rglob("Dockerfile*"))
    assert dockerfiles
    for dockerfile in dockerfiles:
        result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{dockerfile}:\n{result.stdout}{result.stderr}"


def test_the_image_is_slim_non_root_pinned_and_checks_its_health():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "pip install --no-cache-dir -r requirements.lock" in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*CMD \["microblog", "health"\]', dockerfile, re.M)


def test_every_container_checks_its_health_and_waits_for_healthy_dependencies():
    services = compose()["services"]
    assert set(services) == {"rabbitmq", "postgres", *APP_SERVICES}
    assert "management" in services["rabbitmq"]["image"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in APP_SERVICES:
        service = services[name]
        assert service["command"] == ["microblog", "serve", name]
        assert service["healthcheck"]["test"] == ["CMD", "microblog", "health", name]
        conditions = {dependency: spec["condition"] for dependency, spec in service["depends_on"].items()}
        assert {"rabbitmq", "postgres"} <= set(conditions), name
        assert set(conditions.values()) == {"service_healthy"}, name
    # The init step creating one database per service, and named volumes for the state.
    init = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init and all(f"CREATE DATABASE microblog_{name}" in (REPO / "deploy" / "postgres-init.sql").read_text()
                        for name in ("users", "messages", "notifications"))
    named = set(compose()["volumes"])
    assert {v.split(":")[0] for v in services["rabbitmq"]["volumes"] + services["postgres"]["volumes"]
            if not v.startswith(".")} <= named


def test_every_application_service_uses_the_image_built_here_and_never_pulls_it():
    services = compose()["services"]
    built = [name for name in APP_SERVICES if "build" in services[name]]
    assert built == ["users"]  # one build, from the Dockerfile the other checks read
    assert services["users"]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    for name in APP_SERVICES:
        assert services[name]["image"] == "microblog:latest", name
        assert services[name]["pull_policy"] == "never", name  # docker compose up never asks a registry


def test_passwords_reach_the_containers_as_parts_and_the_gateway_gets_no_database_secret():
    services = compose()["services"]
    variables = {**example_env(), "RABBITMQ_PASSWORD": "r@b/b#it", "POSTGRES_PASSWORD": "p@g/s#ql",
                 "SECRET_KEY": "k"}
    for name in APP_SERVICES:
        env = {key: interpolate(value, variables) for key, value in services[name]["environment"].items()}
        assert not {key for key in env if key == "AMQP_URI" or key.endswith("_DATABASE_URL")}, name
        assert (env["RABBITMQ_HOST"], env["RABBITMQ_PASSWORD"]) == ("rabbitmq", "r@b/b#it"), name
        has_database_secret = any("p@g/s#ql" in value for value in env.values())
        assert has_database_secret == (name != "gateway"), name
    gateway = services["gateway"]["environment"]
    assert not {key for key in gateway if key.startswith("POSTGRES") or "DATABASE" in key}
    # What the service containers get builds the URLs the program would use (kernel/settings.py).
    env = {key: interpolate(value, variables) for key, value in services["messages"]["environment"].items()}
    result = subprocess.run([sys.executable, "-c", "from kernel.settings import amqp_uri, database_url; "
                             "from kombu import Connection; from sqlalchemy.engine import make_url; "
                             "c = Connection(amqp_uri()); u = make_url(database_url('messages')); "
                             "print(c.hostname, c.userid, c.password, u.host, u.username, u.password, u.database)"],
                            env={"PATH": os.environ["PATH"], **env}, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["rabbitmq", "microblog", "r@b/b#it", "postgres", "microblog", "p@g/s#ql",
                                     "microblog_messages"], result.stderr


def test_every_setting_compose_reads_is_documented_and_no_secret_is_filled_in():
    documented = example_env()
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert {name for name, _, _ in used} <= set(documented)
    required = {name for name, kind, _ in used if kind == "?"}
    assert required == {"RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "SECRET_KEY"}
    assert all(documented[name] == "" for name in required)
    with pytest.raises(KeyError, match="SECRET_KEY"):  # compose refuses to start without it
        interpolate(compose()["services"]["gateway"]["environment"]["SECRET_KEY"], documented)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def _process_env(name: str, local: dict) -> dict:
    """Compose's environment for ``name`` with the example settings, then pointed at the
    local servers: only the broker and database addresses (and the port) are replaced."""
    variables = {**example_env(), "RABBITMQ_PASSWORD": "unused", "POSTGRES_PASSWORD": "unused",
                 "SECRET_KEY": "compose-process-test"}
    env = {key: interpolate(value, variables) for key, value in compose()["services"][name]["environment"].items()}
    assert env["RABBITMQ_HOST"] == "rabbitmq", name
    # AMQP_URI and *_DATABASE_URL (which win over the parts) point at the local servers; a
    # database URL only where compose gives database settings. RPC_TIMEOUT is the test's
    # own: calls to a stopped service give up sooner.
    chosen = {key: value for key, value in local.items()
              if key in env or key in ("AMQP_URI", "RPC_TIMEOUT")
              or (key == f"{name.upper()}_DATABASE_URL" and "POSTGRES_HOST" in env)}
    return {**env, **chosen}


def _run(command: list, env: dict, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([MICROBLOG if command[0] == "microblog" else command[0], *command[1:]],
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
                          capture_output=True, text=True, timeout=timeout)


def _wait_healthy(name: str, env: dict, timeout=60):
    test = compose()["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    results = []

    def healthy():
        results.append(_run(test[1:], env, timeout=30))
        return results[-1].returncode == 0

    wait_until(healthy, timeout=timeout, interval=0.5,
               message=lambda: f"{name} never became healthy: {results[-1].stdout}{results[-1].stderr}")


def _unread(session, base) -> int:
    rows = session.get(base + "/notifications?since=0").json()
    return next((row["data"] for row in rows if row["name"] == "unread_message_count"), 0)


def _wait_for_unread(session, base, expected, timeout=20):
    counts = []

    def reached():
        counts.append(_unread(session, base))
        return counts[-1] == expected

    wait_until(reached, timeout=timeout, interval=0.2,
               message=lambda: f"unread count stayed {counts[-1]}, expected {expected}")


def test_each_compose_service_runs_as_its_command_and_one_restarts_alone(tmp_path, real_infra, rabbit_config,
                                                                         postgres):
    port = free_port()
    local = {
        "AMQP_URI": rabbit_config["AMQP_URI"],
        # Empty databases: each service applies its migrations on start, as in a container.
        "USERS_DATABASE_URL": postgres.create("users_compose"),
        "MESSAGES_DATABASE_URL": postgres.create("messages_compose"),
        "NOTIFICATIONS_DATABASE_URL": postgres.create("notifications_compose"),
        "PORT": str(port),
        "FEED_CHECK_INTERVAL": "0.5",
        "POLL_INTERVAL": "0.5",
        "RPC_TIMEOUT": "3",
        "METRICS_PORT": "0",  # compose's 9100 is one port per container; here all share one host
    }
    envs = {name: _process_env(name, local) for name in APP_SERVICES}
    assert envs["gateway"]["GATEWAY_WORKERS"] == "2"  # compose's settings, not the test's

    def launch(name, log):
        command = compose()["services"][name]["command"]
        args = command[1:] + (["--host", "127.0.0.1"] if name == "gateway" else [])
        return start(args, envs[name], tmp_path / log)

    processes = {}
    try:
        for name in APP_SERVICES:  # in depends_on order, each healthy before the next
            processes[name] = launch(name, f"{name}.log")
            _wait_healthy(name, envs[name])
        base = f"http://127.0.0.1:{port}"
        assert wait_for_http(base + "/auth/login", processes["gateway"], tmp_path / "gateway.log").status_code == 200
        assert "deploy.wsgi_server.GatewayWorker" in (tmp_path / "gateway.log").read_text()  # gevent

        susan, john = http_sign_in(base, "susan"), http_sign_in(base, "john")
        token = CSRF.search(susan.get(base + "/send_message/john").text).group(1)

        def send(body):
            response = susan.post(base + "/send_message/john", data={"csrf_token": token, "message": body},
                                  allow_redirects=False)
            assert response.status_code == 302, response.text

        send("one")
        send("two")
        _wait_for_unread(john, base, 2)

        # The notifications service stops alone; sending keeps working meanwhile.
        assert stop(processes["notifications"]) == 0
        for body in ("three", "four", "five"):
            send(body)
        processes["notifications"] = launch("notifications", "notifications2.log")
        wait_for_log(tmp_path / "notifications2.log", "notifications service is running", processes["notifications"])
        _wait_healthy("notifications", envs["notifications"])
        _wait_for_unread(john, base, 5)  # nothing sent while it was down was lost

        # The messages service stops alone: sends fail clearly (503), the rest keeps serving.
        assert stop(processes["messages"]) == 0
        response = susan.post(base + "/send_message/john", data={"csrf_token": token, "message": "lost?"},
                              allow_redirects=False)
        assert response.status_code == 503
        assert _unread(john, base) == 5
        processes["messages"] = launch("messages", "messages2.log")
        _wait_healthy("messages", envs["messages"])
        send("six")
        _wait_for_unread(john, base, 6)

        inbox = re.findall(r'class="card-text message-body">([^<]*)<', john.get(base + "/messages").text)
        assert inbox == ["six", "five", "four", "three", "two", "one"]  # newest first; the refused one absent
        _wait_for_unread(john, base, 0)
    finally:
        for name in reversed(APP_SERVICES):
            if name in processes:
                stop(processes[name])


def test_health_says_which_deployable_is_unhealthy(tmp_path):
    result = _run(["microblog", "health", "gateway", "--timeout", "1"], {"PORT": str(free_port())})
    assert result.returncode == 1
    assert "gateway: unhealthy" in result.stderr
    result = _run(["microblog", "health"], {})  # not in a container: PID 1 serves nothing
    assert result.returncode == 2
    assert "give a name" in result.stderr
