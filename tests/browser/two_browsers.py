"""The two-browser scenario, driven by Playwright's sync API in its own process.

Run by tests/browser/test_two_browsers.py with the venv's Python (``python two_browsers.py
--base-url URL --artifacts DIR``). It is a separate process because the test session
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


def scenario(base: str, artifacts: Path, browser) -> dict:
    facts = {}
    susan_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    john_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    susan, john = susan_context.new_page(), john_context.new_page()
    pages = {"susan": susan, "john": john}
    try:
        step("susan registers and signs in (context A)")
        register_and_log_in(susan, base, "susan")
        step("john registers and signs in (context B)")
        register_and_log_in(john, base, "john")

        badge = john.locator("#message_count")
        expect(badge).to_be_hidden()  # 0 unread: the badge is drawn but hidden
        expect(badge).to_have_css("visibility", "hidden")
        # From here john's page must never reload nor navigate: the badge changes by polling.
        john.evaluate("window.__same_document = true")
        navigations = []
        john.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == john.main_frame else None)
        polls = []
        john.on("response", lambda r: polls.append(r.status) if "/notifications?since=" in r.url else None)

        for body in BODIES:
            step(f"susan sends john {body!r}")
            send_message(susan, base, "john", body)
        sent_at = time.monotonic()

        step("john's badge must show 2 without a reload")
        expect(badge).to_have_text("2", timeout=BADGE_SHOWN_MS)
        expect(badge).to_be_visible()
        expect(badge).to_have_css("visibility", "visible")
        facts["badge_shown_after_s"] = round(time.monotonic() - sent_at, 2)
        assert john.evaluate("window.__same_document === true"), "john's page was reloaded"
        assert not navigations, f"john's page navigated: {navigations}"
        assert polls and all(status == 200 for status in polls), f"polls answered {polls}"
        facts["polls_before_badge"] = len(polls)
        shot = artifacts / "two_browsers_badge.png"
        john.screenshot(path=str(shot))
        step(f"screenshot saved: {shot}")

        step("john opens Messages from the navbar")
        messages_link = john.locator("nav").get_by_role("link", name=re.compile(r"^Messages\b"))
        with john.expect_response(re.compile(r"/messages$")) as opened:
            messages_link.click()
        expect(john).to_have_url(re.compile(r"/messages$"))
        # What the server drew, before any poll: a stale projection would draw the old count.
        drawn = re.search(r'id="message_count"[^>]*style="visibility: (\w+);">\s*(\d+)', opened.value.text())
        facts["messages_page_badge_as_served"] = drawn.groups() if drawn else None
        expect(john.locator(".message-body")).to_have_text(list(reversed(BODIES)))  # newest first
        badge = john.locator("#message_count")
        expect(badge).to_be_hidden(timeout=BADGE_HIDDEN_MS)
        expect(badge).to_have_css("visibility", "hidden")
        # ... and it stays hidden: two more polls (answered after the page read the inbox).
        for _ in range(2):
            with john.expect_response(lambda r: "/notifications?since=" in r.url, timeout=BADGE_HIDDEN_MS):
                pass
            expect(badge).to_be_hidden()
        facts["messages_page_badge_text"] = badge.text_content().strip()
        shot = artifacts / "two_browsers_messages.png"
        john.screenshot(path=str(shot))
        step(f"screenshot saved: {shot}")
        return facts
    except BaseException:
        for name, page in pages.items():
            try:
                page.screenshot(path=str(artifacts / f"two_browsers_failure_{name}.png"))
            except Exception:
                pass
        raise
    finally:
        susan_context.close()
        john_context.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--artifacts", required=True, type=Path)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            facts = scenario(args.base_url.rstrip("/"), args.artifacts, browser)
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            browser.close()
    print("RESULT " + json.dumps(facts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
