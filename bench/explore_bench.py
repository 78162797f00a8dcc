"""Finding people (``/explore``, the users service's ``list_users``) over 100,000 users.

    .venv/bin/python -m bench.explore_bench            # PostgreSQL, 100,000 users

A fresh users database, migrated, seeded straight with SQL: usernames are 12 hex digits
(``md5(n)``), every tenth ``Susan<n>`` (a common prefix: 10,000 names). Times
``accounts.list_users`` on the service's own recorder (the RPC's work without the broker)
for pages with and without a prefix, near the start and at the end, then prints the plans
of two filtered queries, and the same timings once more without the prefix index.
"""
from __future__ import annotations

import argparse
import statistics
import time

from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from bench.common import databases, percentile

SEED_SQL = """
INSERT INTO users (username, email, password_hash, about_me, last_seen, created_at)
SELECT CASE WHEN n % 10 = 0 THEN 'Susan' || n ELSE substr(md5(n::text), 1, 12) END,
       'user' || n || '@example.com', 'not-a-hash', '', now(), now() - (:users - n) * interval '1 second'
FROM generate_series(1, :users) AS n
"""

CASES = [  # (label, page, q)
    ("everyone, page 1", 1, ""),
    ("everyone, page 100", 100, ""),
    ("everyone, last page (4,000)", 4000, ""),
    ("q=a (about 5,600 names), page 1", 1, "a"),
    ("q=SUS (10,000 names), page 1", 1, "SUS"),
    ("q=SUS, last page (400)", 400, "SUS"),
    ("q=3f2 (a rare prefix), page 1", 1, "3f2"),
    ("q=zzz (no one), page 1", 1, "zzz"),
]


def _time(storage, runs: int) -> None:
    from services.users import accounts

    for label, page, q in CASES:
        found = accounts.list_users(storage, page, q)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            accounts.list_users(storage, page, q)
            storage.session.rollback()
            times.append((time.perf_counter() - start) * 1000)
        print(f"  {label:34} {len(found['users']):3} users  median {statistics.median(times):7.2f} ms"
              f"  p99 {percentile(times, 0.99):7.2f} ms  max {max(times):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    from deploy.registry import SERVICES
    from kernel.db import create_db_engine
    from kernel.migrations import upgrade
    from services.users.storage import STORAGE

    with databases("users") as urls:
        url = urls["users"]
        upgrade(SERVICES["users"].migrations, url)
        engine = create_db_engine(url, pool_size=2)
        with engine.begin() as connection:
            connection.execute(text(SEED_SQL), {"users": args.users})
            connection.exec_driver_sql("ANALYZE users")
        storage = STORAGE.open(engine, sessionmaker(engine, expire_on_commit=False))
        try:
            print(f"{args.users:,} users, {args.runs} runs a case (list_users, 25 a page, 26 rows read):")
            _time(storage, args.runs)
            for q in ("3f2", "sus"):
                statement = storage.session.execute(text(
                    "EXPLAIN SELECT * FROM users WHERE lower(username) LIKE :p ESCAPE '\\' "
                    "ORDER BY id DESC LIMIT 26"), {"p": q + "%"})
                print(f"plan for q={q}:\n    " + "\n    ".join(row[0] for row in statement))
            storage.session.rollback()
            storage.session.execute(text("DROP INDEX ix_users_username_prefix"))
            storage.session.commit()
            print("without ix_users_username_prefix:")
            _time(storage, args.runs)
        finally:
            storage.close()
            engine.dispose()


if __name__ == "__main__":
    main()
