"""Shared control plumbing for the SSE spike servers (no framework imports here).

* Push schedule: tick k = int(time.time() * TICKS_PER_S); on tick k the user (k * 7919) % NUSERS gets one
  event, but only while k is inside the window written by the client to CTL_DIR/window ("k0 k1").
  Every worker process runs the same schedule against its own hub, so with N workers the 5 streams of a
  user get their event from whichever worker holds them (stand-in for a broker fan-out to all workers).
* Each worker writes its hub size to CTL_DIR/stats/<pid> every 0.25 s so the client can sum them.
"""
import json
import os
import time

CTL_DIR = os.environ.get("SPIKE_CTL", "/tmp/spike_ctl")
NUSERS = int(os.environ.get("SPIKE_USERS", "2000"))
TICKS_PER_S = 20
KEEPALIVE = float(os.environ.get("SPIKE_KEEPALIVE", "15"))
os.makedirs(os.path.join(CTL_DIR, "stats"), exist_ok=True)

_win = {"mtime": None, "val": None}


def window():
    path = os.path.join(CTL_DIR, "window")
    try:
        mt = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None
    if mt != _win["mtime"]:
        try:
            with open(path) as f:
                a, b = f.read().split()
            _win["val"] = (int(a), int(b))
            _win["mtime"] = mt
        except (ValueError, OSError):
            return None
    return _win["val"]


def user_for_tick(k):
    return (k * 7919) % NUSERS


def make_event(k, user):
    # t: when the server pushes (time.time()); s: when the schedule wanted it (shows event-loop stalls)
    payload = json.dumps({"k": k, "u": user, "t": time.time(), "s": k / TICKS_PER_S}, separators=(",", ":"))
    return ("id: %d\ndata: %s\n\n" % (k, payload)).encode()


def write_stats(n_streams):
    path = os.path.join(CTL_DIR, "stats", str(os.getpid()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(n_streams))
    os.replace(tmp, path)


def first_tick():
    return int(time.time() * TICKS_PER_S) + 1


def tick_delay(k):
    """Seconds to sleep until tick k starts (0 if late: late ticks are pushed late, never skipped)."""
    return max(0.0, k / TICKS_PER_S - time.time())
