"""Eight tabs of one browser share one push stream, driven by Playwright in its own process.

Run by tests/browser/test_many_tabs.py with the venv's Python (``python many_tabs.py
--base-url URL --artifacts DIR --mode shared|unshared``). The server runs with a long
POLL_INTERVAL, so only the stream can explain a badge that moves.

* ``shared`` (the navbar script as served): john signs in, then opens ``TABS`` tabs of
  /index in one browser context. Each tab must load within ``LOAD_BOUND_S`` (browsers
  allow six HTTP/1.1 connections per host: a stream per tab would stall the seventh);
  exactly one tab holds the Web Lock and opens /notifications/stream, the others wait for
  the lock. Susan (another context) sends john two messages: every tab's badge follows
  each within ``LIVE_BOUND_S`` of the send's response (rows pass over the BroadcastChannel).
  Then the leader tab is closed and susan sends once more: another tab takes the lock,
  opens the second (and only the second) stream, and the remaining tabs show 3 within
  ``TAKEOVER_BOUND_S``.
* ``unshared`` (the control): the same tabs with ``navigator.locks`` hidden from the page,
  so every tab opens its own stream, as before the change. Expected: the tab after the
  sixth stream does not load within ``LOAD_BOUND_S``; this shows the load bound of
  ``shared`` detects the stall it is there for.

Separate process because the test session is monkey-patched by eventlet (see
two_browsers.py); nothing here imports eventlet nor the project.

Exit 0: every step passed, facts printed after ``RESULT ``. Exit 1: a step failed; the
reason is on stderr and each tab is saved as ``many_tabs_<mode>_failure_<n>.png``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from two_browsers import badge_is, is_poll, is_stream, register_and_log_in, run

TABS = 8
LOAD_BOUND_S = 5.0  # each tab's /index (page.goto up to its load event)
LIVE_BOUND_S = 2.0  # every tab's badge follows a send within this long
TAKEOVER_BOUND_S = 5.0  # ... after the leader tab closed: lock passed on, a new stream opened
STREAM_OPEN_S = 10.0
SETTLE_S = 1.5  # after the last tab loaded: time for any other tab to (wrongly) open a stream
START = time.monotonic()
HIDE_LOCKS = "Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined, configurable: true});"


def step(message: str) -> None:
    print(f"[many_tabs {time.monotonic() - START:6.2f}s] {message}", flush=True)


def wait_until(page: Page, condition, timeout_s: float) -> bool:
    """Let Playwright deliver events (requests, responses) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        page.wait_for_timeout(20)
    return True


def locks(page: Page) -> dict:
    """The stream lock as the browser sees it: how many tabs hold it, how many wait."""
    return page.evaluate("""async () => {
        const state = await navigator.locks.query();
        const ours = l => l.name.startsWith('microblog-stream:');
        return {held: state.held.filter(ours).length, pending: state.pending.filter(ours).length};
    }""")


def send(susan: Page, base: str, body: str) -> float:
    """Susan sends john ``body``; returns the monotonic time the send's response arrived."""
    susan.goto(f"{base}/send_message/john")
    susan.fill("#message", body)
    with susan.expect_response(lambda r: r.request.method == "POST" and "/send_message/john" in r.url) as posted:
        susan.click("#submit")
    sent_at = time.monotonic()
    assert posted.value.status == 302, f"the send answered {posted.value.status}"
    return sent_at


def all_badges(tabs: list[Page], count: int, sent_at: float, bound_s: float) -> list[float]:
    """Every tab's badge reads ``count`` by ``sent_at + bound_s``. Returns, per tab, the
    seconds from the send's response to when the wait for that tab returned (the tabs are
    checked one after the other, so each figure is an upper bound)."""
    delays = []
    for index, tab in enumerate(tabs):
        left_ms = max(1.0, (sent_at + bound_s - time.monotonic()) * 1000)
        try:
            badge_is(tab, count, timeout_ms=left_ms)
        except PlaywrightTimeout as exc:
            shown = tab.locator("#message_count").text_content().strip()
            raise AssertionError(f"tab {index}'s badge shows {shown!r}, not {count}, {bound_s} s after the send "
                                 f"(the tabs before it: {delays})") from exc
        delays.append(round(time.monotonic() - sent_at, 3))
    return delays


def open_tabs(context: BrowserContext, base: str, facts: dict) -> list[Page]:
    """Opens TABS tabs of /index one after the other, timing each page.goto (to load)."""
    tabs: list[Page] = []
    facts["load_s"] = []
    for index in range(TABS):
        tab = context.new_page()
        tabs.append(tab)
        began = time.monotonic()
        try:
            tab.goto(base + "/index", timeout=LOAD_BOUND_S * 1000)
        except PlaywrightTimeout:
            facts["stalled_tab"] = index
            step(f"tab {index} did not load within {LOAD_BOUND_S} s")
            return tabs
        facts["load_s"].append(round(time.monotonic() - began, 3))
        step(f"tab {index} loaded in {facts['load_s'][-1]:.3f} s")
    return tabs


def scenario(base: str, artifacts: Path, browser, mode: str) -> dict:
    facts: dict = {"mode": mode, "tabs": TABS}
    susan_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    john_context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 600})
    if mode == "unshared":
        john_context.add_init_script(HIDE_LOCKS)
    tabs: list[Page] = []
    try:
        step("susan registers and signs in (context A)")
        susan = susan_context.new_page()
        register_and_log_in(susan, base, "susan")
        step("john registers and signs in (context B), then closes that tab")
        sign_in = john_context.new_page()
        register_and_log_in(sign_in, base, "john")
        sign_in.close()  # its stream and lock go with it; from here on, only the TABS tabs count

        streams: list[tuple[Page, float]] = []  # each request for the stream: its tab, when
        stream_statuses: list[int] = []
        polls: list[str] = []
        john_context.on("request", lambda r: streams.append((r.frame.page, time.monotonic())) if is_stream(r.url)
                        else (polls.append(r.url) if is_poll(r.url) else None))
        john_context.on("response", lambda r: stream_statuses.append(r.status) if is_stream(r.url) else None)

        step(f"john opens {TABS} tabs of /index in one context")
        tabs = open_tabs(john_context, base, facts)
        if mode == "unshared":
            wait_until(tabs[-1], lambda: len(streams) >= len(tabs) - 1, STREAM_OPEN_S)
            facts["streams"] = len(streams)
            assert "stalled_tab" in facts, f"no tab stalled without the shared stream: {facts}"
            assert facts["stalled_tab"] == 6 and len(streams) == 6, f"expected the 7th tab to stall: {facts}"
            return facts
        assert "stalled_tab" not in facts, f"tab {facts.get('stalled_tab')} stalled: {facts}"
        # (a) every tab loaded in time (page.goto raised otherwise); the figures are reported.
        facts["load_max_s"] = max(facts["load_s"])

        # (b) one stream for the whole browser: one tab holds the lock, the rest wait.
        assert wait_until(tabs[-1], lambda: streams and stream_statuses, STREAM_OPEN_S), "no tab opened the stream"
        tabs[-1].wait_for_timeout(SETTLE_S * 1000)
        facts["lock"] = locks(tabs[-1])
        assert len(streams) == 1, f"{len(streams)} stream requests across the tabs, not 1"
        assert stream_statuses == [200], f"the stream answered {stream_statuses}"
        assert facts["lock"] == {"held": 1, "pending": TABS - 1}, f"the stream lock: {facts['lock']}"
        leader = streams[0][0]
        assert leader in tabs, "the stream was not requested by one of the tabs"
        facts["leader_tab"] = tabs.index(leader)
        step(f"one stream, from tab {facts['leader_tab']}; the lock: {facts['lock']}")
        for tab in tabs:
            tab.evaluate("window.__same_document = true")  # to check later that no tab reloaded

        # (c) each send reaches every tab within LIVE_BOUND_S.
        facts["live_delays_s"] = []
        for count in (1, 2):
            step(f"susan sends john message {count}")
            sent_at = send(susan, base, f"Message {count} from Susan to every tab")
            delays = all_badges(tabs, count, sent_at, LIVE_BOUND_S)
            facts["live_delays_s"].append(delays)
            step(f"every tab shows {count}; slowest {max(delays):.3f} s after the send")

        # (d) the leader tab closes: another tab takes the lock and opens its own stream.
        step(f"john closes the leader tab ({facts['leader_tab']}); susan sends message 3")
        leader.close()
        closed_at = time.monotonic()
        rest = [tab for tab in tabs if tab is not leader]
        sent_at = send(susan, base, "Message 3, after the leader tab closed")
        delays = all_badges(rest, 3, sent_at, TAKEOVER_BOUND_S)
        facts["takeover_delays_s"] = delays
        step(f"the {len(rest)} remaining tabs show 3; slowest {max(delays):.3f} s after the send")
        rest[0].wait_for_timeout(SETTLE_S * 1000)
        facts["lock_after_close"] = locks(rest[0])
        assert len(streams) == 2, f"{len(streams)} stream requests in all, not 2 (one per leader)"
        assert stream_statuses == [200, 200], f"the streams answered {stream_statuses}"
        second_leader, opened_at = streams[1]
        assert second_leader in rest, "the second stream did not come from a remaining tab"
        facts["second_leader_tab"] = tabs.index(second_leader)
        facts["second_stream_after_close_s"] = round(opened_at - closed_at, 3)
        assert facts["lock_after_close"] == {"held": 1, "pending": TABS - 2}, facts["lock_after_close"]
        assert polls == [], f"a tab polled ({polls}): the stream failed somewhere"
        for index, tab in enumerate(rest):
            assert tab.evaluate("window.__same_document === true"), f"tab {index} was reloaded"
        facts["streams"] = len(streams)
        shot = artifacts / "many_tabs_shared_badge.png"
        rest[0].screenshot(path=str(shot))
        step(f"screenshot saved: {shot}")
        return facts
    except BaseException:
        for index, tab in enumerate(tabs):
            try:
                if not tab.is_closed():
                    tab.screenshot(path=str(artifacts / f"many_tabs_{mode}_failure_{index}.png"))
            except Exception:
                pass
        raise
    finally:
        susan_context.close()
        john_context.close()


def main() -> int:
    return run(scenario, ("shared", "unshared"))


if __name__ == "__main__":
    sys.exit(main())
