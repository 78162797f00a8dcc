"""What a careful product does where the tutorial is silent (issue 14), in a real browser.

Run by tests/browser/test_product_surface.py with the venv's Python (``python
product_surface.py --base-url URL --artifacts DIR``), against the embedded system (its
avatars are drawn locally by default):

1. Nothing from elsewhere: every request of every page visited below (all contexts) is
   for the site's own origin: no CDN, no Gravatar, no web fonts.
2. Readable on a phone (375x740, touch): on each page of ``PHONE_PAGES`` the document is
   no wider than the screen (nothing scrolls sideways), even with a 64-character
   username, a 140-character word in a message and in an "about me"; the navbar is
   collapsed behind its toggler, and tapping the toggler shows the Messages link
   (Bootstrap's script, served by the site, works), which then opens the inbox. The
   pagination links of Messages and Explore keep each its text on one line.
3. Keyboard (desktop): from /messages, Tab alone reaches the first message's Reply link,
   Enter opens the send form; Tab reaches the text area, typing moves the counter; over
   the limit, Tab to the button and Enter give the form error with the text kept. Every
   element Tab lands on shows it has the focus (an outline or a box shadow).
4. JavaScript off: the send form still says the limit in words; 141 characters are a
   form error that keeps the text, 140 are sent.

Separate process because the test session is monkey-patched by eventlet (see
two_browsers.py); nothing here imports eventlet nor the project.

Exit 0: every step passed, facts printed after ``RESULT ``. Exit 1: a step failed; the
reason is on stderr and the page is saved as ``product_surface_failure_<context>.png``.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import BrowserContext, Page, expect
from two_browsers import register_and_log_in, run, send_message

LONG_NAME = "m" * 60 + "_max"  # registration allows 64 characters
assert len(LONG_NAME) == 64
LONG_WORD = "Unbroken" * 17 + "word"  # 140 characters, no space to wrap at
assert len(LONG_WORD) == 140
PHONE = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
DESKTOP = {"viewport": {"width": 1000, "height": 700}}
MAX_TABS = 40  # Tab presses allowed to reach an element
START = time.monotonic()


def step(message: str) -> None:
    print(f"[product_surface {time.monotonic() - START:6.2f}s] {message}", flush=True)


def phone_pages(other: str) -> list[str]:
    return ["/index", "/explore", f"/explore?q={other[:3]}", f"/user/{other}", f"/send_message/{other}",
            "/messages", "/edit_profile", "/no/such/page"]


def record_requests(context: BrowserContext, requests: list[str]) -> None:
    context.on("request", lambda request: requests.append(request.url))


def outside(requests: list[str], base: str) -> list[str]:
    """The requests not for the site's origin; inline ``data:`` URLs (Bootstrap's icons)
    are part of the page, not fetched."""
    origin = urlsplit(base)[:2]
    return [url for url in requests if not url.startswith("data:") and urlsplit(url)[:2] != origin]


def overflow(page: Page) -> dict | None:
    """How far the page scrolls sideways, and the widest element doing it; None if not.
    On a phone a page wider than the screen also widens the layout viewport (innerWidth
    grows as the browser zooms out to show it), so the width compared is the screen's."""
    return page.evaluate("""width => {
        const doc = document.documentElement.scrollWidth;
        if (doc <= width && window.innerWidth === width) return null;
        let widest = null;
        for (const element of document.body.querySelectorAll('*')) {
            const right = element.getBoundingClientRect().right;
            if (right > width && (widest === null || right > widest.right))
                widest = {right, tag: element.tagName, class: element.className, text: element.textContent.slice(0, 60)};
        }
        return {scroll_width: doc, inner_width: window.innerWidth, widest};
    }""", page.viewport_size["width"])


def broken_links(page: Page) -> list[str]:
    """The pagination links whose text takes more than one line."""
    return page.evaluate("""() => [...document.querySelectorAll('.page-link')].filter(link => {
        const range = document.createRange();
        range.selectNodeContents(link);
        return new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size > 1;
    }).map(link => link.textContent.trim())""")


def focus_shown(page: Page) -> dict:
    """The focused element and how it shows it has the focus."""
    return page.evaluate("""() => {
        const element = document.activeElement, style = getComputedStyle(element);
        return {tag: element.tagName, id: element.id, text: (element.textContent || '').trim().slice(0, 40),
                href: element.getAttribute('href'),
                outline: style.outlineStyle === 'none' || parseFloat(style.outlineWidth) === 0 ? 'none'
                         : `${style.outlineStyle} ${style.outlineWidth}`,
                box_shadow: style.boxShadow};
    }""")


def tab_to(page: Page, is_target: str, stops: list[dict]) -> int:
    """Press Tab until ``is_target`` (a JavaScript predicate of the focused element) holds;
    each element passed is recorded in ``stops``. Returns the number of presses."""
    for presses in range(1, MAX_TABS + 1):
        page.keyboard.press("Tab")
        stops.append(focus_shown(page))
        if page.evaluate(f"(element => {is_target})(document.activeElement)"):
            return presses
    raise AssertionError(f"{MAX_TABS} Tab presses never reached {is_target}: {stops[-MAX_TABS:]}")


def unseen_focus(stops: list[dict]) -> list[dict]:
    return [stop for stop in stops if stop["outline"] == "none" and stop["box_shadow"] in ("none", "")]


def scenario(base: str, artifacts: Path, browser, mode: str) -> dict:
    facts: dict = {"mode": mode}
    requests: list[str] = []
    contexts: dict[str, BrowserContext] = {}

    def context(name: str, **options) -> Page:
        contexts[name] = browser.new_context(locale="en-US", reduced_motion="reduce", **options)
        record_requests(contexts[name], requests)
        return contexts[name].new_page()

    try:
        step("susan and a user with a 64-character name register; each sends john a message")
        long_user, susan, john = context("long", **DESKTOP), context("susan", **DESKTOP), context("john", **PHONE)
        register_and_log_in(john, base, "john")
        register_and_log_in(long_user, base, LONG_NAME)
        register_and_log_in(susan, base, "susan")
        long_user.goto(base + "/edit_profile")
        long_user.fill("#about_me", LONG_WORD)
        long_user.click("#submit")
        expect(long_user.locator(".alert")).to_contain_text("Your changes have been saved.")
        send_message(long_user, base, "john", LONG_WORD)
        send_message(long_user, base, "john", "A short one, with words that wrap as words do.")
        send_message(susan, base, "john", "Hello John, from Susan")  # the newest: the first on /messages

        phone(base, artifacts, john, facts)
        keyboard(base, artifacts, context("desktop", storage_state=contexts["john"].storage_state(), **DESKTOP), facts)
        without_javascript(base, context("nojs", storage_state=contexts["john"].storage_state(),
                                         java_script_enabled=False, **DESKTOP), susan, facts)

        facts["requests"] = len(requests)
        foreign = outside(requests, base)
        assert not foreign, f"requests for another origin: {sorted(set(foreign))}"
        assert any("/static/bootstrap/" in url for url in requests) and any("/avatar/" in url for url in requests), \
            f"the stylesheet, script and avatars were not among the requests recorded: {requests}"
        return facts
    except BaseException:
        for name, each in contexts.items():
            for page in each.pages:
                try:
                    page.screenshot(path=str(artifacts / f"product_surface_failure_{name}.png"), full_page=True)
                except Exception:
                    pass
        raise
    finally:
        for each in contexts.values():
            each.close()


def phone(base: str, artifacts: Path, john: Page, facts: dict) -> None:
    """Each page fits the phone's width; the navbar's toggler shows the Messages link."""
    facts["phone_pages"] = {}
    for path in phone_pages(LONG_NAME):
        step(f"phone: {path}")
        response = john.goto(base + path)
        assert response.status == (404 if path == "/no/such/page" else 200), f"{path} answered {response.status}"
        messages_link = john.locator("nav").get_by_role("link", name=re.compile(r"^Messages\b"))
        toggler = john.locator(".navbar-toggler")
        expect(toggler).to_be_visible()
        expect(messages_link).to_be_hidden()  # collapsed
        too_wide = overflow(john)
        assert too_wide is None, f"{path} scrolls sideways on a phone: {too_wide}"
        toggler.tap()
        expect(toggler).to_have_attribute("aria-expanded", "true")
        expect(messages_link).to_be_visible()
        assert overflow(john) is None, f"{path} scrolls sideways on a phone with the menu open: {overflow(john)}"
        facts["phone_pages"][path] = john.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        if path == "/messages":
            expect(john.locator(".message-body")).to_have_text(
                ["Hello John, from Susan", "A short one, with words that wrap as words do.", LONG_WORD])
            toggler.tap()  # closed again for the screenshot
            expect(messages_link).to_be_hidden()
        if path in ("/messages", "/explore"):
            assert broken_links(john) == [], f"{path}: pagination links broken over two lines"
            shot = artifacts / f"product_surface_phone_{path.strip('/')}.png"
            john.screenshot(path=str(shot), full_page=True)
            step(f"screenshot saved: {shot}")

    step("phone: the Messages link of the opened menu opens the inbox")
    john.goto(base + "/index")
    john.locator(".navbar-toggler").tap()
    john.locator("nav").get_by_role("link", name=re.compile(r"^Messages\b")).tap()
    expect(john).to_have_url(re.compile(r"/messages$"))


def keyboard(base: str, artifacts: Path, john: Page, facts: dict) -> None:
    """Tab to the first Reply, Enter, Tab to the text, type, Tab to the button, Enter."""
    step("keyboard: /messages, Tab to the first message's Reply link")
    john.goto(base + "/messages")
    reply = john.locator(".message").first.get_by_role("link", name="Reply")
    expect(reply).to_have_attribute("href", "/send_message/susan")
    stops: list[dict] = []
    facts["tabs_to_reply"] = tab_to(john, "element.textContent.trim() === 'Reply'", stops)
    assert john.evaluate("document.activeElement === document.querySelector('.message a.btn')"), \
        f"the first Reply link reached is not the first message's: {stops[-1]}"
    john.keyboard.press("Enter")
    expect(john).to_have_url(re.compile(r"/send_message/susan$"))

    step("keyboard: Tab to the text area, type; the counter follows")
    facts["tabs_to_message"] = tab_to(john, "element.id === 'message'", stops)
    counter = john.locator("#message-counter")
    john.keyboard.type("Hi")
    expect(counter).to_have_text("2 of 140 characters")
    body = "Hi" + "x" * 140  # 142 characters
    john.keyboard.type(body[2:])
    expect(counter).to_have_text("142 of 140 characters: too long")

    step("keyboard: Tab to Submit, Enter: the form error, the text kept")
    facts["tabs_to_submit"] = tab_to(john, "element.id === 'submit'", stops)
    with john.expect_navigation():
        john.keyboard.press("Enter")
    expect(john).to_have_url(re.compile(r"/send_message/susan$"))
    expect(john.locator("#message-errors")).to_have_text("Messages are at most 140 characters; this one has 142.")
    expect(john.locator("#message")).to_have_value(body)
    facts["focus_stops"] = len(stops)
    step("keyboard: focus shown by " + "; ".join(sorted({
        f"{stop['tag'].lower()}: outline {stop['outline']}, box-shadow {stop['box_shadow']}" for stop in stops})))
    hidden = unseen_focus(stops)
    assert not hidden, f"focus not shown (no outline, no box shadow) on: {hidden}"
    john.locator("#message").focus()
    john.screenshot(path=str(artifacts / "product_surface_keyboard_error.png"))


def without_javascript(base: str, john: Page, susan: Page, facts: dict) -> None:
    step("JavaScript off: the limit in words, 141 characters refused with the text kept, 140 sent")
    john.goto(base + "/send_message/susan")
    assert john.evaluate("1") == 1  # Playwright's own evaluation still runs; the page's scripts do not
    expect(john.locator("#message-limit")).to_have_text("At most 140 characters.")
    expect(john.locator("#message-counter")).to_be_hidden()  # the script would show it
    expect(john.locator("#message-counter")).to_have_text("")
    too_long = "y" * 141
    john.fill("#message", too_long)
    john.click("#submit")
    expect(john).to_have_url(re.compile(r"/send_message/susan$"))
    expect(john.locator("#message-errors")).to_have_text("Messages are at most 140 characters; this one has 141.")
    expect(john.locator("#message")).to_have_value(too_long)
    just_fits = "z" * 140
    john.fill("#message", just_fits)
    john.click("#submit")
    expect(john).to_have_url(re.compile(r"/user/susan$"))
    expect(john.locator(".alert")).to_contain_text("Your message has been sent.")
    susan.goto(base + "/messages")
    expect(susan.locator(".message-body")).to_have_text([just_fits])  # the 141 were not sent
    facts["nojs_sent"] = len(just_fits)


if __name__ == "__main__":
    sys.exit(run(scenario, ("phone-keyboard-nojs",)))
