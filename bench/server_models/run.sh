#!/usr/bin/env bash
# Usage: ./run.sh MODEL [client args...]   MODEL: gthread | gevent1 | gevent1_watch | gevent2 | eventlet | uvicorn | uvicorn_a2wsgi
# Starts the server, runs client.py against it, stops the server (by its pid). Results go to results.jsonl.
set -u
cd "$(dirname "$0")"
MODEL=$1; shift
V=.venv/bin
export SPIKE_CTL=/tmp/spike_ctl
rm -rf "$SPIKE_CTL"; mkdir -p "$SPIKE_CTL/stats"
PAGE=/page; PATH_=/stream; MODE=streams
case $MODEL in
  gthread)  PORT=18101; $V/gunicorn -k gthread -w 1 --threads 16 -b 127.0.0.1:$PORT app_wsgi:app & MODE=cap ;;
  gevent1)  PORT=18102; $V/gunicorn -k gevent -w 1 --worker-connections 20000 -b 127.0.0.1:$PORT app_wsgi:app & ;;
  gevent1_watch) PORT=18107; SPIKE_WATCH=1 $V/gunicorn -k gevent -w 1 --worker-connections 20000 \
                -b 127.0.0.1:$PORT app_wsgi:app & ;;
  gevent2)  PORT=18103; $V/gunicorn -k gevent -w 2 --worker-connections 20000 -b 127.0.0.1:$PORT app_wsgi:app & ;;
  eventlet) PORT=18104; $V/python serve_eventlet.py $PORT 20000 & ;;
  uvicorn)  PORT=18105; $V/uvicorn app_asgi:app --loop uvloop --http httptools --no-access-log --backlog 2048 \
                --host 127.0.0.1 --port $PORT & ;;
  uvicorn_a2wsgi) PORT=18106; PAGE=/wsgi/page
            SPIKE_MOUNT_WSGI=1 $V/uvicorn app_asgi:app --loop uvloop --http httptools --no-access-log \
                --backlog 2048 --host 127.0.0.1 --port $PORT & ;;
  *) echo "unknown model $MODEL"; exit 2 ;;
esac
SPID=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT$PAGE" && break; sleep 0.2
done
sleep 1
kill -0 $SPID 2>/dev/null || { echo "server did not start"; exit 1; }
if [ "$MODE" = cap ]; then
  $V/python client.py --label "$MODEL" --port $PORT --pid $SPID --mode cap --streams 17 "$@"
else
  $V/python client.py --label "$MODEL" --port $PORT --pid $SPID --path $PATH_ --page-path $PAGE "$@"
fi
KIDS=$(pgrep -P $SPID)
kill -INT $SPID; sleep 3
kill -KILL $SPID $KIDS 2>/dev/null; wait $SPID 2>/dev/null
exit 0
