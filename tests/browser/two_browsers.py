"""The two-browser scenarios, driven by Playwright's sync API in its own process.

Run by tests/browser/test_two_browsers.py with the venv's Python (``python two_browsers.py
--base-url URL --artifacts DIR --mode stream|blocked``):

* ``stream``: the page's push stream (/notifications/stream) is on. After each of several
  sends, the recipient's badge must follow within ``LIVE_BOUND_S`` without a reload, and
  the page must not poll at all (the server runs with a long POLL_INTERVAL, so only the
  stream can explain it). The delays are measured and reported.
* ``blocked``: every request for the stream is aborted (as a proxy that does not pass it
  would); the page falls back to polling /notifications (a short POLL_INTERVAL) and the
  badge still updates.
 It is a separate process because the test session
monkey-patches with eventlet (tests/conftest.py), which breaks Playwright's sync API, so
nothing here may import eventlet (nor the project: the browser sees only HTTP).

Exit 0: every step passed. Exit 1: a step failed; the reason is on stderr and each
browser's page is saved as ``two_browsers_failure_<user>.png`` next to the artifacts.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PASSWORD = "correct horse battery"
BODIES = ("Hello John, first message from Susan", "And a second one, John")
BADGE_SHOWN_MS = 10_000  # the badge has this long (20 polls at POLL_INTERVAL=0.5) to show 2
BADGE_HIDDEN_MS = 10_000
LIVE_BODIES = tuple(f"Live message {i} from Susan" for i in range(1, 5))
LIVE_BOUND_S = 1.0  # the stream: the badge follows each send within this long
STREAM_OPEN_MS = 10_000


def step(message: str) -> None:
    print(f"[two_browsers {time.monotonic() - START:6.2f}s] {message}", flush=True)


START = time.monotonic()


def register_and_log_in(page: Page, base: str, username: str) -> None:
    page.goto(base + "/auth/register")
    page.fill("#username", username)
    page.fill("#email", f"{username}@example.com")
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/auth/login$"))  # registered: sent to sign in
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/index$"))
    expect(page.locator("h1")).to_have_text(f"Hi, {username}!")


def send_message(page: Page, base: str, recipient: str, body: str) -> None:
    page.goto(f"{base}/user/{recipient}")
    page.get_by_role("link", name="Send private message").click()
    expect(page).to_have_url(re.compile(rf"/send_message/{recipient}$"))
    page.fill("#message", body)
    page.click("#submit")
    expect(page).to_have_url(re.compile(rf"/user/{recipient}$"))
    expect(page.locator(".alert")).to_contain_text("Your message has been sent.")


def is_stream(url: str) -> bool:
    return "/notifications/stream" in url


def is_poll(url: str) -> bool:
    return "/notifications?since=" in url


def badge_is(page: Page, count: int, timeout_ms: float) -> None:
    """Wait until the badge reads ``count`` (checked every 10 ms in the page)."""
    page.wait_for_function(
        "n => document.getElementById('message_count').textContent.trim() === String(n)",
        arg=count, polling=10, timeout=timeout_ms)


def watch_same_document(page: Page) -> list[str]:
    """From now on the page must never reload nor navigate: returns the list its main
    frame's navigations are recorded in (checked with ``assert_same_document``)."""
    page.evaluate("window.__same_document = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    return navigations


def assert_same_document(page: Page, navigations: list[str]) -> None:
    assert page.evaluate("window.__same_document === true"), "john's page was reloaded"
    assert not navigations, f"john's page navigated: {navigations}"


def open_messages(page: Page, facts: dict) -> None:
    """Open Messages from the navbar; record what the server drew for the badge."""
    messages_link = page.locator("nav").get_by_role("link", name=re.compile(r"^Messages\b"))
    with page.expect_response(re.compile(r"/messages$")) as opened:
        messages_link.click()
    expect(page).to_have_url(re.compile(r"/messages$"))
    # What the server drew, before any poll or event: a stale projection would draw the old count.
    drawn = re.search(r'id="message_count"[^>]*style="visibility: (\w+);">\s*(\d+)', opened.value.text())
    facts["messages_page_badge_as_served"] = drawn.groups() if drawn else None


def scenario(base: str, artifacts: Path, browser, mode: str) -> dict:
    facts: dict = {"mode": mode}
    susan_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    john_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    blocked: list[str] = []
    if mode == "blocked":
        def block(route):
            blocked.append(route.request.url)
            route.abort()
        john_context.route("**/notifications/stream*", block)
    susan, john = susan_context.new_page(), john_context.new_page()
    pages = {"susan": susan, "john": john}
    # Every answer john's page gets from the poll and from the stream (status codes).
    polls: list[int] = []
    streams: list[int] = []
    john.on("response", lambda r: polls.append(r.status) if is_poll(r.url) else
            (streams.append(r.status) if is_stream(r.url) else None))
    try:
        step("susan registers and signs in (context A)")
        register_and_log_in(susan, base, "susan")
        step("john registers and signs in (context B)")
        register_and_log_in(john, base, "john")

        badge = john.locator("#message_count")
        expect(badge).to_be_hidden()  # 0 unread: the badge is drawn but hidden
        expect(badge).to_have_css("visibility", "hidden")
        if mode == "stream":
            live(base, artifacts, susan, john, facts, polls, streams)
        else:
            by_polling(base, artifacts, susan, john, facts, polls, streams, blocked)
        return facts
    except BaseException:
        for name, page in pages.items():
            try:
                page.screenshot(path=str(artifacts / f"two_browsers_{mode}_failure_{name}.png"))
            except Exception:
                pass
        raise
    finally:
        susan_context.close()
        john_context.close()


def live(base: str, artifacts: Path, susan: Page, john: Page, facts: dict, polls: list, streams: list) -> None:
    """The stream on: the badge follows each send within LIVE_BOUND_S, no poll, no reload."""
    step("john's page opens the stream")
    deadline = time.monotonic() + STREAM_OPEN_MS / 1000
    while not streams and time.monotonic() < deadline:
        john.wait_for_timeout(20)  # lets Playwright deliver the response event
    assert streams == [200], f"john's stream answered {streams}"
    navigations = watch_same_document(john)

    delays = []
    for count, body in enumerate(LIVE_BODIES, start=1):
        step(f"susan sends john {body!r}")
        susan.goto(f"{base}/send_message/john")
        susan.fill("#message", body)
        with susan.expect_response(lambda r: r.request.method == "POST" and "/send_message/john" in r.url) as posted:
            susan.click("#submit")
        sent_at = time.monotonic()  # the send's HTTP response has arrived
        assert posted.value.status == 302, f"the send answered {posted.value.status}"
        try:
            badge_is(john, count, timeout_ms=10_000)
        except Exception as exc:
            raise AssertionError(f"john's badge never showed {count} (delays so far {delays})") from exc
        delays.append(round(time.monotonic() - sent_at, 3))
        step(f"john's badge shows {count} after {delays[-1]:.3f} s")
        expect(susan.locator(".alert")).to_contain_text("Your message has been sent.")
    facts["badge_delays_s"] = delays
    facts["badge_delay_max_s"] = max(delays)
    badge = john.locator("#message_count")
    expect(badge).to_be_visible()
    expect(badge).to_have_css("visibility", "visible")
    assert_same_document(john, navigations)
    assert all(delay <= LIVE_BOUND_S for delay in delays), f"badge delays {delays} s; bound {LIVE_BOUND_S} s"
    # POLL_INTERVAL is long and the page polls only when the stream fails: none at all.
    assert polls == [], f"john's page polled ({polls}): the stream failed"
    assert streams == [200], f"john's page opened the stream again: {streams}"
    shot = artifacts / "two_browsers_stream_badge.png"
    john.screenshot(path=str(shot))
    step(f"screenshot saved: {shot}")

    step("john opens Messages from the navbar; the badge hides")
    open_messages(john, facts)
    expect(john.locator(".message-body")).to_have_text(list(reversed(LIVE_BODIES)))  # newest first
    expect(john.locator("#message_count")).to_be_hidden(timeout=BADGE_HIDDEN_MS)
    facts["polls"] = len(polls)
    facts["streams_opened"] = len(streams)
    assert polls == [], f"john's page polled ({polls})"


def by_polling(base: str, artifacts: Path, susan: Page, john: Page, facts: dict, polls: list, streams: list,
               blocked: list) -> None:
    """The stream blocked: the page falls back to polling and the badge still follows."""
    navigations = watch_same_document(john)
    for body in BODIES:
        step(f"susan sends john {body!r}")
        send_message(susan, base, "john", body)
    sent_at = time.monotonic()

    step("john's badge must show 2 without a reload (by polling)")
    badge = john.locator("#message_count")
    expect(badge).to_have_text("2", timeout=BADGE_SHOWN_MS)
    expect(badge).to_be_visible()
    expect(badge).to_have_css("visibility", "visible")
    facts["badge_shown_after_s"] = round(time.monotonic() - sent_at, 2)
    assert_same_document(john, navigations)
    assert blocked, "john's page never asked for the stream"
    assert streams == [], f"a stream got through the block: {streams}"
    assert polls and all(status == 200 for status in polls), f"polls answered {polls}"
    facts["stream_attempts_blocked"] = len(blocked)
    facts["polls_before_badge"] = len(polls)
    shot = artifacts / "two_browsers_blocked_badge.png"
    john.screenshot(path=str(shot))
    step(f"screenshot saved: {shot}")

    step("john opens Messages from the navbar")
    open_messages(john, facts)
    expect(john.locator(".message-body")).to_have_text(list(reversed(BODIES)))  # newest first
    badge = john.locator("#message_count")
    expect(badge).to_be_hidden(timeout=BADGE_HIDDEN_MS)
    expect(badge).to_have_css("visibility", "hidden")
    # ... and it stays hidden: two more polls (answered after the page read the inbox).
    for _ in range(2):
        with john.expect_response(lambda r: is_poll(r.url), timeout=BADGE_HIDDEN_MS):
            pass
        expect(badge).to_be_hidden()
    facts["messages_page_badge_text"] = badge.text_content().strip()
    facts["stream_attempts_blocked"] = len(blocked)
    shot = artifacts / "two_browsers_blocked_messages.png"
    john.screenshot(path=str(shot))
    step(f"screenshot saved: {shot}")


def run(scenario, modes: tuple[str, ...]) -> int:
    """The command line of a browser script: ``scenario(base, artifacts, browser, mode)``
    in headless Chromium; its facts printed after ``RESULT ``, exit 1 if it raised."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--artifacts", required=True, type=Path)
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--mode", choices=modes, default=modes[0])
    args = parser.parse_args()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            facts = scenario(args.base_url.rstrip("/"), args.artifacts, browser, args.mode)
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            browser.close()
    print("RESULT " + json.dumps(facts), flush=True)
    return 0


def main() -> int:
    return run(scenario, ("stream", "blocked"))


if __name__ == "__main__":
    sys.exit(main())
