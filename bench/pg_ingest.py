"""The store's own ingest rate: PostgreSQL (pool, group commit; and one transaction per
notification, as before group commit) vs SQLite (group commit), same process, same notifications.

    .venv/bin/python -m bench.pg_ingest [--seconds 3] [--concurrency 1,8,32] [--alerts 2] [--pool 10]
        [--groups 1,2,4]

``--groups``: PostgreSQL ingest transactions in flight at once (``ingest_groups``), one line each;
the line ``postgres one-per-tx`` is the same store with groups of one notification and the pool's
size in flight.

``--concurrency`` callers each ingest notifications back to back (no HTTP: the store alone): half the
alerts are new, half repeat the caller's previous notification (Alertmanager re-sends), each alert on
a target of its own (no storm joining). Prints notifications/s, p50 and p99 per backend and level.
PostgreSQL runs on loopback with fsync off, SQLite with its usual settings, so the figures compare
the stores' designs (round trips, commits), not the disks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bot.alerts import Alert
from bot.localpg import PostgresServer, missing_reason
from bot.store import IngestItem, SQLiteStore, Store
from bot.store.postgres import PostgresStore

_BASE = {
    "status": "firing",
    "labels": {"alertname": "RedisMemoryHigh", "job": "redis", "instance": "10.0.0.7:9121"},
    "annotations": {"summary": "Redis memory above 90%"},
    "startsAt": "2026-11-25T19:39:47.888Z",
    "endsAt": "0001-01-01T00:00:00Z",
}


def notification(caller: int, n: int, alerts: int) -> list[IngestItem]:
    items = []
    for i in range(alerts):
        seq = n - (i % 2)  # every other alert repeats the previous notification's
        fp = f"c{caller}-{seq}-{i}"
        alert = Alert.model_validate({**_BASE, "fingerprint": fp})
        items.append(IngestItem(alert, "redis-memory-high", f"t-{fp}", 0))
    return items


async def drive(store: Store, seconds: float, concurrency: int, alerts: int) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(c: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            items = notification(c, n, alerts)
            t0 = time.perf_counter()
            await store.ingest(items)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "n": float(len(latencies)),
    }


async def main_async(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    groups = [int(x) for x in args.groups.split(",")]
    server = PostgresServer().start()
    try:
        for level in levels:
            variants = [("one-per-tx", args.pool, 1)] + [(f"groups={g}", g, 64) for g in groups]
            for label, in_flight, size in variants:
                name = f"bench_{level}_{label.replace('=', '').replace('-', '')}"
                pg = await PostgresStore(
                    server.create_database(name),
                    pool_max=args.pool,
                    ingest_groups=in_flight,
                    ingest_max_group=size,
                ).open()
                try:
                    r = await drive(pg, args.seconds, level, args.alerts)
                    tx = pg.ingest_transactions
                finally:
                    await pg.close()
                print(f"postgres {label:10s} concurrency {level:3d}: {r['rate']:7.0f} notifications/s"
                      f"  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
                      f"  ({r['n'] / max(tx, 1):.1f} per transaction)")  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                lite = await SQLiteStore(Path(tmp) / "s.sqlite3").open()
                try:
                    r = await drive(lite, args.seconds, level, args.alerts)
                finally:
                    await lite.close()
            print(f"sqlite              concurrency {level:3d}: {r['rate']:7.0f} notifications/s"
                  f"  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms")  # fmt: skip
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pg_ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--alerts", type=int, default=2, help="alerts per notification")
    p.add_argument("--pool", type=int, default=10, help="PostgreSQL pool size")
    p.add_argument("--groups", default="1,2,4", help="PostgreSQL ingest transactions in flight")
    args = p.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
