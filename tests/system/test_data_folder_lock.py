"""``microblog run`` holds its data folder: a second run on it exits at once, as processes."""
import os
import signal
import subprocess
import time

from tests.system.test_commands import MICROBLOG, free_port, start, stop, wait_for_http


def _run(tmp_path, name):
    port = free_port()
    log = tmp_path / f"{name}.log"
    process = start(["run", "--port", str(port)], {"MICROBLOG_DATA_DIR": str(tmp_path / "data")}, log)
    return process, f"http://127.0.0.1:{port}", log


def _second_run(tmp_path):
    began = time.monotonic()
    result = subprocess.run([MICROBLOG, "run", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return result, time.monotonic() - began


def test_a_second_run_on_the_same_data_folder_exits_at_once_until_the_first_stops(tmp_path):
    first, base, log = _run(tmp_path, "first")
    try:
        assert wait_for_http(base + "/auth/login", first, log).status_code == 200
        result, took = _second_run(tmp_path)
        assert result.returncode == 2
        data = (tmp_path / "data").resolve()
        assert result.stderr.strip() == (
            f"Error: data folder {data} is in use by another microblog run (pid {first.pid})"
        )
        assert "Traceback" not in result.stderr and "running on" not in result.stdout
        assert took < 10  # the time to start Python and import, not to wait for the lock
        assert first.poll() is None
        assert wait_for_http(base + "/auth/login", first, log).status_code == 200  # undisturbed
    finally:
        stop(first, signal.SIGKILL)  # kill -9: the kernel releases the lock with the process

    second, base, log = _run(tmp_path, "second")
    try:
        assert wait_for_http(base + "/auth/login", second, log).status_code == 200
    finally:
        assert stop(second) == 0  # SIGTERM: a clean stop releases it too

    third, base, log = _run(tmp_path, "third")
    try:
        assert wait_for_http(base + "/auth/login", third, log).status_code == 200
    finally:
        assert stop(third) == 0
