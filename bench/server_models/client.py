"""SSE load client: raw asyncio sockets (asyncio.Protocol on uvloop), HTTP/1.1 GET, chunked decoding, SSE parsing.

Phases (stream mode): open N streams (concurrency-limited), RSS before/after, CPU over an idle window
(keepalives only), a few plain page requests, fan-out window (server pushes ~20/s to users with 5 streams;
latency = receive time.time() - the server's time.time() in the data), then close some client sockets and
watch the server hub size (summed from the per-worker stats files) to see when the streams are freed.

Cap mode: open streams one by one and report which ones get a response (thread cap of gthread).
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import psutil

import spike_ctl as ctl


class Conn(asyncio.Protocol):
    def __init__(self, c, idx, user):
        self.c, self.idx, self.user = c, idx, user
        self.buf = b""
        self.body = b""
        self.hdr = False
        self.chunked = False
        self.opened = asyncio.get_running_loop().create_future()
        self.tr = None
        self.closed_by_us = False
        self.open_t = None

    def connection_made(self, tr):
        self.tr = tr
        tr.write(b"GET %s?user=%d HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
                 % (self.c.path.encode(), self.user))

    def data_received(self, data):
        now = time.time()
        self.buf += data
        if not self.hdr:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].lower()
            if not head.startswith(b"http/1.1 200"):
                self.c.bad_status += 1
                self.tr.close()
                return
            self.chunked = b"transfer-encoding: chunked" in head
            self.buf = self.buf[i + 4:]
            self.hdr = True
        if self.chunked:
            while True:
                j = self.buf.find(b"\r\n")
                if j < 0:
                    break
                size = int(self.buf[:j].split(b";")[0], 16)
                if size == 0:
                    self.buf = b""
                    break
                if len(self.buf) < j + 2 + size + 2:
                    break
                self.body += self.buf[j + 2:j + 2 + size]
                self.buf = self.buf[j + 4 + size:]
        else:
            self.body += self.buf
            self.buf = b""
        while True:
            j = self.body.find(b"\n\n")
            if j < 0:
                break
            ev, self.body = self.body[:j], self.body[j + 2:]
            self.c.on_event(self, ev, now)

    def connection_lost(self, exc):
        if not self.closed_by_us:
            self.c.lost_conns += 1
        if not self.opened.done():
            self.opened.set_result(False)


class Client:
    def __init__(self, args):
        self.a = args
        self.path = args.path
        self.conns = []
        self.bad_status = 0
        self.lost_conns = 0
        self.connect_errors = 0
        self.keepalives = 0
        self.events = []  # (k, idx, latency)
        self.dup = 0
        self.seen = set()

    def on_event(self, conn, ev, now):
        for line in ev.split(b"\n"):
            if line.startswith(b"retry:"):
                conn.open_t = now
                if not conn.opened.done():
                    conn.opened.set_result(True)
            elif line.startswith(b":"):
                self.keepalives += 1
            elif line.startswith(b"data:"):
                d = json.loads(line[5:])
                key = (d["k"], conn.idx)
                if key in self.seen:
                    self.dup += 1
                self.seen.add(key)
                self.events.append((d["k"], conn.idx, now - d["t"], d["t"] - d["s"]))

    # ---- server process metrics -------------------------------------------------------------
    def tree(self):
        p = psutil.Process(self.a.pid)
        return [p] + p.children(recursive=True)

    def rss_kib(self):
        return sum(p.memory_info().rss for p in self.tree()) // 1024

    def cpu_s(self):
        return sum(sum(p.cpu_times()[:2]) for p in self.tree())

    def hub_size(self):
        pids = {p.pid for p in self.tree()}
        total = 0
        d = os.path.join(ctl.CTL_DIR, "stats")
        for name in os.listdir(d):
            if name.isdigit() and int(name) in pids:
                try:
                    with open(os.path.join(d, name)) as f:
                        total += int(f.read() or 0)
                except (OSError, ValueError):
                    pass
        return total

    async def open_one(self, idx, user, sem, timeout):
        loop = asyncio.get_running_loop()
        async with sem:
            conn = Conn(self, idx, user)
            try:
                await loop.create_connection(lambda: conn, "127.0.0.1", self.a.port)
            except OSError:
                self.connect_errors += 1
                return None
            self.conns.append(conn)
            try:
                await asyncio.wait_for(asyncio.shield(conn.opened), timeout)
            except asyncio.TimeoutError:
                pass
            return conn

    async def page_latency(self, n=20):
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            r, w = await asyncio.open_connection("127.0.0.1", self.a.port)
            w.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % self.a.page_path.encode())
            await r.read()
            lat.append(time.perf_counter() - t0)
            w.close()
            await asyncio.sleep(0.05)
        return statistics.median(lat) * 1000, max(lat) * 1000

    async def run_streams(self):
        a = self.a
        res = {"label": a.label, "streams_target": a.streams}
        try:
            os.unlink(os.path.join(ctl.CTL_DIR, "window"))
        except FileNotFoundError:
            pass
        await asyncio.sleep(1)
        res["rss_before_kib"] = self.rss_kib()
        cpu0 = self.cpu_s()
        me = psutil.Process()
        mycpu0 = sum(me.cpu_times()[:2])
        sem = asyncio.Semaphore(a.open_concurrency)
        t0 = time.time()
        tasks = [asyncio.create_task(self.open_one(i, i // a.per_user, sem, a.open_timeout))
                 for i in range(a.streams)]
        await asyncio.gather(*tasks)
        opened = [c for c in self.conns if c.open_t]
        res["opened"] = len(opened)
        res["open_s"] = round(max(c.open_t for c in opened) - t0, 2) if opened else None
        res["connect_errors"] = self.connect_errors
        res["open_cpu_s"] = round(self.cpu_s() - cpu0, 2)
        print("opened %d/%d in %ss (connect errors %d)" % (len(opened), a.streams, res["open_s"],
                                                           self.connect_errors), flush=True)
        await asyncio.sleep(3)
        res["rss_after_kib"] = self.rss_kib()
        res["kib_per_stream"] = round((res["rss_after_kib"] - res["rss_before_kib"]) / max(1, len(opened)), 2)
        res["hub_after_open"] = self.hub_size()
        # ---- idle window
        ka0 = self.keepalives
        c0 = self.cpu_s()
        await asyncio.sleep(a.idle)
        res["idle_cpu_s"] = round(self.cpu_s() - c0, 2)
        res["idle_s"] = a.idle
        res["idle_keepalives"] = self.keepalives - ka0
        res["page_ms_p50"], res["page_ms_max"] = [round(x, 1) for x in await self.page_latency()]
        # ---- fan-out window
        k0 = int(time.time() * ctl.TICKS_PER_S) + ctl.TICKS_PER_S
        k1 = k0 + a.fanout * ctl.TICKS_PER_S
        with open(os.path.join(ctl.CTL_DIR, "window.tmp"), "w") as f:
            f.write("%d %d" % (k0, k1))
        os.replace(os.path.join(ctl.CTL_DIR, "window.tmp"), os.path.join(ctl.CTL_DIR, "window"))
        c0 = self.cpu_s()
        await asyncio.sleep(k1 / ctl.TICKS_PER_S - time.time() + 3)
        res["fanout_cpu_s"] = round(self.cpu_s() - c0, 2)
        alive = {c.idx for c in self.conns if c.open_t}
        expected = set()
        for k in range(k0, k1):
            u = ctl.user_for_tick(k)
            for j in range(a.per_user):
                idx = u * a.per_user + j
                if idx in alive:
                    expected.add((k, idx))
        got = [e for e in self.events if k0 <= e[0] < k1]
        lats = sorted(e[2] * 1000 for e in got)
        res["pushes"] = k1 - k0
        res["expected_deliveries"] = len(expected)
        res["delivered"] = len({(e[0], e[1]) for e in got})
        res["lost"] = len(expected - {(e[0], e[1]) for e in got})
        res["dup"] = self.dup
        if lats:
            res["lat_ms_p50"] = round(lats[len(lats) // 2], 1)
            res["lat_ms_p99"] = round(lats[min(len(lats) - 1, int(len(lats) * 0.99))], 1)
            res["lat_ms_max"] = round(lats[-1], 1)
            res["pusher_late_ms_max"] = round(max(e[3] for e in got) * 1000, 1)
        # ---- closed client sockets
        victims = [c for c in self.conns if c.open_t and c.user >= a.streams // a.per_user - a.close_users]
        base = self.hub_size()
        tc = time.time()
        for c in victims:
            c.closed_by_us = True
            c.tr.close()
        first = None
        done = None
        while time.time() - tc < a.close_wait:
            await asyncio.sleep(0.1)
            h = self.hub_size()
            if first is None and h < base:
                first = time.time() - tc
            if h <= base - len(victims):
                done = time.time() - tc
                break
        res["closed"] = len(victims)
        res["hub_before_close"] = base
        res["hub_after_close_wait"] = self.hub_size()
        res["free_first_s"] = round(first, 2) if first is not None else None
        res["free_all_s"] = round(done, 2) if done is not None else None
        res["server_closed_conns"] = self.lost_conns
        res["bad_status"] = self.bad_status
        res["client_cpu_s"] = round(sum(me.cpu_times()[:2]) - mycpu0, 1)
        for c in self.conns:
            c.closed_by_us = True
            if c.tr:
                c.tr.close()
        return res

    async def run_cap(self):
        a = self.a
        res = {"label": a.label, "mode": "cap"}
        sem = asyncio.Semaphore(1)
        got = []
        for i in range(a.streams):
            c = await self.open_one(i, i, sem, 2.0)
            got.append(bool(c and c.open_t))
        res["answered"] = sum(got)
        res["first_unanswered"] = got.index(False) + 1 if False in got else None
        res["hub"] = self.hub_size()
        # close the first stream; when does the waiting one get its response?
        waiting = [c for c in self.conns if not c.open_t]
        tc = time.time()
        self.conns[0].closed_by_us = True
        self.conns[0].tr.close()
        if waiting:
            try:
                await asyncio.wait_for(asyncio.shield(waiting[0].opened), a.close_wait)
                res["waiting_answered_after_close_s"] = round(time.time() - tc, 2)
            except asyncio.TimeoutError:
                res["waiting_answered_after_close_s"] = None
        for c in self.conns:
            c.closed_by_us = True
            c.tr.close()
        return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--label", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="server root pid (master)")
    p.add_argument("--path", default="/stream")
    p.add_argument("--page-path", default="/page")
    p.add_argument("--mode", choices=["streams", "cap"], default="streams")
    p.add_argument("--streams", type=int, default=10000)
    p.add_argument("--per-user", type=int, default=5)
    p.add_argument("--open-concurrency", type=int, default=200)
    p.add_argument("--open-timeout", type=float, default=60)
    p.add_argument("--idle", type=int, default=60)
    p.add_argument("--fanout", type=int, default=30)
    p.add_argument("--close-users", type=int, default=10)
    p.add_argument("--close-wait", type=float, default=40)
    p.add_argument("--out", default="results.jsonl")
    a = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    c = Client(a)
    res = asyncio.run(c.run_cap() if a.mode == "cap" else c.run_streams())
    print(json.dumps(res), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    sys.exit(main())
