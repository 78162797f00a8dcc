"""Spike (issue 12, item 0): the `eventsourcing` library's SQLAlchemy recorders against our
event log and tracking row, side by side on real PostgreSQL, alternating A/B in one run.

Not part of the product: it needs a venv with ``eventsourcing==9.5.6`` and
``eventsourcing-sqlalchemy==1.0.1``, which require SQLAlchemy < 2.1 (our lock has 2.1.9):

    python3 -m venv /tmp/spike-venv
    grep -vi '^sqlalchemy==' requirements.lock > /tmp/spike-req.txt
    /tmp/spike-venv/bin/pip install -r /tmp/spike-req.txt eventsourcing==9.5.6 eventsourcing-sqlalchemy==1.0.1
    git worktree add /tmp/spike-at-dc78f41 dc78f41   # "ours" is the code as it was measured
    cp bench/spikes/eventsourcing_spike.py /tmp/spike-at-dc78f41/bench/
    cd /tmp/spike-at-dc78f41 && PYTHONPATH=. /tmp/spike-venv/bin/python bench/eventsourcing_spike.py

"Ours" here is the log as it was before it moved to ``kernel/eventlog.py`` (commit dc78f41:
``services/messages/log.py``, ``inbox.py``, ``services/notifications/store.py``); the
statements it measures are the ones ``kernel.eventlog`` and the recorders run today.

It creates a throw-away database, and measures:

(a) appends, one event per transaction, from N concurrent writer threads, with a reader
    polling the feed meanwhile that checks it never sees a position before an earlier one
    is visible: ours (``log.append_in_one_statement`` in autocommit, with the inbox row, as
    the send path does; and ``log.append`` + ``inbox.apply`` inside a transaction) against
    ``SQLAlchemyApplicationRecorder.insert_events`` (notification ids from a sequence,
    ``LOCK TABLE ... IN EXCLUSIVE MODE`` per insert, then ``NOTIFY``);
(b) reading 100,000 events in batches of 1000: ``log.read_payloads_after`` (dicts with the
    data decoded) against ``select_notifications`` (raw bytes; and with ``json.loads`` of
    each state, to compare like with like);
(c) tracking: our consumer's write (``store.read_current`` + ``store.save_if_current``: rows
    and tracking row, optimistic on ``xmin``), and the bare tracking-row update, against
    ``SQLAlchemyProcessRecorder.insert_events([], tracking=...)`` and a hand-written view
    transaction (upsert + ``_insert_tracking``), per event and per batch;
(d) whether a failed insert leaves a hole in the positions (theirs: a sequence; ours: a
    counter row, rolled back with the transaction).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from eventsourcing.persistence import IntegrityError as ESIntegrityError
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing_sqlalchemy.datastore import SQLAlchemyDatastore
from eventsourcing_sqlalchemy.recorders import SQLAlchemyApplicationRecorder, SQLAlchemyProcessRecorder

from kernel.events import MessageSent
from services.messages import inbox, log
from services.messages.models import Base as MessagesBase
from services.notifications import store
from services.notifications.models import Base as NotificationsBase
from services.notifications.projection import Row

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TOPIC = "kernel.events:MessageSent"


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Spike:
    def __init__(self, url: str, writers: int):
        pool = dict(pool_size=writers + 2, max_overflow=writers)
        self.ours = create_engine(url, **pool)
        self.ours_autocommit = create_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **pool)
        MessagesBase.metadata.create_all(self.ours)
        NotificationsBase.metadata.create_all(self.ours)
        with self.ours.begin() as c:
            c.execute(text("INSERT INTO counters VALUES ('log_head', 0), ('published', 0)"))
            c.execute(text("INSERT INTO tracking VALUES ('notifications', 0), ('bare', 0)"))
            c.execute(text("CREATE TABLE theirs_view (user_id int, name varchar(128), payload_json text, "
                           "timestamp double precision, PRIMARY KEY (user_id, name))"))
        self.datastore = SQLAlchemyDatastore(url=url, **pool)
        self.app = SQLAlchemyApplicationRecorder(self.datastore, events_table_name="stored_events")
        self.app.create_table()
        self.process = SQLAlchemyProcessRecorder(self.datastore, events_table_name="process_events",
                                                 tracking_table_name="process_tracking")
        self.process.create_table()
        self.ours_tracked = 0
        self.theirs_tracked = 0
        self.view_tracked = 0

    # -- one event ------------------------------------------------------------------
    @staticmethod
    def event(number: int) -> MessageSent:
        return MessageSent(sender_id=1 + number % 1000, recipient_id=1 + (number * 7) % 1000,
                           body=f"message {number}", idempotency_key=f"1:{uuid.uuid4().hex}")

    @staticmethod
    def stored(event: MessageSent) -> StoredEvent:
        # The same bytes our log stores in ``data`` (plus the envelope it keeps in columns).
        return StoredEvent(originator_id=uuid.uuid4(), originator_version=1, topic=TOPIC,
                           state=json.dumps(event.to_dict()).encode())

    def ours_append(self, number: int) -> None:
        event = self.event(number)
        sql, params = inbox.apply_sql(event)
        with self.ours_autocommit.connect() as connection:
            log.append_in_one_statement(connection, event, sql, params)

    def ours_append_in_transaction(self, number: int) -> None:
        with Session(self.ours) as session:
            placed = log.append(session, self.event(number))
            inbox.apply(session, placed)
            session.commit()

    def theirs_append(self, number: int) -> None:
        self.app.insert_events([self.stored(self.event(number))])

    # -- (a) concurrent appends, with a reader checking order -----------------------
    def appends(self, append, reader, total: int, writers: int) -> dict:
        latencies = []
        seen_jumps = []
        stop = threading.Event()
        next_number = iter(range(total))
        lock = threading.Lock()

        def writer():
            while True:
                with lock:
                    number = next(next_number, None)
                if number is None:
                    return
                started = time.perf_counter()
                append(number)
                latencies.append(time.perf_counter() - started)

        def read_loop():
            last = reader(None)  # the head before we start
            skipped = set()
            while True:
                done = stop.is_set()
                for position in reader(last):
                    if position != last + 1:
                        seen_jumps.append((last, position))
                        skipped.update(range(last + 1, position))
                    last = position
                if done:
                    break
                time.sleep(0.001)
            self.reader_skipped = skipped

        watcher = threading.Thread(target=read_loop)
        watcher.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(writers) as pool:
            for _ in range(writers):
                pool.submit(writer)
        elapsed = time.perf_counter() - started
        stop.set()
        watcher.join()
        return {"per_s": total / elapsed, "p50_ms": 1000 * percentile(latencies, 0.5),
                "p99_ms": 1000 * percentile(latencies, 0.99), "jumps": len(seen_jumps),
                "skipped": self.reader_skipped}

    def ours_positions_after(self, last):
        with Session(self.ours) as session:
            if last is None:
                return log.head(session)
            return [p["position"] for p in log.read_payloads_after(session, last, 1000)]

    def theirs_ids_after(self, last):
        if last is None:
            return self.app.max_notification_id() or 0
        return [n.id for n in self.app.select_notifications(start=last, limit=1000, inclusive_of_start=False)]

    def theirs_existing(self, ids) -> set:
        if not ids:
            return set()
        with self.ours.connect() as c:
            return {row[0] for row in c.execute(text("SELECT id FROM stored_events WHERE id = ANY(:ids)"),
                                                {"ids": sorted(ids)})}

    # -- (b) reading the feed -----------------------------------------------------
    def preload(self, count: int) -> None:
        """``count`` events straight into both logs (like notify_bench's replay set-up)."""
        with self.ours.begin() as c:
            c.execute(text("""
                INSERT INTO event_log (position, event_id, event_type, version, occurred_at, data)
                SELECT n, gen_random_uuid()::text, 'MessageSent', 1, now(),
                       json_build_object('sender_id', 1 + n % 1000, 'recipient_id', 1 + (n * 7) % 1000,
                                         'body', 'message ' || n)::text
                FROM generate_series(1, :count) AS n"""), {"count": count})
            c.execute(text("UPDATE counters SET position = :count WHERE name = 'log_head'"), {"count": count})
            c.execute(text("""
                INSERT INTO stored_events (id, originator_id, originator_version, topic, state)
                SELECT n, gen_random_uuid(), 1, :topic, convert_to(json_build_object(
                    'event_type', 'MessageSent', 'version', 1, 'event_id', gen_random_uuid()::text,
                    'position', 0, 'occurred_at', now()::text, 'data', json_build_object(
                        'sender_id', 1 + n % 1000, 'recipient_id', 1 + (n * 7) % 1000,
                        'body', 'message ' || n))::text, 'UTF8')
                FROM generate_series(1, :count) AS n"""), {"count": count, "topic": TOPIC})
            c.execute(text("SELECT setval('stored_events_id_seq', :count)"), {"count": count})
            c.execute(text("ANALYZE"))

    def ours_read(self, count: int) -> int:
        position, read = 0, 0
        while read < count:
            with Session(self.ours) as session:  # a session per batch, like the feed RPC
                batch = log.read_payloads_after(session, position, 1000)
            read += len(batch)
            position = batch[-1]["position"]
        return read

    def theirs_read(self, count: int, decode: bool) -> int:
        start, read = 0, 0
        while read < count:
            batch = self.app.select_notifications(start=start, limit=1000, inclusive_of_start=False)
            if decode:
                [json.loads(n.state) for n in batch]
            read += len(batch)
            start = batch[-1].id
        return read

    # -- (c) tracking ---------------------------------------------------------------
    def ours_track(self, events: int, rows_changed: int) -> None:
        """Our consumer's write for one delivery of ``events`` events changing ``rows_changed`` rows."""
        keys = [(user, "unread_message_count") for user in range(1, rows_changed + 1)]
        with self.ours_autocommit.connect() as connection:
            tracked, version, current = store.read_current(connection, keys)
            rows = {key: Row(key[0], key[1], {"count": tracked}, time.time()) for key in keys}
            assert store.save_if_current(connection, rows, tracked + events, version)

    def ours_track_bare(self, events: int) -> None:
        with self.ours_autocommit.connect() as connection:
            connection.execute(text("UPDATE tracking SET position = position + :n WHERE projection = 'bare'"),
                               {"n": events})

    def theirs_process_track(self, events: int) -> None:
        """The library's process path: tracking only, no new events."""
        self.theirs_tracked += events
        self.process.insert_events([], tracking=Tracking(application_name="notifications",
                                                         notification_id=self.theirs_tracked))

    _VIEW_UPSERT = text(
        "INSERT INTO theirs_view SELECT * FROM unnest(CAST(:user_ids AS integer[]), CAST(:names AS varchar[]), "
        "CAST(:payloads AS text[]), CAST(:timestamps AS double precision[])) "
        "ON CONFLICT (user_id, name) DO UPDATE SET payload_json = excluded.payload_json, timestamp = excluded.timestamp")

    def theirs_view_track(self, events: int, rows_changed: int) -> None:
        """A materialised view as the library's Projection asks for one on SQLAlchemy:
        rows and tracking record in one of the datastore's transactions."""
        self.view_tracked += events
        with self.process.transaction(commit=True) as session:
            current = {(r.user_id, r.name): Row(r.user_id, r.name, json.loads(r.payload_json), r.timestamp)
                       for r in session.execute(text("SELECT user_id, name, payload_json, timestamp FROM theirs_view "
                                                     "WHERE user_id = ANY(:ids)"),
                                                {"ids": list(range(1, rows_changed + 1))})}
            assert current is not None
            users = list(range(1, rows_changed + 1))
            session.execute(self._VIEW_UPSERT, {  # one statement for all rows, as ours
                "user_ids": users, "names": ["unread_message_count"] * len(users),
                "payloads": [json.dumps({"count": 1})] * len(users), "timestamps": [time.time()] * len(users)})
            self.process._insert_tracking(session, Tracking(application_name="view",
                                                            notification_id=self.view_tracked))

    # -- (e) a follower's latency -------------------------------------------------
    def theirs_subscription_latency(self, events: int, rate: float) -> list[float]:
        """From ``insert_events`` returning (committed) to the library's LISTEN/NOTIFY
        subscription yielding the notification, at a steady ``rate`` per second."""
        committed: dict[int, float] = {}
        latencies: list[float] = []
        start = self.app.max_notification_id()
        with self.app.subscribe(gt=start) as subscription:
            def follow():
                for notification in subscription:
                    arrived = time.perf_counter()
                    while notification.id not in committed:  # the insert's return not yet noted
                        time.sleep(0.0001)
                    latencies.append(arrived - committed[notification.id])
                    if len(latencies) == events:
                        return
            follower = threading.Thread(target=follow)
            follower.start()
            time.sleep(0.5)
            for number in range(events):
                due = time.perf_counter() + 1 / rate
                ids = self.app.insert_events([self.stored(self.event(number))])
                committed[ids[0]] = time.perf_counter()
                time.sleep(max(0.0, due - time.perf_counter()))
            follower.join(timeout=30)
            subscription.stop()
        return latencies

    # -- (d) holes ------------------------------------------------------------------
    def holes_after_a_failed_insert(self) -> dict:
        originator = uuid.uuid4()
        first = self.app.insert_events([StoredEvent(originator, 1, TOPIC, b"{}")])[0]
        try:
            self.app.insert_events([StoredEvent(originator, 1, TOPIC, b"{}")])  # a version conflict
        except ESIntegrityError:
            pass
        after = self.app.insert_events([StoredEvent(uuid.uuid4(), 1, TOPIC, b"{}")])[0]
        duplicate = self.event(0)
        with Session(self.ours) as session:
            ours_first = log.append(session, duplicate).position
            session.commit()
        with Session(self.ours) as session:
            try:
                log.append(session, duplicate)  # the same event_id: a unique violation
                session.commit()
            except SAIntegrityError:
                session.rollback()
        with Session(self.ours) as session:
            ours_after = log.append(session, self.event(1)).position
            session.commit()
        return {"theirs": (first, after), "ours": (ours_first, ours_after)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--read-events", type=int, default=100_000)
    parser.add_argument("--track-events", type=int, default=1000)
    args = parser.parse_args()

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"spike_es_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    results: dict[str, list] = {}

    def record(label, value):
        results.setdefault(label, []).append(value)

    try:
        spike = Spike(url, args.writers)
        spike.preload(args.read_events)
        print(f"database {name}; {args.read_events} events preloaded in each log", flush=True)
        for round_number in range(1, args.rounds + 1):
            # (a) appends, alternating within the round (order flipped every round)
            sides = [("ours: one statement, autocommit", spike.ours_append, spike.ours_positions_after),
                     ("ours: append in a transaction", spike.ours_append_in_transaction, spike.ours_positions_after),
                     ("theirs: insert_events", spike.theirs_append, spike.theirs_ids_after)]
            if round_number % 2 == 0:
                sides.reverse()
            for label, append, reader in sides:
                result = spike.appends(append, reader, args.appends, args.writers)
                if label.startswith("theirs"):
                    skipped = result["skipped"]
                    later_visible = spike.theirs_existing(skipped)
                    result["holes"] = len(skipped - later_visible)
                    result["seen_out_of_order"] = len(later_visible)
                else:
                    result["holes"] = len(result["skipped"])
                    result["seen_out_of_order"] = 0
                del result["skipped"]
                record(f"append/{label}", result)
                print(f"round {round_number} (a) {label}: {result['per_s']:.0f} appends/s, "
                      f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; reader saw "
                      f"{result['jumps']} jumps, {result['seen_out_of_order']} ids out of order, "
                      f"{result['holes']} holes", flush=True)
            # (b) reads
            reads = [("ours: read_payloads_after (decoded)", lambda: spike.ours_read(args.read_events)),
                     ("theirs: select_notifications (raw bytes)", lambda: spike.theirs_read(args.read_events, False)),
                     ("theirs: select_notifications + json.loads", lambda: spike.theirs_read(args.read_events, True))]
            if round_number % 2 == 0:
                reads.reverse()
            for label, read in reads:
                started = time.perf_counter()
                count = read()
                rate = count / (time.perf_counter() - started)
                record(f"read/{label}", rate)
                print(f"round {round_number} (b) {label}: {rate:,.0f} events/s", flush=True)
            # (c) tracking: per event (a delivery of 1 event, 1 row) and per batch (1000 events, 100 rows)
            n = args.track_events
            tracks = [
                ("per event/ours: read_current + save_if_current", n, lambda: spike.ours_track(1, 1)),
                ("per event/ours: bare tracking update", n, lambda: spike.ours_track_bare(1)),
                ("per event/theirs: ProcessRecorder.insert_events([], tracking)", n,
                 lambda: spike.theirs_process_track(1)),
                ("per event/theirs: view upsert + _insert_tracking", n, lambda: spike.theirs_view_track(1, 1)),
                ("per batch of 1000/ours: read_current + save_if_current (100 rows)", n // 10,
                 lambda: spike.ours_track(1000, 100)),
                ("per batch of 1000/theirs: view upsert (100 rows) + _insert_tracking", n // 10,
                 lambda: spike.theirs_view_track(1000, 100)),
            ]
            if round_number % 2 == 0:
                tracks.reverse()
            for label, times, step in tracks:
                started = time.perf_counter()
                for _ in range(times):
                    step()
                per_s = times / (time.perf_counter() - started)
                record(f"track/{label}", per_s)
                print(f"round {round_number} (c) {label}: {per_s:,.0f}/s", flush=True)
        latencies = spike.theirs_subscription_latency(300, 100.0)
        print(f"(e) theirs: commit to subscription (LISTEN/NOTIFY) at 100 events/s: {len(latencies)} events, "
              f"p50 {1000 * percentile(latencies, 0.5):.1f} ms, p99 {1000 * percentile(latencies, 0.99):.1f} ms, "
              f"max {1000 * max(latencies):.1f} ms", flush=True)
        holes = spike.holes_after_a_failed_insert()
        print(f"(d) a failed insert between two: theirs ids {holes['theirs']}, ours positions {holes['ours']}")

        print("\nmedians over rounds")
        for label, values in results.items():
            if label.startswith("append/"):
                print(f"  {label}: {statistics.median(v['per_s'] for v in values):.0f}/s, "
                      f"p99 {statistics.median(v['p99_ms'] for v in values):.1f} ms, "
                      f"out of order {sum(v['seen_out_of_order'] for v in values)}, "
                      f"holes {sum(v['holes'] for v in values)}")
            else:
                print(f"  {label}: {statistics.median(values):,.0f}/s")
        spike.datastore.engine.dispose()
        spike.ours.dispose()
        spike.ours_autocommit.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
