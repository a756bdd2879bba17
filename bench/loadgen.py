"""Open-loop load generator: Alertmanager notifications at a fixed rate over keep-alive connections.

    python -m bench.loadgen --port P --rate R --seconds S [--connections C] [--dup-share F]
                            [--tag HEX] [--acked FILE]

Each notification carries ``ALERTS`` alerts with new fingerprints (``TAG`` + a hash of the sequence
number), as Alertmanager 0.25 sends them. Every ``1/dup-share``-th request re-sends a notification already
answered 200, which the server must collapse. Requests are scheduled at fixed times; latency is
measured from the scheduled time, so a server that falls behind is charged for the queueing it
causes (no coordinated omission). ``--rate 0`` sends as fast as the connections allow (closed loop).

Plain asyncio streams and pre-formatted HTTP/1.1 requests keep the generator's own cost low (it
shares the machine with the server). Prints one JSON object; the sequence numbers of accepted
original notifications go to ``--acked`` for the persistence check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections import Counter

ALERTS = 5

_ALERT = (
    '{{"status":"firing","labels":{{"alertname":"BenchIngest","instance":"10.0.{a}.{b}:9121",'
    '"job":"redis","severity":"warning","shard":"{n}-{j}"}},"annotations":{{"summary":'
    '"Redis memory above 80% of maxmemory","runbook":"Redis is Out of Memory (OOM)"}},'
    '"startsAt":"2026-11-25T19:39:47.888Z","endsAt":"0001-01-01T00:00:00Z",'
    '"generatorURL":"http://prometheus:9090/graph?g0.expr=redis_memory_used_bytes&g0.tab=1",'
    '"fingerprint":"{fp}"}}'
)
_HEAD = (
    '{{"receiver":"bot","status":"firing","alerts":[{alerts}],'
    '"groupLabels":{{"alertname":"BenchIngest"}},"commonLabels":{{"alertname":"BenchIngest",'
    '"job":"redis","severity":"warning"}},"commonAnnotations":{{}},"externalURL":"http://alertmanager:9093",'
    '"version":"4","groupKey":"{{}}:{{alertname=\\"BenchIngest\\"}}","truncatedAlerts":0}}'
)


def fingerprint(tag: str, n: int, j: int) -> str:
    """16 hex digits like Alertmanager's (a hash: stored in random order), prefixed by the run's tag."""
    return tag + hashlib.blake2b(f"{n}/{j}".encode(), digest_size=8).hexdigest()[len(tag) :]


def notification(tag: str, n: int) -> bytes:
    alerts = ",".join(
        _ALERT.format(a=n % 250, b=j, n=n, j=j, fp=fingerprint(tag, n, j)) for j in range(ALERTS)
    )
    return _HEAD.format(alerts=alerts).encode()


def request(port: int, body: bytes) -> bytes:
    return (
        f"POST /alerts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"User-Agent: Alertmanager/0.25.0\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.latencies: list[float] = []
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.acked: list[int] = []
        self.dups_sent = 0
        self.dups_reported = 0
        self.sent = 0
        self.late = 0.0  # how far behind schedule the generator itself fell (its own saturation)

    async def connection(self, queue: asyncio.Queue[tuple[int, float] | None]) -> None:
        a = self.args
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        try:
            while True:
                job = await queue.get()
                if job is None:
                    return
                seq, due = job
                dup = a.dup_every > 0 and seq % a.dup_every == a.dup_every - 1 and bool(self.acked)
                n = self.acked[len(self.acked) // 2] if dup else seq
                self.late = max(self.late, time.perf_counter() - due)
                writer.write(request(a.port, notification(a.tag, n)))
                self.sent += 1
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), a.timeout)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    body = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    self.errors[type(exc).__name__] += 1
                    return
                self.latencies.append(time.perf_counter() - due)
                status = int(head[9:12])
                self.status[status] += 1
                if status == 200:
                    if dup:
                        self.dups_sent += 1
                        with contextlib.suppress(ValueError):
                            self.dups_reported += int(json.loads(body).get("duplicates", 0))
                    else:
                        self.acked.append(n)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def run(self) -> dict[str, object]:
        a = self.args
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        workers = [asyncio.create_task(self.connection(queue)) for _ in range(a.connections)]
        start = time.perf_counter()
        end = start + a.seconds
        seq = 0
        if a.rate > 0:
            interval = 1 / a.rate
            total = int(a.rate * a.seconds)
            while seq < total:
                now = time.perf_counter()
                while seq < total and start + seq * interval <= now:
                    queue.put_nowait((seq, start + seq * interval))
                    seq += 1
                await asyncio.sleep(max(0.0, min(0.001, start + seq * interval - time.perf_counter())))
        else:  # closed loop: keep every connection busy until the time is up
            while time.perf_counter() < end:
                while queue.qsize() < a.connections:
                    queue.put_nowait((seq, time.perf_counter()))
                    seq += 1
                await asyncio.sleep(0.0005)
        offered_s = time.perf_counter() - start
        for _ in workers:
            queue.put_nowait(None)
        # Let the queue drain (bounded): what is still queued after the grace time counts as not sent.
        _done, pending = await asyncio.wait(workers, timeout=a.seconds + a.timeout)
        for t in pending:
            t.cancel()
        elapsed = time.perf_counter() - start
        lat = sorted(self.latencies)

        def q(p: float) -> float:
            return round(lat[max(1, math.ceil(p * len(lat))) - 1] * 1000, 3) if lat else math.nan

        ok = self.status.get(200, 0)
        return {
            "rate": a.rate,
            "connections": a.connections,
            "scheduled": seq,
            "sent": self.sent,
            "ok": ok,
            "status": dict(self.status),
            "errors": dict(self.errors),
            "elapsed_s": round(elapsed, 3),
            "offered_s": round(offered_s, 3),
            "achieved_per_s": round(ok / elapsed, 1),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "max_ms": q(1.0),
            "dups_sent": self.dups_sent,
            "dups_reported": self.dups_reported,
            "acked_unique": len(set(self.acked)),
            "generator_late_ms": round(self.late * 1000, 1),
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--dup-share", type=float, default=0.1)
    p.add_argument("--tag", default="b0")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--acked", default="")
    args = p.parse_args()
    args.dup_every = round(1 / args.dup_share) if args.dup_share > 0 else 0
    load = Load(args)
    result = asyncio.run(load.run())
    if args.acked:
        with open(args.acked, "w") as f:
            f.write("\n".join(str(n) for n in sorted(set(load.acked))))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
