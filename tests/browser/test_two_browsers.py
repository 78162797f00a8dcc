"""Two people, two browsers: the unread badge updates live, without a reload.

Twice: with the push stream (a long POLL_INTERVAL, so only the stream can move the badge;
each send must show within a second, and the delays are printed), and with the stream
blocked in the browser (a short POLL_INTERVAL: the page falls back to polling).

The embedded system runs as ``microblog run`` (its own process); the browsers run in a
second process (tests/browser/two_browsers.py), because this one is monkey-patched by
eventlet (tests/conftest.py) and Playwright's sync API does not work under it. Playwright
drives Debian's Chromium, headless; its own browser download is never used.

Screenshots land in build/test-artifacts/ (or $TEST_ARTIFACTS_DIR).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_REAL
from tests.system.test_commands import free_port, start, wait_for_http

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("two_browsers.py")
CHROMIUM = "/usr/bin/chromium"
POLL_INTERVAL_STREAM = "60"  # no poll can explain a badge that follows within a second
POLL_INTERVAL_BLOCKED = "0.5"


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium: skipped without it (locally), failed (under CI)."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        message = f"Chromium not found ({CHROMIUM}, nor chromium on PATH; Debian: apt-get install chromium)"
        if REQUIRE_REAL:
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return path


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def stop(process, timeout=15) -> None:
    """SIGTERM to the process group, then SIGKILL if it does not go."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


def run_browsers(base: str, artifacts: Path, chromium: str, mode: str, timeout=100,
                 script: Path = SCRIPT) -> subprocess.CompletedProcess:
    """The scenario script, in its own process group: on a timeout, Playwright's driver and
    Chromium (its children) are killed with it, not left behind."""
    process = subprocess.Popen(
        [sys.executable, str(script), "--base-url", base, "--artifacts", str(artifacts), "--chromium", chromium,
         "--mode", mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"browser scenario still running after {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def embedded_system(request, tmp_path):
    """``microblog run`` on a free port with a fresh data folder, POLL_INTERVAL from the
    test's parameter: (base URL, process, log path)."""
    port = free_port()
    log = tmp_path / "microblog.log"
    process = start(
        ["run", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        {"POLL_INTERVAL": request.param}, log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(base + "/auth/login", process, log, timeout=30).status_code == 200
        yield base, process, log
    finally:
        stop(process)


def _scenario(mode: str, chromium: str, embedded_system, screenshots: tuple[str, ...]) -> dict:
    base, process, log = embedded_system
    artifacts = artifacts_dir()
    for stale in artifacts.glob(f"two_browsers_{mode}_*.png"):  # an earlier run's screenshots prove nothing
        stale.unlink()

    result = run_browsers(base, artifacts, chromium, mode)
    report = f"--- browser stdout\n{result.stdout}\n--- browser stderr\n{result.stderr}"
    print(report)  # shown with -rP / -s: the steps' timings, the badge's delays, what the Messages page drew
    assert result.returncode == 0, f"browser scenario failed\n{report}\n--- microblog log\n{log.read_text()}"
    assert process.poll() is None, f"microblog exited during the test\n{log.read_text()}"
    assert "RESULT " in result.stdout, report
    for name in screenshots:
        screenshot = artifacts / name
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot at {screenshot}"
    return json.loads(result.stdout.split("RESULT ", 1)[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("embedded_system", [POLL_INTERVAL_STREAM], indirect=True)
def test_badge_follows_each_send_within_a_second_over_the_stream(chromium, embedded_system):
    # chromium first: without a browser, the system is not even started
    facts = _scenario("stream", chromium, embedded_system, ("two_browsers_stream_badge.png",))
    assert len(facts["badge_delays_s"]) >= 3 and facts["badge_delay_max_s"] <= 1.0, facts
    assert facts["polls"] == 0, facts


@pytest.mark.timeout(120)
@pytest.mark.parametrize("embedded_system", [POLL_INTERVAL_BLOCKED], indirect=True)
def test_badge_counts_two_messages_by_polling_when_the_stream_is_blocked_and_hides_on_the_messages_page(
        chromium, embedded_system):
    facts = _scenario("blocked", chromium, embedded_system,
                      ("two_browsers_blocked_badge.png", "two_browsers_blocked_messages.png"))
    assert facts["stream_attempts_blocked"] >= 1 and facts["polls_before_badge"] >= 1, facts
