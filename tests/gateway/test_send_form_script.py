"""The send form's counter script, run in node with a stand-in DOM: it counts as the
server does (code points, surrounding whitespace left out), over stand-in services."""
import json
import re
import shutil
import subprocess

import pytest

from tests.gateway.test_database_outage import Services, _client

NODE = shutil.which("node")
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
DATA = re.compile(r'data-(max|within|over)="([^"]*)"')
PRELUDE = """
const counter = {dataset: JSON.parse(process.env.DATA), hidden: true, textContent: '',
                 classList: {on: new Set(), toggle(c, v) { v ? this.on.add(c) : this.on.delete(c); }}};
const status = {textContent: ''};
let listener = null;
const field = {id: 'message', value: process.env.VALUE, addEventListener: (type, f) => { listener = f; }};
const elements = {message: field, 'message-counter': counter, 'message-status': status};
globalThis.document = {getElementById: id => elements[id] || null};
"""
EPILOGUE = """
const shown = counter.textContent;
field.value = process.env.TYPED; listener();
setTimeout(() => console.log(JSON.stringify({shown, typed: counter.textContent, hidden: counter.hidden,
  danger: counter.classList.on.has('text-danger'), announced: status.textContent})), 900);
"""


@pytest.mark.skipif(NODE is None, reason="node not installed (runs the page's script)")
@pytest.mark.parametrize("value, typed, shown, after, danger", [
    ("", "\N{GRINNING FACE}" * 140, "0 of 140 characters", "140 of 140 characters", False),
    ("x" * 150, " " + "é" * 141 + " \n", "150 of 140 characters: too long", "141 of 140 characters: too long", True),
])
def test_the_counter_counts_code_points_as_the_server_does(value, typed, shown, after, danger):
    page = _client(Services()).get("/send_message/john").text
    script = next(s for s in SCRIPT.findall(page) if "message-counter" in s)
    data = dict(DATA.findall(page))
    result = subprocess.run([NODE, "-e", PRELUDE + script + EPILOGUE], capture_output=True, text=True, timeout=30,
                            env={"DATA": json.dumps(data), "VALUE": value, "TYPED": typed, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["hidden"] is False and state["shown"] == shown
    assert state["typed"] == after and state["danger"] is danger
    assert state["announced"] == after  # said to a screen reader once typing pauses
