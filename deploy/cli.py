"""The ``microblog`` command: run the embedded system, or serve one service or the gateway."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings

import click

# eventlet announces its deprecation on import; nameko 2.14 needs it all the same, and the
# notice would bury the one line a person needs to see (the URL).
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

SERVICE_NAMES = ("users", "messages", "notifications")
DEPLOYABLES = SERVICE_NAMES + ("gateway",)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class _reported(contextlib.ContextDecorator):
    """Turns the errors a person can act on into one line on stderr and an exit code,
    never a traceback: a bad setting (2), a broker or database that refuses or does not
    answer, a service nobody runs (1). ``database``/``broker``: the URLs to name (or
    callables returning them). A context manager, or a decorator on a command."""

    def __init__(self, database=None, broker=None):
        self._database = database
        self._broker = broker

    @property
    def database(self):
        return self._database() if callable(self._database) else self._database

    @property
    def broker(self):
        return self._broker() if callable(self._broker) else self._broker

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception):
            return False
        from deploy.startup import StartupError, describe_broker_error, describe_database_error, first_line
        from kernel.settings import SettingsError

        if isinstance(exc, StartupError):
            _fail(str(exc), exc.exit_code)
        if isinstance(exc, SettingsError):
            _fail(str(exc))
        message = None
        if self.database:
            message = describe_database_error(exc, self.database)
        if message is None and self.broker:
            message = describe_broker_error(exc, self.broker)
        if message is None:
            from nameko.exceptions import RpcTimeout, UnknownService

            if isinstance(exc, UnknownService):
                message = f"{first_line(exc)}: is that service running (and on this AMQP_URI)?"
            elif isinstance(exc, RpcTimeout):
                message = f"a service did not answer in time ({first_line(exc)})"
        if message is None:
            return False  # a bug: let the traceback show where
        _fail(message, 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microblog-services", prog_name="microblog")
def main():
    """Microblog messages and notifications, as event-sourced services.

    "microblog run" runs everything in one process (no servers needed); in real mode,
    "microblog serve NAME" runs each service and the gateway against RabbitMQ and
    PostgreSQL. "microblog COMMAND --help" says what each command needs."""


@main.command(short_help="Run everything in one process (embedded mode).")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"),
              help="Address to listen on (default: $HOST, else 127.0.0.1).")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "5000")),
              help="Port to listen on (default: $PORT, else 5000).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=lambda: os.environ.get("MICROBLOG_DATA_DIR", "data"),
    help="Folder for the SQLite files and the session key (default: $MICROBLOG_DATA_DIR, else ./data).",
)
def run(host, port, data_dir):
    """Run everything in this process: the services and the gateway, SQLite files and an
    in-memory broker instead of PostgreSQL and RabbitMQ. Needs no server and no setting.

    Optional settings: POLL_INTERVAL and the gateway's others (README, "Settings")."""
    import eventlet

    eventlet.monkey_patch()
    from deploy.embedded import DataFolderInUse, EmbeddedSystem
    from kernel.settings import SettingsError, env_float

    try:
        poll_interval = env_float("POLL_INTERVAL", 10.0, minimum=0.05)
    except SettingsError as exc:
        _fail(str(exc))
    from greenlet import GreenletExit

    try:
        system = EmbeddedSystem(data_dir, poll_interval=poll_interval).start()
    except DataFolderInUse as exc:
        _fail(str(exc))
    click.echo(f"Microblog (embedded) is running on http://{host}:{port}/  (data in {system.data_dir}; Ctrl-C stops it)")
    server = eventlet.spawn(system.serve, host, port)

    def shutdown(signum, frame):
        # A signal is handled in whichever green thread is running when it arrives, often
        # one of the in-memory broker's pollers, not this one: a KeyboardInterrupt raised
        # there kills that thread and leaves the server up. So the handler only schedules
        # the stop; the server finishes the requests in flight, then everything stops.
        # A second Ctrl-C quits at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        eventlet.spawn_n(server.kill)

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    try:
        server.wait()
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc}")
    except GreenletExit:
        pass
    finally:
        system.stop()


SERVE_EPILOG = """\b
What each NAME needs (the broker: AMQP_URI, or RABBITMQ_HOST, RABBITMQ_PORT,
RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_VHOST; a database: its URL, or
POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD; defaults:
the local servers):
  users          the broker, USERS_DATABASE_URL
  messages       the broker, MESSAGES_DATABASE_URL
  notifications  the broker, NOTIFICATIONS_DATABASE_URL
  gateway        the broker, SECRET_KEY (no database)

Optional: PORT, GATEWAY_WORKERS, GATEWAY_CONNECTIONS (gateway), METRICS_PORT
(services), STARTUP_TIMEOUT; the rest in the README, "Settings"."""


@main.command(short_help="Serve one service or the gateway (real mode).", epilog=SERVE_EPILOG)
@click.argument("name", type=click.Choice(DEPLOYABLES))
@click.option("--migrate/--no-migrate", default=True,
              help="Apply the service's database migrations first (default: yes).")
@click.option("--host", default=lambda: os.environ.get("HOST", "0.0.0.0"),
              help="Gateway only: address to listen on (default: $HOST, else 0.0.0.0).")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT", "5000")),
              help="Gateway only: port to listen on (default: $PORT, else 5000).")
def serve(name, migrate, host, port):
    """Serve one service (users, messages, notifications) or the gateway against
    RabbitMQ and PostgreSQL, until stopped (SIGTERM, Ctrl-C)."""
    if name == "gateway":
        _serve_gateway(host, port)
    else:
        _serve_service(name, migrate)


def _serve_service(name: str, migrate: bool) -> None:
    import eventlet

    eventlet.monkey_patch()
    from nameko.runners import ServiceRunner

    from deploy.registry import SERVICES
    from deploy.registry import migrate as apply_migrations
    from deploy.startup import check_broker, check_database, first_line, redact, startup_timeout

    spec = SERVICES[name]
    config = {}
    with _reported():
        config = spec.nameko_config()
    url = config[spec.database_key]
    # Both servers are checked before anything starts: a wrong vhost, an unreachable
    # broker, a missing database or a bad URL is one line and a non-zero exit, not a
    # traceback followed by "running".
    with _reported(database=url, broker=config["AMQP_URI"]):
        check_database(url, spec.database_key)
        check_broker(config["AMQP_URI"])
        if migrate:
            apply_migrations(spec, url)
    if config.get("METRICS_PORT"):
        from prometheus_client import start_http_server  # the default registry, /metrics, in a thread

        try:
            start_http_server(config["METRICS_PORT"], addr="0.0.0.0")
        except OSError as exc:
            _fail(f"cannot serve metrics on METRICS_PORT {config['METRICS_PORT']}: {exc.strerror or exc}", 1)
    from kernel import logs

    logs.install()  # expected errors (an unknown user ...): one clipped line, no traceback
    runner = ServiceRunner(config)
    runner.add_service(spec.service_class())

    def shutdown(signum, frame):
        # Stop in a green thread: signal handlers must not block the hub. nameko's stop
        # waits for its consumer, which loops reconnecting while the broker is away: past
        # STOP_TIMEOUT the process exits anyway (what it owes is safe: events wait in the
        # log, unacknowledged deliveries and requests go back to their queues).
        eventlet.spawn_n(runner.stop)
        eventlet.spawn_n(_exit_if_still_running, name, STOP_TIMEOUT)

    signal.signal(signal.SIGTERM, shutdown)
    # runner.start() returns once every entry point consumes its queue (nameko's
    # QueueConsumer waits for its consumers), so "running" below means running. If the
    # broker went away since the check, it would wait forever: bounded here.
    limit = startup_timeout() + 10
    try:
        with eventlet.Timeout(limit):
            runner.start()
    except (Exception, eventlet.Timeout) as exc:
        reason = (f"its consumers did not connect within {limit:g} s" if isinstance(exc, eventlet.Timeout)
                  else f"{type(exc).__name__}: {first_line(exc)}")
        with contextlib.suppress(Exception, eventlet.Timeout), eventlet.Timeout(5):
            runner.kill()
        _fail(f"{name} service could not start (broker {redact(config['AMQP_URI'])}): {reason}", 1)
    click.echo(f"{name} service is running (broker {redact(config['AMQP_URI'])}"
               + (f"; metrics on :{config['METRICS_PORT']}/metrics" if config.get("METRICS_PORT") else "") + ")")
    try:
        runner.wait()
    except KeyboardInterrupt:
        runner.stop()
    except Exception as exc:
        _fail(f"{name} service stopped: {type(exc).__name__}: {first_line(exc)}", 1)


# Seconds a service may take to stop on SIGTERM (Docker's default grace is 10 s).
STOP_TIMEOUT = 8.0


def _exit_if_still_running(name: str, timeout: float) -> None:
    import eventlet

    eventlet.sleep(timeout)
    click.echo(f"{name} service did not stop within {timeout:g} s (is the broker reachable?); exiting now", err=True)
    os._exit(1)


def _serve_gateway(host: str, port: int) -> None:
    import shutil
    import tempfile

    # gunicorn runs several worker processes: /metrics sums them with prometheus-client's
    # multiprocess mode, which must be chosen before prometheus_client is first imported,
    # in a folder of its own that starts empty.
    metrics_dir = tempfile.mkdtemp(prefix="microblog-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from deploy.startup import BrokerUnreachable, check_broker, startup_timeout
        from deploy.wsgi_server import serve_gateway
        from gateway.settings import GatewaySettings

        with _reported():
            settings = GatewaySettings.from_env()  # fail now, with a clear message, not in each worker
            # The gateway connects lazily (per request). Checking once here turns an
            # AMQP_URI that cannot work (malformed, wrong vhost or login) into one line at
            # start instead of a 503 on every page. A broker that merely does not answer
            # yet is not a reason to stay down: pages that need no service still work and
            # the rest answer 503 until it does, as when the broker goes away later.
            try:
                check_broker(settings.amqp_uri, timeout=min(startup_timeout(), 2.0))
            except BrokerUnreachable as exc:
                click.echo(f"Warning: {exc}; serving anyway (pages that need a service answer 503 until "
                           "the broker answers)", err=True)
        serve_gateway(host, port)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _name_from_pid1() -> str | None:
    """The deployable that PID 1 serves (``microblog serve <name>``), in a container."""
    try:
        with open("/proc/1/cmdline", "rb") as cmdline:
            args = [a.decode(errors="replace") for a in cmdline.read().split(b"\0")]
    except OSError:
        return None
    if "serve" in args and args.index("serve") + 1 < len(args):
        name = args[args.index("serve") + 1]
        return name if name in DEPLOYABLES else None
    return None


@main.command(short_help="Exit 0 if a service or the gateway answers.")
@click.argument("name", type=click.Choice(DEPLOYABLES), required=False)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the answer.")
def health(name, timeout):
    """Exit 0 if a deployable answers: a service's health RPC through the broker (it
    checks its database; needs AMQP_URI or the RABBITMQ_* parts), or the gateway's
    /healthz on $PORT. Without NAME, the one this container's main process serves (the
    image's HEALTHCHECK)."""
    name = name or _name_from_pid1()
    if name is None:
        _fail("which one? give a name: " + ", ".join(DEPLOYABLES))
    if name == "gateway":
        import urllib.request

        port = int(os.environ.get("PORT", "5000"))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
                ok = response.status == 200
        except OSError as exc:
            click.echo(f"gateway: unhealthy ({exc})", err=True)
            sys.exit(1)
    else:
        import eventlet

        eventlet.monkey_patch()
        from deploy.registry import SERVICES
        from deploy.startup import StartupError, check_broker
        from kernel.rpc_pool import RpcPool

        with _reported():
            config = SERVICES[name].nameko_config()
        try:
            check_broker(config["AMQP_URI"], timeout=timeout)
        except StartupError as exc:
            _fail(f"{name}: unhealthy ({exc})", exc.exit_code)
        pool = RpcPool({"AMQP_URI": config["AMQP_URI"]}, size=1, timeout=timeout, acquire_timeout=timeout)
        try:
            ok = pool.call(name, "health").get("database") == "ok"
        except Exception as exc:  # unavailable, an error, a bad answer: all "unhealthy", said plainly
            click.echo(f"{name}: unhealthy ({type(exc).__name__}: {exc})", err=True)
            sys.exit(1)
        finally:
            pool.stop()
    click.echo(f"{name}: {'healthy' if ok else 'unhealthy'}")
    sys.exit(0 if ok else 1)


@main.command(short_help="Apply a service's database migrations.")
@click.argument("name", type=click.Choice(SERVICE_NAMES + ("all",)))
def migrate(name):
    """Apply a service's database migrations, or every service's (all), without serving.
    Needs its <SERVICE>_DATABASE_URL (or the POSTGRES_* parts)."""
    from deploy.registry import SERVICES
    from deploy.registry import migrate as apply_migrations
    from deploy.startup import check_database

    for spec in SERVICES.values() if name == "all" else [SERVICES[name]]:
        url = ""
        with _reported():
            url = spec.nameko_config()[spec.database_key]
        with _reported(database=url):
            check_database(url, spec.database_key)
            apply_migrations(spec, url)
        click.echo(f"{spec.name}: database is up to date")


@main.command(short_help="Rebuild a read model from its events.")
@click.argument("name", type=click.Choice(["messages", "notifications"]))
def replay(name):
    """Rebuild a read model: messages' inbox from its log (MESSAGES_DATABASE_URL), or the
    notifications projection from the messages feed (AMQP_URI, NOTIFICATIONS_DATABASE_URL)."""
    if name == "notifications":
        _replay_notifications()
        return
    from deploy.registry import SERVICES
    from deploy.startup import check_database
    from kernel.db import create_db_engine, dispose
    from services.messages.storage import STORAGE

    spec = SERVICES[name]
    url = ""
    with _reported():
        url = spec.nameko_config()[spec.database_key]
    with _reported(database=url):
        check_database(url, spec.database_key)
    engine = create_db_engine(url, pool_size=2)
    storage = STORAGE.open(engine)
    try:
        with _reported(database=url):
            total = storage.head()
            storage.rollback()
            with click.progressbar(length=total, label=f"Replaying {total} events into the inbox") as bar:
                done = [0]

                def progress(position):
                    bar.update(position - done[0])
                    done[0] = position

                position = storage.rebuild(progress=progress)
            click.echo(f"{name}: inbox rebuilt beside the live one from {position} events and swapped in")
    finally:
        storage.close()
        dispose(engine)


def _notifications_tools():
    """(open_store, rpc proxy, closer) for commands that work on the projection."""
    import eventlet

    eventlet.monkey_patch()
    from sqlalchemy.orm import sessionmaker

    from deploy.registry import SERVICES
    from deploy.startup import check_broker, check_database
    from kernel.db import create_db_engine, dispose
    from kernel.rpc import ClusterRpcProxy

    # py-amqp warns about frames arriving while a channel closes (after a failed call):
    # noise next to the one line that says what failed.
    logging.getLogger("amqp").setLevel(logging.ERROR)
    config = {}
    with _reported():
        config = SERVICES["notifications"].nameko_config()
    url = config["NOTIFICATIONS_DATABASE_URL"]
    with _reported(database=url, broker=config["AMQP_URI"]):
        check_database(url, "NOTIFICATIONS_DATABASE_URL")
        check_broker(config["AMQP_URI"])
    engine = create_db_engine(url, pool_size=2)
    proxy = ClusterRpcProxy({"AMQP_URI": config["AMQP_URI"]}, timeout=60)
    with _reported(broker=config["AMQP_URI"]):
        rpc = proxy.start()

    def close():
        proxy.stop()
        dispose(engine)

    from services.notifications.storage import STORAGE

    make_session = sessionmaker(engine, expire_on_commit=False)
    return (lambda: STORAGE.open(engine, make_session)), rpc, close


def _notifications_url() -> str:
    from kernel.settings import database_url

    return database_url("notifications")


def _amqp_uri() -> str:
    from kernel.settings import amqp_uri

    return amqp_uri()


@_reported(database=_notifications_url, broker=_amqp_uri)
def _replay_notifications():
    from kernel.projector import json_feed
    from services.notifications.replay import rebuild

    open_store, rpc, close = _notifications_tools()
    try:
        head = rpc.messages.head()
        with click.progressbar(length=head, label=f"Replaying {head} events into notifications_rebuild") as bar:
            done = [0]

            def progress(position):
                bar.update(min(position, head) - done[0])
                done[0] = min(position, head)

            position = rebuild(open_store, json_feed(rpc.messages.events_after_json), progress)
        click.echo(f"notifications: projection rebuilt from the feed up to position {position} and swapped in")
    finally:
        close()


@main.command(short_help="Check the read models against a fresh replay.")
@click.option("--wait", default=10.0, show_default=True, help="Seconds to let the projection catch up with the log first.")
@_reported(database=_notifications_url, broker=_amqp_uri)
def verify(wait):
    """Compare the live notifications projection with a fresh replay of the messages feed
    and with the messages service's own unread counts, and the users table with the fold
    of the users feed; exit 1 on any difference. Needs the running services' broker
    (AMQP_URI), NOTIFICATIONS_DATABASE_URL and USERS_DATABASE_URL (or their RABBITMQ_* and
    POSTGRES_* parts)."""
    import time

    from kernel.projector import json_feed
    from services.notifications.replay import differences

    open_store, rpc, close = _notifications_tools()
    try:
        deadline = time.monotonic() + wait
        while rpc.notifications.position() < rpc.messages.head() and time.monotonic() < deadline:
            time.sleep(0.2)
        position, head = rpc.notifications.position(), rpc.messages.head()
        problems = differences(open_store, json_feed(rpc.messages.events_after_json), rpc.messages.unread_counts)
        if position < head:
            problems.insert(0, f"the projection is at position {position}, the log at {head}")
    finally:
        close()
    problems += _users_differences()
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        click.echo(f"verify: {len(problems)} difference(s)", err=True)
        sys.exit(1)
    click.echo(f"verify: the projection matches a fresh replay and the messages service (position {position}); "
               "the users table matches the users feed")


def _users_differences() -> list[str]:
    """The users table against the fold of the users feed (``services.users.replay``)."""
    from deploy.startup import check_database
    from kernel.db import create_db_engine, dispose
    from kernel.settings import database_url
    from services.users.replay import differences
    from services.users.storage import STORAGE

    url = database_url("users")
    with _reported(database=url):
        check_database(url, "USERS_DATABASE_URL")
        engine = create_db_engine(url, pool_size=1)
        storage = STORAGE.open(engine)
        try:
            return [f"users: {problem}" for problem in differences(storage)]
        finally:
            storage.close()
            dispose(engine)


@main.command(short_help="Print projection lag and outbox backlog.")
@click.option("--max-lag", type=click.IntRange(min=0), default=100, show_default=True,
              help="Exit 1 if a projection is more than this many events behind the log.")
@click.option("--max-backlog", type=click.IntRange(min=0), default=100, show_default=True,
              help="Exit 1 if more than this many events wait to be published.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for each answer.")
def status(max_lag, max_backlog, timeout):
    """Print each projection's position, the log's head and the lag, and the outbox
    backlog (AMQP_URI); exit 1 if a bound is crossed or a service does not answer."""
    import eventlet

    eventlet.monkey_patch()
    from deploy.startup import check_broker
    from deploy.status import gather
    from kernel.rpc_pool import RpcPool
    from kernel.settings import amqp_uri

    logging.getLogger("amqp").setLevel(logging.ERROR)  # see _notifications_tools
    uri = ""
    with _reported():
        uri = amqp_uri()
        check_broker(uri, timeout=timeout)
    pool = RpcPool({"AMQP_URI": uri}, size=1, timeout=timeout, acquire_timeout=timeout)
    try:
        report = gather(pool.call, max_lag=max_lag, max_backlog=max_backlog)
    finally:
        pool.stop()
    for line in report.lines:
        click.echo(line)
    if report.problems:
        for problem in report.problems:
            click.echo(f"status: {problem}", err=True)
        sys.exit(1)
    click.echo(f"status: ok (lag at most {max_lag}, backlog at most {max_backlog})")


if __name__ == "__main__":
    main()
