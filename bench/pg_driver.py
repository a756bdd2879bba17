"""psycopg 3 (with psycopg_pool) vs asyncpg on ingest-like transactions, side by side.

    .venv/bin/python -m bench.pg_driver [--seconds 3] [--concurrency 32] [--pool 8] [--alerts 2]

Each "notification" is what the store's ingest does: one transaction with a multi-row
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` into an incidents-shaped
table (half the alerts are repeats, as Alertmanager re-sends) and one ``unnest`` INSERT of the audit
records. ``--concurrency`` callers share a pool of ``--pool`` connections on one event loop, against
a throwaway PostgreSQL on loopback (fsync off: the drivers' cost is what is compared). Each driver
runs twice, alternately, on a fresh table; the better run counts. Prints both rates, p50/p99 and
the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

from bot.localpg import PostgresServer, missing_reason

SCHEMA = """
DROP TABLE IF EXISTS incidents, audit;
CREATE TABLE incidents (
    id BIGSERIAL PRIMARY KEY, fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, alertname TEXT NOT NULL,
    state TEXT NOT NULL, labels JSONB NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (fingerprint, starts_at));
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, incident_id BIGINT,
    detail JSONB NOT NULL);
"""

INSERT = (
    "INSERT INTO incidents (fingerprint, starts_at, alertname, state, labels, created_at)"
    " SELECT f, s, a, 'new', l, {now} FROM unnest({p1}::text[], {p2}::text[], {p3}::text[], {p4}::jsonb[])"
    " AS t(f, s, a, l) ON CONFLICT (fingerprint, starts_at) DO NOTHING RETURNING id, fingerprint, starts_at"
)
AUDIT = (
    "INSERT INTO audit (ts, kind, incident_id, detail)"
    " SELECT {now}, 'alert.received', i, d FROM unnest({p1}::bigint[], {p2}::jsonb[]) AS t(i, d)"
)
ASYNCPG_INSERT = INSERT.format(now="$5", p1="$1", p2="$2", p3="$3", p4="$4")
ASYNCPG_AUDIT = AUDIT.format(now="$3", p1="$1", p2="$2")
PSYCOPG_INSERT = INSERT.format(now="%s", p1="%s", p2="%s", p3="%s", p4="%s").replace(
    "SELECT f, s, a, 'new', l, %s FROM unnest(%s", "SELECT f, s, a, 'new', l, %s::float8 FROM unnest(%s"
)
PSYCOPG_AUDIT = AUDIT.format(now="%s::float8", p1="%s", p2="%s")

_counter = itertools.count()


def notification(alerts: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """``alerts`` alerts, every other one a repeat of the previous notification's."""
    n = next(_counter)
    fps = [f"fp{n - (i % 2)}-{i}" for i in range(alerts)]
    labels = [
        json.dumps({"alertname": "RedisMemoryHigh", "instance": f"10.0.0.{i}:6379"}) for i in range(alerts)
    ]
    return fps, ["2026-11-25T19:39:47Z"] * alerts, ["RedisMemoryHigh"] * alerts, labels


async def drive(call: Callable[[], Awaitable[None]], seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"rate": len(latencies) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


async def run_asyncpg(url: str, args: argparse.Namespace) -> dict[str, float]:
    pool = await asyncpg.create_pool(url, min_size=args.pool, max_size=args.pool, command_timeout=10)
    await pool.execute(SCHEMA)

    async def call() -> None:
        fps, starts, names, labels = notification(args.alerts)
        async with pool.acquire(timeout=5) as conn, conn.transaction():
            rows = await conn.fetch(ASYNCPG_INSERT, fps, starts, names, labels, time.time())
            ids = [r["id"] for r in rows] + [None] * (len(fps) - len(rows))
            await conn.execute(ASYNCPG_AUDIT, ids, [json.dumps({"fingerprint": f}) for f in fps], time.time())

    try:
        return await drive(call, args.seconds, args.concurrency)
    finally:
        await pool.close()


async def run_psycopg(url: str, args: argparse.Namespace) -> dict[str, float]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(SCHEMA)
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=args.pool, max_size=args.pool, timeout=5, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)

    async def call() -> None:
        fps, starts, names, labels = notification(args.alerts)
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(PSYCOPG_INSERT, (time.time(), fps, starts, names, labels))
            rows = await cur.fetchall()
            ids = [r[0] for r in rows] + [None] * (len(fps) - len(rows))
            await conn.execute(
                PSYCOPG_AUDIT, (time.time(), ids, [json.dumps({"fingerprint": f}) for f in fps])
            )

    try:
        return await drive(call, args.seconds, args.concurrency)
    finally:
        await pool.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = PostgresServer().start()
    try:
        url = server.create_database("bench")
        best: dict[str, dict[str, float]] = {}
        runners = {"asyncpg": run_asyncpg, "psycopg": run_psycopg}
        for _ in range(2):
            for name, runner in runners.items():
                r = await runner(url, args)
                print(
                    f"  {name:8s} {r['rate']:8.0f} notifications/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
                )
                if name not in best or r["rate"] > best[name]["rate"]:
                    best[name] = r
        return best
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pg_driver", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--alerts", type=int, default=2, help="alerts per notification")
    args = p.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    best = asyncio.run(main_async(args))
    a, p_ = best["asyncpg"], best["psycopg"]
    print(
        f"asyncpg {a['rate']:.0f}/s (p99 {a['p99_ms']:.1f} ms), psycopg {p_['rate']:.0f}/s (p99 {p_['p99_ms']:.1f} ms):"
        f" asyncpg/psycopg = {a['rate'] / p_['rate']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
