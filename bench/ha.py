"""Benchmark 6: several replicas on PostgreSQL: ingest with two replicas, and the takeover time.

Ingest: ``POST /alerts`` at fixed rates (:mod:`bench.loadgen`'s generator, one generator per
replica in one process, half the rate each, as a Service spreading connections would) against
two bot replicas sharing a PostgreSQL database, with the generator and the database on the same
machine. Same-run baselines, at the same rates and in alternating order: one replica on SQLite
(the single-replica deployment as shipped) and one replica on the same PostgreSQL. PostgreSQL runs
with its production durability (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on):
200 means committed to disk, as the bot promises. After each step the store is checked: every
notification answered 200 has all its alerts stored, and re-sends were reported as duplicates.

Takeover: two real ``remediation-bot serve`` replicas and a real redis-server; an alert whose
playbook samples traffic for 30 s goes to replica A; while the step runs, A is killed with SIGKILL
(at offsets spread over the heartbeat period, as a death at a random moment would be), and the time
until the other replica's ``incident.taken_over`` record is measured, with ``runner.lease_ttl`` at
its default (15 s), 10 s and 5 s. A lease lapses at most ``lease_ttl`` after the last heartbeat
and every replica looks for lapsed leases every ``lease_ttl / 3``, so the worst case is
``4/3 * lease_ttl`` and the mean about ``lease_ttl``.

    .venv/bin/python -m bench --only ha [--runs N] [--rates 1000,2000,3000] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench.common import PY, RedisProc, Results, free_port, log, median, spawn, stop, tempdir
from bench.loadgen import ALERTS, Load, fingerprint
from bench.webhook_ingest import P99_TARGET_MS, Step, _cpu_s, check_bot_store
from bot.config import RunnerConfig
from bot.localpg import PostgresServer, missing_reason

SIDES = ("ha", "sqlite", "pg1")
"""Two replicas on PostgreSQL; the baselines: one replica on SQLite, one replica on PostgreSQL."""
REPLICAS = {"ha": 2, "sqlite": 1, "pg1": 1}
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
CONNECTIONS = 64
"""Keep-alive connections of the generator in all, split between the replicas."""


@dataclass
class HaStep(Step):
    """A step of :mod:`bench.webhook_ingest`, with the CPU split between the replicas and PostgreSQL."""

    servers_us: float = 0.0
    pg_us: float = 0.0


# -- the load generator, spread over several replicas (run as a child process) --------------------


async def _spread(args: argparse.Namespace) -> dict[str, Any]:
    ports = [int(p) for p in args.ports.split(",")]
    loads = [
        Load(
            argparse.Namespace(
                port=port,
                rate=args.rate / len(ports),
                seconds=args.seconds,
                connections=max(1, CONNECTIONS // len(ports)),
                dup_every=10,
                tag=f"{args.tag}{i}",
                timeout=10.0,
                acked="",
            )
        )
        for i, port in enumerate(ports)
    ]
    parts = [cast(dict[str, Any], p) for p in await asyncio.gather(*(load.run() for load in loads))]
    args.acked_lists = [sorted(set(load.acked)) for load in loads]
    lat = sorted(x for load in loads for x in load.latencies)

    def q(p: float) -> float:
        return round(lat[max(1, int(p * len(lat) + 0.999999)) - 1] * 1000, 3) if lat else float("nan")

    elapsed = max(float(p["elapsed_s"]) for p in parts)
    ok = sum(int(p["ok"]) for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in dict(p["errors"]).items():
            errors[k] = errors.get(k, 0) + int(v)
    return {
        "rate": args.rate,
        "sent": sum(int(p["sent"]) for p in parts),
        "ok": ok,
        "errors": errors,
        "elapsed_s": elapsed,
        "achieved_per_s": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": q(1.0),
        "dups_sent": sum(int(p["dups_sent"]) for p in parts),
        "dups_reported": sum(int(p["dups_reported"]) for p in parts),
        "acked_unique": sum(int(p["acked_unique"]) for p in parts),
        "per_replica_per_s": [p["achieved_per_s"] for p in parts],
    }


# -- ingest ---------------------------------------------------------------------------------------


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of a PostgreSQL postmaster and its live children (backends, walwriter...)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _stored_pg(url: str, tag: str) -> tuple[set[str], int]:
    import asyncpg

    async def run() -> tuple[set[str], int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT fingerprint FROM incidents WHERE fingerprint LIKE $1", tag + "%")
            received = await conn.fetchval("SELECT count(*) FROM audit WHERE kind = 'alert.received'")
        finally:
            await conn.close()
        return {r["fingerprint"] for r in rows}, int(received)

    return asyncio.run(run())


def check_pg_store(step: Step, url: str, workdir: Path, tag: str, replicas: int) -> None:
    """As :func:`bench.webhook_ingest.check_bot_store`, on PostgreSQL and per generator tag."""
    stored, received = _stored_pg(url, tag)
    expected = set()
    for i in range(replicas):
        acked = {int(x) for x in (workdir / f"acked.{i}").read_text().split()}
        expected |= {fingerprint(f"{tag}{i}", n, j) for n in acked for j in range(ALERTS)}
    missing = expected - stored
    if missing:
        step.persisted_ok = False
        step.notes.append(f"{len(missing)} acknowledged alerts missing from the store")
    load = step.load
    if load["dups_reported"] != ALERTS * load["dups_sent"]:
        step.dedupe_ok = False
        step.notes.append(f"{load['dups_sent']} re-sent notifications, {load['dups_reported']} duplicates")
    if received < ALERTS * load["ok"]:
        step.persisted_ok = False
        step.notes.append(f"{received} alert.received rows for {load['ok']} accepted notifications")


def run_step(
    workdir: Path, side: str, rate: float, seconds: float, redis_url: str, pg: PostgresServer, tag: str
) -> HaStep:
    workdir.mkdir(parents=True)
    database = ""
    if side == "sqlite":
        store_line = "state_file: state.sqlite3\n"
    else:
        database = pg.create_database(f"bench_{tag}")
        store_line = f"database_url: {database}\n"
    config = workdir / "bot.yaml"
    config.write_text(f"targets:\n  - match: {{job: redis}}\n    url: {redis_url}\n{store_line}")
    servers = []
    try:
        for i in range(REPLICAS[side]):
            port = free_port()
            server = spawn(
                [PY, "-m", "bench.servers", "bot", str(config), str(port)],
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"server{i}.log", "w"),  # noqa: SIM115 - handed to the child
                text=True,
            )
            servers.append((server, port))
        for server, _ in servers:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{side} server did not start; see {workdir}")
        pg_pid = pg.proc.pid if pg.proc is not None else 0
        cpu0 = [_cpu_s(s.pid) for s, _ in servers]
        pg0 = _tree_cpu_s(pg_pid) if side != "sqlite" else 0.0
        ports = ",".join(str(p) for _, p in servers)
        args = ["--ports", ports, "--rate", str(rate), "--seconds", str(seconds), "--tag", tag]
        gen = subprocess.run(
            [PY, "-m", "bench.ha", "load", *args, "--acked", str(workdir / "acked")],
            capture_output=True,
            text=True,
            timeout=seconds * 3 + 60,
            check=True,
        )
        load = json.loads(gen.stdout)
        cpu = sum(_cpu_s(s.pid) for s, _ in servers) - sum(cpu0)
        cpu_pg = _tree_cpu_s(pg_pid) - pg0 if side != "sqlite" else 0.0
    finally:
        for server, _ in servers:
            stop(server)
    per = 1e6 / max(1, load["ok"])
    step = HaStep(side, rate, load, (cpu + cpu_pg) * per, servers_us=cpu * per, pg_us=cpu_pg * per)
    if side == "sqlite":
        (workdir / "acked.txt").write_text((workdir / "acked.0").read_text())
        check_bot_store(step, workdir / "state.sqlite3", workdir / "acked.txt", f"{tag}0")
    else:
        check_pg_store(step, database, workdir, tag, REPLICAS[side])
    return step


def ingest(res: Results, rates: list[float], seconds: float, runs: int, pg: PostgresServer, d: Path) -> None:
    steps: list[HaStep] = []
    with RedisProc(d / "redis") as r:
        n = 0
        for run in range(runs):
            saturated: set[str] = set()
            for rate in [*rates, 0.0]:
                order = SIDES if (run + n) % 2 == 0 else tuple(reversed(SIDES))
                for side in order:
                    n += 1
                    if rate and side in saturated:
                        continue
                    step = run_step(d / f"step{n}", side, rate, seconds, r.url, pg, f"{n:04x}")
                    steps.append(step)
                    ld = step.load
                    log(
                        f"ha ingest run {run + 1}/{runs} {side} @ {rate:g}/s: {ld['achieved_per_s']:.0f}/s"
                        f" {ld.get('per_replica_per_s', '')}, p50 {ld['p50_ms']:.1f} ms, p99 {ld['p99_ms']:.1f} ms,"
                        f" max {ld['max_ms']:.1f} ms, CPU {step.cpu_us:.0f} us/notification (replicas"
                        f" {step.servers_us:.0f}, PostgreSQL {step.pg_us:.0f}), errors {ld['errors']}"
                        + (f" [{'; '.join(step.notes)}]" if step.notes else "")
                    )
                    if rate and (not step.ok_rate or ld["p99_ms"] > 1000):
                        saturated.add(side)
    res.raw["ha_ingest"] = [{**vars(s)} for s in steps]

    def at(side: str, rate: float) -> list[HaStep]:
        return [s for s in steps if s.side == side and s.rate == rate]

    def med(side: str, rate: float, key: str) -> float:
        return median([s.load[key] for s in at(side, rate)])

    def ceiling(side: str) -> float:
        best = 0.0
        for rate in rates:
            runs_ = at(side, rate)
            if not runs_:
                break
            kept = sum(s.ok_rate for s in runs_) * 2 > len(runs_)
            if kept and med(side, rate, "p99_ms") < P99_TARGET_MS:
                best = rate
        return best

    name = f"6 HA ingest: 2 replicas on PostgreSQL ({ALERTS} alerts/notification, {seconds:g} s per rate)"
    target = 3000.0 if 3000.0 in rates else max(rates)

    def line(side: str, rate: float) -> str:
        if not at(side, rate):
            return "saturated below"
        return (
            f"{med(side, rate, 'achieved_per_s'):.0f}/s, p50 {med(side, rate, 'p50_ms'):.1f} /"
            f" p99 {med(side, rate, 'p99_ms'):.1f} ms"
        )

    ha_ok = bool(at("ha", target)) and med("ha", target, "achieved_per_s") >= 0.97 * target
    ha_ok = ha_ok and med("ha", target, "p99_ms") < P99_TARGET_MS
    res.add(name, f"at {target:g}/s offered (vs 1 replica on SQLite)", line("ha", target),
            line("sqlite", target), "", f">= {target:g}/s, p99 < {P99_TARGET_MS:g} ms", ha_ok)  # fmt: skip
    low = min(rates)
    res.add(name, f"at {low:g}/s offered (vs 1 replica on SQLite)", line("ha", low), line("sqlite", low))
    res.add(name, f"at {low:g}/s offered, 1 replica on PostgreSQL", line("pg1", low), line("sqlite", low))
    ch, cs, cp = ceiling("ha"), ceiling("sqlite"), ceiling("pg1")

    def per_s(r: float) -> str:
        return f"{r:.0f}/s" if r else f"< {low:g}/s"

    res.add(name, f"highest rate tried with p99 < {P99_TARGET_MS:g} ms (vs SQLite)", per_s(ch), per_s(cs),
            f"{ch / cs:.2f}x" if cs and ch else "", f">= {target:g}/s", ch >= target)  # fmt: skip
    res.add(
        name, "same, 1 replica on PostgreSQL", per_s(cp), per_s(cs), f"{cp / cs:.2f}x" if cs and cp else ""
    )
    fh, fs, fp = (med(s, 0.0, "achieved_per_s") for s in ("ha", "sqlite", "pg1"))
    res.add(name, "ceiling: 64 connections flat out (p99), vs SQLite",
            f"{fh:.0f}/s ({med('ha', 0.0, 'p99_ms'):.0f} ms)", f"{fs:.0f}/s ({med('sqlite', 0.0, 'p99_ms'):.0f} ms)",
            f"{fh / fs:.2f}x" if fs else "")  # fmt: skip
    res.add(name, "ceiling, 1 replica on PostgreSQL", f"{fp:.0f}/s ({med('pg1', 0.0, 'p99_ms'):.0f} ms)", "")

    def cpu(side: str) -> str:
        return f"{median([s.cpu_us for s in steps if s.side == side]):.0f} us"

    res.add(name, "CPU per notification, replicas + PostgreSQL (median)", cpu("ha"), cpu("sqlite"))
    pgs = [s for s in steps if s.side != "sqlite"]
    persisted = all(s.persisted_ok for s in steps)
    deduped = all(s.dedupe_ok for s in steps)
    alerts = sum(s.load["acked_unique"] for s in pgs) * ALERTS
    res.add(name, "every accepted alert stored; re-sends collapsed", f"{'yes' if persisted else 'NO'}; "
            f"{'yes' if deduped else 'NO'}", "", "", f"{alerts:,} alerts on PostgreSQL", persisted and deduped,
            note="; ".join(n for s in steps for n in s.notes))  # fmt: skip


# -- takeover -------------------------------------------------------------------------------------

SLOW = """\
name: slow
match: {alertname: BenchSlow}
steps:
  - {id: watch, run: redis.monitor_sample, with: {seconds: 30}, timeout: 1m}
  - {id: ping, run: redis.ping}
"""


def _post(port: int, fp: str) -> list[int]:
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "bot",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "BenchSlow", "job": "redis", "instance": "bench"},
                "annotations": {},
                "startsAt": "2026-11-25T19:39:47.888Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": fp,
            }
        ],
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # our own loopback replica
        return list(json.loads(resp.read())["new_incidents"])


async def _takeover_once(
    workdir: Path, config: Path, url: str, ttl: float, offset: float, pre: float, k: int
) -> float:
    """One kill: ``pre`` seconds after the replicas are up the alert goes to A (where B's sweeps
    fall relative to A's lease), ``offset`` seconds into the step A is killed (where the death falls
    relative to A's heartbeats). Returns the seconds from the kill to B's takeover."""
    from bot.demo_ha import Replica
    from bot.incidents import StepStatus
    from bot.store import open_store

    replicas = [Replica(workdir, f"replica{k}{x}", config) for x in "ab"]
    store = await open_store(url)
    try:
        await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
        a, b = replicas
        await asyncio.sleep(pre)
        (inc_id,) = await asyncio.to_thread(_post, a.port, f"takeover{k:04d}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            inc = await store.get_incident(inc_id)
            if any(s.step_id == "watch" and s.status == StepStatus.RUNNING for s in inc.steps):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the slow step never started")
        await asyncio.sleep(offset)
        a.kill()
        killed = time.monotonic()
        while time.monotonic() < killed + 4 * ttl + 30:
            taken = [e for e in await store.list_audit(incident_id=inc_id) if e.kind == "incident.taken_over"]
            if taken:
                if taken[0].actor != b.owner:
                    raise RuntimeError(f"taken over by {taken[0].actor}, not by the other replica")
                return time.monotonic() - killed
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no takeover within {4 * ttl + 30:.0f} s")
    finally:
        for r in replicas:
            r.stop()
        await store.close()


def takeover(res: Results, runs: int, pg: PostgresServer, d: Path) -> None:
    default = RunnerConfig().lease_ttl
    with RedisProc(d / "redis-takeover") as r:
        books = d / "playbooks"
        books.mkdir()
        (books / "slow.yaml").write_text(SLOW)
        for ttl in dict.fromkeys([default, 10.0, 5.0]):
            times = []
            for k in range(runs):
                # A database per kill: the last run's incident, still open, would absorb the alert.
                url = pg.create_database(f"takeover_{int(ttl)}_{k}")
                config = d / f"takeover-{int(ttl)}-{k}.yaml"
                config.write_text(
                    f"targets:\n  - match: {{job: redis}}\n    url: {r.url}\nplaybooks: {books}\n"
                    f"database_url: {url}\nrunner: {{lease_ttl: {ttl:g}s}}\n"
                )
                # Deaths spread over the heartbeat period, and over the survivor's sweep period
                # (a fixed harness would always meet the sweeps at the same phase).
                offset = (k + 0.5) / runs * ttl / 3
                pre = ((k + 0.5) / runs + 0.5) % 1.0 * ttl / 3
                work = d / f"takeover-{int(ttl)}"
                took = asyncio.run(_takeover_once(work, config, url, ttl, offset, pre, k))
                log(
                    f"takeover lease_ttl {ttl:g}s, alert {pre:.1f} s after start, killed {offset:.1f} s"
                    f" into the step: taken over after {took:.1f} s"
                )
                times.append(took)
            res.raw.setdefault("ha_takeover", {})[f"{ttl:g}"] = times
            label = "default" if ttl == default else "set in the config"
            res.add(
                "6 HA takeover: replica killed (SIGKILL) mid-diagnosis",
                f"death to takeover, lease_ttl {ttl:g} s ({label}): median (min-max), {runs} kills",
                f"{median(times):.1f} s ({min(times):.1f}-{max(times):.1f})",
                "",
                "",
                f"< 15 s (worst case 4/3 x lease_ttl = {4 * ttl / 3:.0f} s)",
                max(times) < 15,
            )


def bench(res: Results, rates: list[float], seconds: float, runs: int) -> None:
    reason = missing_reason()
    if reason:
        res.add("6 HA (PostgreSQL)", "skipped", reason)
        return
    with tempdir("ha") as d:
        pg = PostgresServer(settings={**DURABLE, "max_connections": "300"})
        try:
            pg.start()
            # Below the other benchmarks' first step too: where two replicas on PostgreSQL keep up.
            ingest(res, sorted({500.0, *rates}), seconds, runs, pg, d)
            takeover(res, runs, pg, d)
        finally:
            pg.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ha")
    sub = p.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("load", help="the load generator spread over several replicas (prints JSON)")
    gen.add_argument("--ports", required=True)
    gen.add_argument("--rate", type=float, required=True)
    gen.add_argument("--seconds", type=float, required=True)
    gen.add_argument("--tag", required=True)
    gen.add_argument("--acked", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(_spread(args))
    for i, acked in enumerate(args.acked_lists):
        Path(f"{args.acked}.{i}").write_text("\n".join(str(n) for n in acked))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
