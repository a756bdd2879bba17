"""Benchmark 4: from POST /alerts to the first chat message, and to full diagnostics.

The real app (``create_app``) serves on a loopback port in this process, with a notifier that
timestamps what the runner tells it. Each trial posts a new RedisMemoryUsageHigh alert for the
instance holding the benchmark data set and waits until the playbook stops at its first approval
gate (``evict-agent-cache``). Measured from just before the POST: the answer, the first message
(``incident_opened``), the last read-only step finished (info, keyspace, the memory report,
Prometheus steps skipped for want of a Prometheus), and the approval request with its eviction
plan. Trials run one after another so each has the bot to itself; each trial's alert is resolved
before the next is posted, or the next would join its open incident (one incident per playbook and
target) instead of opening one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import RedisProc, Results, fmt_ms, fmt_s, free_port, log, median, tempdir
from bench.dataset import build
from bot.app import create_app
from bot.config import load_config
from bot.incidents import Approval, Incident, StepRun
from bot.notifier import NullNotifier


class Stopwatch(NullNotifier):
    """Records when the runner first says something about each incident, and what follows."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, float]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.closed: dict[str, asyncio.Event] = {}
        self.steps: dict[str, list[tuple[str, str, float]]] = {}

    def _key(self, incident: Incident) -> str:
        return incident.fingerprint

    def _mark(self, incident: Incident, what: str) -> None:
        self.events.setdefault(self._key(incident), {}).setdefault(what, time.perf_counter())

    async def incident_opened(self, incident: Incident) -> None:
        self._mark(incident, "opened")

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        self._mark(incident, "first_step")
        self.events.setdefault(self._key(incident), {})["last_step"] = time.perf_counter()
        self.steps.setdefault(self._key(incident), []).append(
            (run.step_id, str(run.status), time.perf_counter())
        )

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        self._mark(incident, "approval")
        self.done.setdefault(self._key(incident), asyncio.Event()).set()

    async def incident_updated(self, incident: Incident) -> None:
        if incident.status == "resolved":
            self.closed.setdefault(self._key(incident), asyncio.Event()).set()
        if incident.status in ("diagnosed", "failed", "verified", "resolved"):
            self._mark(incident, "ended")
            self.done.setdefault(self._key(incident), asyncio.Event()).set()


def payload(fingerprint: str, status: str = "firing") -> dict[str, Any]:
    labels = {"alertname": "RedisMemoryUsageHigh", "instance": "127.0.0.1:9121", "job": "redis"}
    return {
        "version": "4",
        "status": status,
        "receiver": "bot",
        "groupKey": '{}:{alertname="RedisMemoryUsageHigh"}',
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "Redis memory above 80% of maxmemory"},
                "startsAt": "2026-11-25T19:39:47.888Z",
                "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-25T20:39:47.888Z",
                "fingerprint": fingerprint,
            }
        ],
    }


async def trials(workdir: Path, redis_url: str, n: int) -> list[dict[str, float]]:
    (workdir / "bot.yaml").write_text(
        f"targets:\n  - match: {{job: redis}}\n    url: {redis_url}\nstate_file: state.sqlite3\n"
    )
    watch = Stopwatch()
    app = create_app(load_config(workdir / "bot.yaml"), notifier=watch, webhook_token="")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    out: list[dict[str, float]] = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                fp = f"firstmsg{i:08d}"
                watch.done[fp] = asyncio.Event()
                t0 = time.perf_counter()
                async with http.post(f"http://127.0.0.1:{port}/alerts", json=payload(fp)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"POST /alerts answered {resp.status}")
                answered = time.perf_counter()
                await asyncio.wait_for(watch.done[fp].wait(), 300)
                ev = watch.events[fp]
                row = {"answer": answered - t0} | {k: v - t0 for k, v in ev.items()}
                out.append(row)
                steps = ", ".join(f"{s}:{st}@{t - t0:.2f}s" for s, st, t in watch.steps.get(fp, []))
                log(
                    f"first message trial {i + 1}/{n}: answer {row['answer'] * 1000:.1f} ms, first message"
                    f" {row.get('opened', float('nan')) * 1000:.1f} ms, approval request"
                    f" {row.get('approval', float('nan')):.2f} s ({steps})"
                )
                watch.closed.setdefault(fp, asyncio.Event())
                async with http.post(f"http://127.0.0.1:{port}/alerts", json=payload(fp, "resolved")) as resp:
                    await resp.read()
                await asyncio.wait_for(watch.closed[fp].wait(), 60)
    finally:
        await runner.cleanup()
    return out


def bench(res: Results, keys: int, runs: int) -> None:
    with tempdir("firstmsg") as d, RedisProc(d / "redis") as r:
        log(f"first message: building {keys:,} keys")
        build(r.client, keys)
        rows = asyncio.run(trials(d, r.url, runs))
    res.raw["first_message"] = rows
    name = f"4 alert to message (memory-high, {keys / 1e6:g}M keys)"
    first = median([x["opened"] for x in rows])
    res.add(name, "POST answered (median)", fmt_ms(median([x["answer"] * 1000 for x in rows])))
    res.add(
        name, "first message: incident opened (median)", fmt_ms(first * 1000), "", "", "< 100 ms", first < 0.1
    )
    diag = median([x["last_step"] for x in rows])
    res.add(
        name,
        "full diagnostics: last read-only step (median)",
        fmt_s(diag),
        "",
        "",
        "< 5 s",
        diag < 5,
    )
    if all("approval" in x for x in rows):
        res.add(
            name, "approval request with eviction plan (median)", fmt_s(median([x["approval"] for x in rows]))
        )
