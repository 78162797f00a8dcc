"""`make test` runs this first: it makes sure the servers the real-mode tests need are there,
so the suite runs whole, or stops and says what to run. It never lets half the suite skip quietly.

* RabbitMQ reachable but its management API is not (nameko's ``rabbit_config`` fixture makes a
  vhost per test through that API): run ``rabbitmq-plugins enable rabbitmq_management`` when
  the broker is on this machine and we may (root), then wait for the API.
* RabbitMQ or PostgreSQL absent: print how many tests need them and how to start them, and
  fail. ``make test-embedded`` runs only the other tests, on purpose (``-m "not real"``).

Addresses: ``RABBIT_AMQP_URI``, ``RABBIT_API_URI`` and ``TEST_POSTGRES_URL`` from the
environment (tests/conftest.py reads the same variables), else the local defaults.
Standard library only: it runs before pytest, without eventlet.
"""
import os
import shlex
import shutil
import socket
import subprocess
import sys
from urllib.parse import urlsplit

AMQP_URI = os.environ.get("RABBIT_AMQP_URI") or "pyamqp://guest:guest@localhost:5672/"
API_URI = os.environ.get("RABBIT_API_URI") or "http://guest:guest@localhost:15672"
PG_URL = os.environ.get("TEST_POSTGRES_URL") or "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
ENABLE_PLUGIN = ["rabbitmq-plugins", "enable", "rabbitmq_management"]
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or default_port


def reachable(url: str, default_port: int) -> bool:
    try:
        with socket.create_connection(address(url, default_port), timeout=2):
            return True
    except OSError:
        return False


def wait_for(url: str, default_port: int, seconds: float) -> bool:
    """Whether the port that a command has just been asked to open opens within ``seconds``."""
    from tests.waiting import wait_until

    try:
        return wait_until(lambda: reachable(url, default_port), timeout=seconds, interval=0.5)
    except AssertionError:
        return False


def say(lines, stream=sys.stderr):
    bar = "!" * 78
    print(f"\n{bar}", *(f"!! {line}" for line in lines), f"{bar}\n", sep="\n", file=stream, flush=True)


def enable_management() -> bool:
    """Turn on the management plugin of the local broker, if this is a local broker and we may."""
    if address(API_URI, 15672)[0] not in LOCAL_HOSTS or not shutil.which(ENABLE_PLUGIN[0]):
        return False
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return False
    print(f"preflight: RabbitMQ's management API is off; running `{shlex.join(ENABLE_PLUGIN)}`", flush=True)
    try:
        subprocess.run(ENABLE_PLUGIN, check=True, stdout=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"preflight: that failed: {error}", file=sys.stderr)
        return False
    return wait_for(API_URI, 15672, 60)


def real_test_count() -> str:
    """How many collected tests are marked ``real`` ("161 of 354"), or "" if pytest cannot say."""
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "real"],
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    # "273/636 tests collected (363 deselected) in 3.35s"
    for line in reversed(out.splitlines()):
        words = line.split()
        if len(words) > 2 and words[1] == "tests" and words[2] == "collected" and "/" in words[0]:
            selected, total = words[0].split("/")
            return f"{selected} of {total}"
    return ""


def main() -> int:
    missing = []
    if not reachable(AMQP_URI, 5672):
        missing.append(f"RabbitMQ at {':'.join(map(str, address(AMQP_URI, 5672)))}"
                       " (start it: `rabbitmq-server -detached`, or `.ci/run` starts everything)")
    elif not reachable(API_URI, 15672) and not enable_management():
        missing.append(f"RabbitMQ's management API at {':'.join(map(str, address(API_URI, 15672)))}"
                       f" (run: `{shlex.join(ENABLE_PLUGIN)}`, as root or the rabbitmq user)")
    if not reachable(PG_URL, 5432):
        missing.append(f"PostgreSQL at {':'.join(map(str, address(PG_URL, 5432)))}"
                       " (start it: `pg_ctlcluster <version> main start`, or `.ci/run`)")
    if not missing:
        return 0
    count = real_test_count() or "the"
    say([f"`make test` runs the whole suite, and {count} tests need servers that are not here:",
         *(f"  - {what}" for what in missing),
         "Start them and run `make test` again,",
         "or run `make test-embedded` to run only the tests that need neither (knowingly).",
         "(Addresses come from RABBIT_AMQP_URI, RABBIT_API_URI, TEST_POSTGRES_URL.)"])
    return 1


if __name__ == "__main__":
    sys.exit(main())
