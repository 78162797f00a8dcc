"""Replay of the messages service's inbox read model (``microblog replay messages``).

    .venv/bin/python -m bench.replay_bench                # 1,000,000 events on PostgreSQL
    .venv/bin/python -m bench.replay_bench --sqlite       # the same on SQLite (embedded mode)

The log is seeded straight with SQL (1000 users, 90% MessageSent, 10% InboxRead), so this
measures the replay, not the sends; then ``storage.rebuild`` (what the command runs)
builds the inbox beside the live tables and swaps it in. Prints events/s.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, text

from bench.common import databases
from bench.notify_bench import SEED_SQL


def _seed_sqlite(engine, events: int, users: int) -> None:
    from kernel.eventlog import counters, event_log

    start = datetime(2026, 11, 24, tzinfo=timezone.utc)
    with engine.begin() as connection:
        for first in range(1, events + 1, 50_000):
            rows = []
            for n in range(first, min(events, first + 49_999) + 1):
                if n % 10 == 0:
                    kind, data = "InboxRead", {"user_id": 1 + n % users}
                else:
                    kind, data = "MessageSent", {"sender_id": 1 + (n * 7) % users, "recipient_id": 1 + n % users,
                                                 "body": "x"}
                rows.append({"position": n, "event_id": str(uuid.uuid4()), "event_type": kind, "version": 1,
                             "occurred_at": start + timedelta(milliseconds=n), "data": json.dumps(data),
                             "idempotency_key": None})
            connection.execute(insert(event_log), rows)
        connection.execute(counters.update().where(counters.c.name == "log_head").values(position=events))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sqlite", action="store_true", help="replay a SQLite database (embedded mode)")
    args = parser.parse_args()

    from deploy.registry import SERVICES
    from kernel.db import create_db_engine, dispose
    from kernel.migrations import upgrade
    from services.messages.storage import STORAGE

    def run(url: str) -> None:
        upgrade(SERVICES["messages"].migrations, url)
        engine = create_db_engine(url, pool_size=2)
        seeded = time.perf_counter()
        if args.sqlite:
            _seed_sqlite(engine, args.events, args.users)
        else:
            with engine.begin() as connection:
                for statement in SEED_SQL.split(";\n"):
                    if statement.strip():
                        connection.execute(text(statement), {"events": args.events, "users": args.users})
        print(f"seeded {args.events} events for {args.users} users in {time.perf_counter() - seeded:.1f} s")
        storage = STORAGE.open(engine)
        began = time.perf_counter()
        position = storage.rebuild()
        elapsed = time.perf_counter() - began
        messages, states = (storage.session.scalar(text(f"SELECT count(*) FROM {t}"))
                            for t in ("inbox_messages", "inbox_state"))
        storage.close()
        dispose(engine)
        print(f"replayed:    {position} events in {elapsed:.2f} s ({messages} inbox rows, {states} read positions)")
        print(f"replay rate: {position / elapsed:.0f} events/s ({'SQLite' if args.sqlite else 'PostgreSQL'})")

    if args.sqlite:
        with tempfile.TemporaryDirectory() as folder:
            run(f"sqlite:///{folder}/messages.db")
    else:
        with databases("messages") as urls:
            run(urls["messages"])


if __name__ == "__main__":
    main()
