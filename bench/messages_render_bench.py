"""Benchmark: the gateway's cost of one /messages page of 25 messages, in-process, with
stand-in services (no broker, no database): what rendering the inbox costs.

    .venv/bin/python -m bench.messages_render_bench
"""
import time
from datetime import datetime, timezone, timedelta
from types import SimpleNamespace
from gateway import create_app
from gateway.settings import GatewaySettings
now = datetime.now(timezone.utc)
profile = {"id": 1, "username": "john", "about_me": "", "last_seen": now.isoformat(), "avatar": "0"*32}
susan = {"id": 2, "username": "susan", "about_me": "", "last_seen": now.isoformat(), "avatar": "1"*32}
msgs = [{"id": i, "sender_id": 2, "body": "hello there " * 8, "sent_at": (now - timedelta(minutes=i)).isoformat()} for i in range(25, 0, -1)]
class S:
    users = SimpleNamespace(get_user=lambda uid: profile if uid == 1 else susan, get_users=lambda ids: {"2": susan}, record_seen=lambda uid: profile, check_session=lambda uid, token: profile)
    messages = SimpleNamespace(open_inbox=lambda uid, page: {"messages": [dict(m) for m in msgs], "pages": 2, "has_next": True, "has_prev": False, "read": None, "read_after": 10})
    notifications = SimpleNamespace(notifications_since=lambda uid, since: [])
    def stop(self): pass
app = create_app(GatewaySettings(secret_key="x", amqp_uri=None), rpc=S())
app.extensions["known"].connection_up()
c = app.test_client()
with c.session_transaction() as s:
    s["_user_id"] = "1:tok"; s["_fresh"] = True
for _ in range(50): c.get("/messages")
best = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(200): r = c.get("/messages")
    best.append((time.perf_counter() - t) / 200 * 1000)
print(r.status_code, len(r.data), "ms/request min", round(min(best), 2))
