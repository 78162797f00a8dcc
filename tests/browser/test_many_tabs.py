"""Eight tabs, one push stream: the navbar script shares the stream across a browser's tabs.

Browsers allow six HTTP/1.1 connections per host, so a stream in every tab stalled page
loads from the seventh tab on. The tab holding a Web Lock opens the stream and passes each
row to the other tabs over a BroadcastChannel; when it closes, another tab takes over.

The embedded system runs as ``microblog run`` with a long POLL_INTERVAL (only the stream
can move a badge; fixtures from tests/browser/conftest.py); the browsers run in tests/browser/many_tabs.py, a second process,
because this one is monkey-patched by eventlet (see test_two_browsers.py).
"""
import json

import pytest

from tests.browser.test_two_browsers import POLL_INTERVAL_STREAM, REPO, artifacts_dir, run_browsers

SCRIPT = REPO / "tests" / "browser" / "many_tabs.py"


def _scenario(mode: str, chromium: str, embedded_system) -> dict:
    base, process, log = embedded_system
    artifacts = artifacts_dir()
    for stale in artifacts.glob(f"many_tabs_{mode}_*.png"):  # an earlier run's screenshots prove nothing
        stale.unlink()
    result = run_browsers(base, artifacts, chromium, mode, script=SCRIPT, timeout=90)
    report = f"--- browser stdout\n{result.stdout}\n--- browser stderr\n{result.stderr}"
    print(report)  # shown with -rP / -s: each tab's load time, the badges' delays
    assert result.returncode == 0, f"browser scenario failed\n{report}\n--- microblog log\n{log.read_text()}"
    assert process.poll() is None, f"microblog exited during the test\n{log.read_text()}"
    assert "RESULT " in result.stdout, report
    return json.loads(result.stdout.split("RESULT ", 1)[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("embedded_system", [POLL_INTERVAL_STREAM], indirect=True)
def test_eight_tabs_load_share_one_stream_and_a_remaining_tab_takes_over_when_the_leader_closes(
        chromium, embedded_system):
    facts = _scenario("shared", chromium, embedded_system)
    assert len(facts["load_s"]) == 8 and facts["load_max_s"] <= 5.0, facts  # (a) no tab stalled
    assert facts["lock"] == {"held": 1, "pending": 7}, facts  # (b) one stream for the browser
    assert len(facts["live_delays_s"]) == 2 and all(  # (c) every tab, each send
        len(delays) == 8 and max(delays) <= 2.0 for delays in facts["live_delays_s"]), facts
    assert len(facts["takeover_delays_s"]) == 7 and max(facts["takeover_delays_s"]) <= 5.0, facts  # (d)
    assert facts["streams"] == 2 and facts["second_leader_tab"] != facts["leader_tab"], facts
    assert (artifacts_dir() / "many_tabs_shared_badge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("embedded_system", [POLL_INTERVAL_STREAM], indirect=True)
def test_control_without_the_lock_every_tab_opens_a_stream_and_the_seventh_stalls(chromium, embedded_system):
    """The same tabs with navigator.locks hidden (as before the change): the seventh tab's
    page load waits for a connection, so the load bound above detects the stall."""
    facts = _scenario("unshared", chromium, embedded_system)
    assert facts["stalled_tab"] == 6 and facts["streams"] == 6, facts
