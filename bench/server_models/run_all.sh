#!/usr/bin/env bash
# Full spike: every model back to back (same VM state), results appended to results.jsonl.
cd "$(dirname "$0")"
./run.sh gthread
for m in gevent1 gevent2 gevent1_watch eventlet uvicorn uvicorn_a2wsgi; do
  ./run.sh $m "$@"
done
