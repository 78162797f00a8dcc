"""The navbar script's choice between the push stream and the poll, run in node with a
stand-in EventSource (the real browser, over a real server, is tests/browser)."""
import json
import subprocess

import pytest

from tests.gateway.test_database_outage import BADGE, NODE, SCRIPT, Services, _client

PRELUDE = """
globalThis.BroadcastChannel = undefined;  // one tab here: no sharing across tabs (tests/browser has that)
const badge = JSON.parse(process.env.BADGE);
globalThis.document = {getElementById: id => badge};
const store = new Map();
globalThis.sessionStorage = {getItem: k => store.has(k) ? store.get(k) : null, setItem: (k, v) => store.set(k, String(v))};
globalThis.addEventListener = () => {};
const polls = [], sources = [], shown = [];
globalThis.fetch = async (url) => { polls.push(url); return {ok: true, json: async () => POLL_ANSWER}; };
let POLL_ANSWER = [];
const intervals = [];
globalThis.setInterval = (f, ms) => { intervals.push(ms); return intervals.length; };
globalThis.clearInterval = () => {};
const realTimeout = setTimeout;
globalThis.setTimeout = (f, ms) => ms > 1000 ? 0 : realTimeout(f, ms);  // no 60 s retry here
class FakeEventSource {
  static CONNECTING = 0; static OPEN = 1; static CLOSED = 2;
  constructor(url) { this.url = url; this.readyState = 0; this.closed = false; sources.push(this); }
  close() { this.closed = true; this.readyState = 2; }
}
if (process.env.EVENTSOURCE === '1') globalThis.EventSource = FakeEventSource;
"""


def _run(html: str, scenario: str, eventsource: bool = True) -> dict:
    attributes, count = BADGE.search(html).groups()
    badge = {"textContent": count, "style": {"visibility": "visible"}, "dataset": {}}
    script = next(s for s in SCRIPT.findall(html) if "set_message_count" in s)
    epilogue = f"""
(async () => {{
  {scenario}
  await new Promise(resolve => realTimeout(resolve, 20));
  console.log(JSON.stringify({{text: String(badge.textContent), polls, intervals,
                              sources: sources.map(s => ({{url: s.url, closed: s.closed}}))}}));
}})();
"""
    env = {"BADGE": json.dumps(badge), "EVENTSOURCE": "1" if eventsource else "0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([NODE, "-e", PRELUDE + script + epilogue], capture_output=True, text=True, timeout=30,
                            env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


pytestmark = pytest.mark.skipif(NODE is None, reason="node not installed (runs the page's script)")


def _page():
    return _client(Services()).get("/index").text


def test_the_page_follows_the_stream_and_does_not_poll():
    result = _run(_page(), """
      const source = sources[0];
      source.readyState = 1; source.onopen();
      source.onmessage({data: JSON.stringify({name: 'unread_message_count', data: 5, timestamp: 10.5})});
      source.onmessage({data: JSON.stringify({name: 'unread_message_count', data: 2, timestamp: 9.0})});  // older: ignored
    """)
    assert result["text"] == "5"
    assert result["polls"] == [] and result["intervals"] == []
    assert result["sources"] == [{"url": "/notifications/stream?since=0", "closed": False}]


def test_a_stream_that_answers_with_an_error_falls_back_to_polling_at_once():
    result = _run(_page(), """
      POLL_ANSWER = [{name: 'unread_message_count', data: 4, timestamp: 11.25}];
      const source = sources[0];
      source.readyState = 2; source.onerror();  // a 401 or 503 answer: the browser gives up
    """)
    assert result["sources"][0]["closed"] is True
    assert result["polls"] == ["/notifications?since=0"]  # at once, then every interval
    assert result["intervals"] == [10000]
    assert result["text"] == "4"


def test_three_failed_reconnects_in_a_row_fall_back_to_polling_but_one_success_resets_the_count():
    result = _run(_page(), """
      const source = sources[0];
      source.onerror(); source.onerror();
      source.onopen();  // reconnected: the count starts again
      source.onerror(); source.onerror();
    """)
    assert result["polls"] == [] and result["sources"][0]["closed"] is False
    result = _run(_page(), """
      const source = sources[0];
      source.onmessage({data: JSON.stringify({name: 'unread_message_count', data: 1, timestamp: 3.5})});
      source.onerror(); source.onerror(); source.onerror();
    """)
    assert result["sources"][0]["closed"] is True
    assert result["polls"] == ["/notifications?since=3.5"]  # from the last id the stream gave


def test_without_eventsource_the_page_polls_as_the_tutorial_does():
    result = _run(_page(), "", eventsource=False)
    assert result["sources"] == [] and result["intervals"] == [10000] and result["polls"] == []
