"""``microblog --help`` and each command's help read cleanly: whole summaries (no "..."),
no markup literals, what each ``serve`` needs, and a ``--version``."""
import os
import subprocess
from importlib import metadata

import pytest
from click.testing import CliRunner

from deploy.cli import main
from tests.system.test_commands import MICROBLOG

COMMANDS = sorted(main.commands)
VERSION = metadata.version("microblog-services")


def help_text(*args) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], prog_name="microblog", terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_command_list_gives_every_summary_whole():
    text = help_text()
    listed = text.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == COMMANDS
    for line in listed:
        assert line.rstrip().endswith(".") and not line.rstrip().endswith("..."), line
    assert "--version" in text


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_each_help_is_plain_text(command):
    text = help_text(*([command] if command else []))
    assert "..." not in text.replace("COMMAND [ARGS]...", "")
    for literal in ("``", "`", "\\b", "[default: (", ":func:", ":class:"):
        assert literal not in text, (command, literal)


def test_serve_says_what_each_deployable_needs():
    text = help_text("serve")
    needs = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ")}
    assert "USERS_DATABASE_URL" in needs["users"]
    assert "MESSAGES_DATABASE_URL" in needs["messages"]
    assert "NOTIFICATIONS_DATABASE_URL" in needs["notifications"]
    assert "SECRET_KEY" in needs["gateway"] and "DATABASE" not in needs["gateway"]
    for setting in ("AMQP_URI", "RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "PORT", "METRICS_PORT"):
        assert setting in text


def test_the_installed_command_prints_its_version_and_help():
    env = {**os.environ, "COLUMNS": "80", "PYTHONWARNINGS": "ignore"}
    version = subprocess.run([MICROBLOG, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert (version.returncode, version.stdout) == (0, f"microblog, version {VERSION}\n")
    usage = subprocess.run([MICROBLOG, "-h"], capture_output=True, text=True, timeout=60, env=env)
    assert usage.returncode == 0 and usage.stdout == help_text()
