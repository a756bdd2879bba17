"""The whole loop for real: redis-server -> redis_exporter -> Prometheus (the shipped rules) ->
Alertmanager -> the bot's webhook -> diagnostics -> approval -> action -> verification -> resolved.

Every process runs on a free loopback port and is stopped at the end, also when a test fails. The
rules are the ones in deploy/prometheus with ``for:`` shortened so alerts fire in seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from bot.app import STORE, create_app
from bot.config import load_config
from bot.incidents import Incident, IncidentState, StepStatus
from bot.localstack import Prometheus, RedisServer, Stack, fast_rules, free_port
from bot.store import Store
from tests.conftest import RecordingNotifier, seed_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]
RULES = (Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "redis-alerts.yml").read_text()
TOKEN = "e2e-token"


@dataclass
class Loop:
    stack: Stack
    redis: RedisServer
    prometheus: Prometheus
    store: Store
    app: web.Application
    config_path: Path
    notifier: RecordingNotifier

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, socket_timeout=5)

    async def incident(self, alertname: str, predicate: Any, timeout: float = 60.0) -> Incident:
        """Wait until an incident for ``alertname`` satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen: list[Incident] = []
        while time.monotonic() < deadline:
            seen = [i for i in await self.store.list_incidents() if i.alertname == alertname]
            for inc in seen:
                if predicate(inc):
                    return inc
            await asyncio.sleep(0.25)
        alerts = self.prometheus.alerts()
        raise AssertionError(
            f"no {alertname} incident reached the state in {timeout}s; incidents: "
            f"{[(i.id, i.status, i.alert_status) for i in seen]}; prometheus alerts: {alerts}"
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path / "stack") as s:
        yield s


@pytest.fixture
async def loop_(stack: Stack, tmp_path: Path) -> AsyncIterator[Loop]:
    rds = stack.redis(["--maxmemory-policy", "noeviction"])
    bot_port = free_port()
    am = stack.alertmanager(webhook_url=f"http://127.0.0.1:{bot_port}/alerts", bearer_token=TOKEN)
    exporter = stack.exporter(rds.redis_url)
    prom = stack.prometheus(
        scrape=[exporter.address], rules={"redis.yml": fast_rules(RULES)}, alertmanagers=[am.address]
    )
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        "targets:\n  - name: e2e-redis\n    match: {job: redis}\n"
        f"    url: {rds.redis_url}\n    maxmemory_ceiling: 256mb\n"
        "protected_patterns: ['sess:*', 'rl:*']\n"
        f"prometheus: {{url: '{prom.url}', timeout: 5s}}\n"
    )
    notifier = RecordingNotifier()
    app = create_app(load_config(cfg), notifier=notifier, webhook_token=TOKEN)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", bot_port).start()
    try:
        await asyncio.to_thread(prom.wait_for_value, "redis_up", lambda v: v == 1, 30)
        yield Loop(stack, rds, prom, app[STORE], app, cfg, notifier)
    finally:
        await runner.cleanup()


def fill_until(client: redis.Redis, ratio: float) -> None:
    """Write cache entries until used_memory / maxmemory passes ``ratio``."""
    i = 0
    while True:
        info = client.info("memory")
        if info["used_memory"] / info["maxmemory"] > ratio:
            return
        pipe = client.pipeline(transaction=False)
        for _ in range(500):
            pipe.set(f"agent:profile:{i}", "x" * 400, ex=86400)
            i += 1
        pipe.execute()


async def test_memory_high_is_diagnosed_approved_evicted_verified_and_resolved(loop_: Loop) -> None:
    r = loop_.client()
    seed_platform(r, agents=10)
    r.config_set("maxmemory", 24 * 1024 * 1024)
    fill_until(r, 0.86)
    queues_before = sorted(r.scan_iter(match="bull:*"))

    inc = await loop_.incident("RedisMemoryUsageHigh", lambda i: i.status == IncidentState.AWAITING_APPROVAL)
    by_id = {s.step_id: s for s in inc.steps}
    assert by_id["memory"].status == StepStatus.WARNING
    assert "memory high" in by_id["memory"].summary
    assert by_id["consumers"].data["prefixes"][0]["prefix"].startswith("agent")
    assert inc.pending_step is not None and inc.pending_step["type"] == "redis.evict"
    assert inc.labels["instance"] != loop_.redis.address, "the alert names the exporter, not Redis"
    assert inc.target == "e2e-redis"

    approve = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "bot",
            "approve",
            str(inc.id),
            "--config",
            str(loop_.config_path),
            "--as",
            "oncall",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert approve.returncode == 0, approve.stderr
    assert "deleted" in approve.stdout and "helped" in approve.stdout

    assert sorted(r.scan_iter(match="bull:*")) == queues_before
    assert sum(1 for _ in r.scan_iter(match="sess:*")) == 50
    assert r.info("memory")["used_memory"] / r.info("memory")["maxmemory"] < 0.8
    resolved = await loop_.incident("RedisMemoryUsageHigh", lambda i: i.status == IncidentState.RESOLVED)
    assert resolved.id == inc.id and resolved.alert_status == "resolved"
    steps = {s.step_id: s.status for s in resolved.steps}
    assert steps["check-after-evict"] == StepStatus.OK
    assert steps["raise-maxmemory"] == StepStatus.SKIPPED
    used = {k.removeprefix("cmdstat_") for k in r.info("commandstats")}
    assert not used & {"keys", "del", "flushall", "flushdb"}


async def test_redis_down_opens_an_incident_and_recovery_resolves_it(loop_: Loop) -> None:
    loop_.redis.stop()
    inc = await loop_.incident(
        "RedisDown", lambda i: i.status not in (IncidentState.NEW, IncidentState.DIAGNOSING)
    )
    ping = inc.steps[0]
    assert ping.step_id == "ping" and ping.status == StepStatus.ERROR
    assert "cannot reach Redis" in (ping.error or "")
    loop_.redis.start()
    resolved = await loop_.incident("RedisDown", lambda i: i.alert_status == "resolved" and i.id == inc.id)
    assert resolved.status == IncidentState.RESOLVED


async def test_low_hit_rate_is_diagnosed_with_its_cause(loop_: Loop) -> None:
    r = loop_.client()
    seed_platform(r, agents=200)
    stop = threading.Event()

    def traffic() -> None:
        c = redis.Redis(port=loop_.redis.port)
        n = 0
        while not stop.is_set():
            pipe = c.pipeline(transaction=False)
            for _ in range(20):
                # One lookup in five hits a cached profile; the rest ask for profiles never cached.
                pipe.get(f"agent:{n % 200}" if n % 5 == 0 else f"agent:missing:{n}")
                n += 1
            pipe.execute()
            time.sleep(0.05)
        c.close()

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        inc = await loop_.incident(
            "RedisHitRateLow",
            lambda i: any(s.step_id == "keyspace" and s.status != StepStatus.RUNNING for s in i.steps),
            timeout=90,
        )
    finally:
        stop.set()
        worker.join(5)
    keyspace = next(s for s in inc.steps if s.step_id == "keyspace")
    assert keyspace.status == StepStatus.WARNING
    assert "low hit ratio" in keyspace.summary
    assert "never cached" in keyspace.data["likely_cause"]
