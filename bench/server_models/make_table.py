"""Print results.jsonl as a markdown table."""
import json
import sys

NAMES = {
    "gevent1": "gunicorn gevent, 1 worker",
    "gevent2": "gunicorn gevent, 2 workers",
    "gevent1_watch": "gunicorn gevent, 1 worker + recv() watcher greenlet",
    "eventlet": "eventlet.wsgi (1 process)",
    "uvicorn": "uvicorn uvloop/httptools + sse-starlette",
    "uvicorn_a2wsgi": "same + Flask via a2wsgi mounted",
}
rows = [json.loads(line) for line in open(sys.argv[1] if len(sys.argv) > 1 else "results.jsonl")]
print("| model | streams open | time to open (s) | RSS before -> after (MiB) | KiB/stream | CPU s / 60 s idle "
      "| page GET p50/max (ms) | fan-out p50 / p99 / max (ms) | pusher late max (ms) | delivered / expected (lost) "
      "| closed socket freed after (s, first / all 50) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("mode") == "cap":
        continue
    print("| %s | %d/%d | %s | %.0f -> %.0f | %.1f | %.2f | %s / %s | %s / %s / %s | %s | %d / %d (%d) | %s / %s |" % (
        NAMES.get(r["label"], r["label"]), r["opened"], r["streams_target"], r["open_s"],
        r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024, r["kib_per_stream"], r["idle_cpu_s"],
        r["page_ms_p50"], r["page_ms_max"], r.get("lat_ms_p50"), r.get("lat_ms_p99"), r.get("lat_ms_max"), r.get("pusher_late_ms_max"),
        r["delivered"], r["expected_deliveries"], r["lost"], r["free_first_s"], r["free_all_s"]))
for r in rows:
    if r.get("mode") == "cap":
        print()
        print("gthread (1 worker, 16 threads): %d of 17 streams answered, stream #%s got no response; after closing "
              "stream #1 the waiting one was answered after %s s." % (
                  r["answered"], r["first_unanswered"], r["waiting_answered_after_close_s"]))
