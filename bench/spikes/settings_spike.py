"""Spike (issue 12, item 0): our settings code against pydantic-settings (settings_pydantic.py,
the same settings with the same error messages). Import cost in a fresh process (median
of 5, minus an empty interpreter's start), the cost of reading the settings once, and the
lines each takes. Run with a venv that has pydantic-settings (it is not in our lock):

    python3 -m venv /tmp/ps-venv && /tmp/ps-venv/bin/pip install pydantic-settings
    /tmp/ps-venv/bin/python bench/spikes/settings_spike.py
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# gateway/settings.py is loaded from its file: ``import gateway.settings`` would first run
# gateway/__init__.py (Flask and the whole app), which is not the settings' cost.
OURS = ("import sys, importlib.util, kernel.settings, services.messages.settings, services.notifications.settings, "
        "services.users.settings\n"
        "spec = importlib.util.spec_from_file_location('gateway_settings', 'gateway/settings.py')\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['gateway_settings'] = module\n"
        "spec.loader.exec_module(module)\n")
THEIRS = "import bench.spikes.settings_pydantic\n"
READ_OURS = OURS + ("import os; os.environ['SECRET_KEY'] = 'k'\n"
                    "module.GatewaySettings.from_env(); services.messages.settings.nameko_config()\n")
READ_THEIRS = THEIRS + ("import os; os.environ['SECRET_KEY'] = 'k'; P = bench.spikes.settings_pydantic\n"
                        "P.GatewaySettings.from_env(); P.service_config('messages', P.MessagesExtra)\n")
TIMED = "import time; t = time.perf_counter()\n{code}print(time.perf_counter() - t)\n"


def seconds(code: str) -> float:
    result = subprocess.run([sys.executable, "-c", TIMED.format(code=code)], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def code_lines(*paths: str) -> int:
    """Lines that are neither blank, nor comments, nor docstring-only lines."""
    count = 0
    for path in paths:
        in_doc = False
        for line in (ROOT / path).read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(('"""', "'''")):
                if not (len(stripped) > 3 and stripped.endswith(('"""', "'''"))):
                    in_doc = not in_doc
                continue
            if in_doc or not stripped or stripped.startswith("#"):
                continue
            count += 1
    return count


def main():
    runs = 5
    for label, code in (("import", None), ("import + read once", None)):
        ours_code, theirs_code = (OURS, THEIRS) if label == "import" else (READ_OURS, READ_THEIRS)
        ours, theirs = [], []
        for _ in range(runs):  # alternating
            ours.append(seconds(ours_code))
            theirs.append(seconds(theirs_code))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{label}: ours {1000 * o:.1f} ms, pydantic-settings {1000 * t:.1f} ms (median of {runs}; "
              f"x{t / o:.0f})")
    ours_files = ("kernel/settings.py", "gateway/settings.py", "services/messages/settings.py",
                  "services/notifications/settings.py", "services/users/settings.py")
    print(f"lines of code (no blanks, comments, docstrings): ours {code_lines(*ours_files)} "
          f"(gateway/settings.py includes persistent_secret_key, which stays either way), "
          f"pydantic-settings version {code_lines('bench/spikes/settings_pydantic.py')} "
          f"(plus the three services' settings.py calls)")


if __name__ == "__main__":
    main()
