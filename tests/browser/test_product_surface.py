"""Where the tutorial is silent, a careful product (issue 14): nothing from a CDN, readable
on a phone, usable with the keyboard alone, and the send form without JavaScript.

The embedded system runs as ``microblog run`` (its avatars drawn locally; fixtures from
tests/browser/conftest.py); the browser runs in tests/browser/product_surface.py, a second
process, because this one is monkey-patched by eventlet (see test_two_browsers.py).
Phone screenshots of /messages and /explore land in build/test-artifacts/ (or
$TEST_ARTIFACTS_DIR).
"""
import json

import pytest

from tests.browser.test_two_browsers import POLL_INTERVAL_STREAM, REPO, artifacts_dir, run_browsers

SCRIPT = REPO / "tests" / "browser" / "product_surface.py"
MODE = "phone-keyboard-nojs"
SCREENSHOTS = ("product_surface_phone_messages.png", "product_surface_phone_explore.png")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("embedded_system", [POLL_INTERVAL_STREAM], indirect=True)
def test_pages_fetch_nothing_from_elsewhere_fit_a_phone_work_by_keyboard_and_send_without_javascript(
        chromium, embedded_system):
    base, process, log = embedded_system
    artifacts = artifacts_dir()
    for stale in artifacts.glob("product_surface_*.png"):  # an earlier run's screenshots prove nothing
        stale.unlink()
    result = run_browsers(base, artifacts, chromium, MODE, script=SCRIPT, timeout=100)
    report = f"--- browser stdout\n{result.stdout}\n--- browser stderr\n{result.stderr}"
    print(report)  # shown with -rP / -s: each step, the pages' widths, the Tab presses
    assert result.returncode == 0, f"browser scenario failed\n{report}\n--- microblog log\n{log.read_text()}"
    assert process.poll() is None, f"microblog exited during the test\n{log.read_text()}"
    assert "RESULT " in result.stdout, report
    facts = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert len(facts["phone_pages"]) == 8 and all(  # every page checked, none wider than the phone
        scroll <= width == 375 for scroll, width in facts["phone_pages"].values()), facts
    assert facts["tabs_to_reply"] >= 1 and facts["focus_stops"] > facts["tabs_to_reply"], facts
    assert facts["nojs_sent"] == 140 and facts["requests"] > 0, facts
    for name in SCREENSHOTS:
        assert (artifacts / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot {name}"
