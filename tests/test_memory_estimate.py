"""The sampled memory estimate on a million keys, and the eviction plan that reuses the incident's
memory report instead of scanning the keyspace a second time."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.alerts import Notification
from bot.config import load_config
from bot.engine import Engine
from bot.incidents import IncidentState, StepStatus
from bot.redisconn import RedisTarget
from bot.redisops import estimate
from bot.steps import REGISTRY, StepContext, StepOutput
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, person

MILLION = {"agent": (500_000, 200), "sess": (300_000, 50), "bull": (200_000, 20)}


async def run(target: RedisTarget, name: str, **params: Any) -> StepOutput:
    st = REGISTRY[name]
    assert st.run is not None
    return await st.run(StepContext(target=target), st.params(**params))


@pytest.fixture
def million(make_redis: Any) -> RedisServer:
    server: RedisServer = make_redis()
    r = server.sync_client()
    for prefix, (n, size) in MILLION.items():
        r.execute_command("DEBUG", "POPULATE", n, prefix, size)
    assert r.dbsize() == 1_000_000
    return server


@pytest.mark.slow  # a million keys written for it: about 8 s
async def test_estimate_on_a_million_keys_is_fast_and_within_three_points(million: RedisServer) -> None:
    target = RedisTarget(name="big", url=million.url)
    try:
        started = time.perf_counter()
        est = await run(target, "redis.memory_estimate")
        took = time.perf_counter() - started
        exact = await run(target, "redis.memory_report")
    finally:
        await target.close()
    assert took < 1.0, f"the estimate took {took:.2f} s"
    top = est.data["namespaces"][0]
    assert top["pattern"] == "agent:*" and est.data["sampled"] == 10_000
    exact_share = next(p["share"] for p in exact.data["prefixes"] if p["pattern"] == "agent:*")
    assert exact.data["prefixes"][0]["pattern"] == "agent:*"
    assert abs(top["share"] - exact_share) <= 0.03, (top, exact_share)
    assert 0 < top["margin"] <= 0.03
    assert abs(top["keys"] - 500_000) <= 30_000
    m = re.match(
        r"agent:\* (\d+)% ±([\d.]+)% of key memory, then sess:\* \d+% ±[\d.]+%, bull:\* \d+% ±[\d.]+%",
        est.summary,
    )
    assert m is not None, est.summary
    assert abs(int(m.group(1)) / 100 - exact_share) <= 0.035
    assert "(estimate from 10,000 random keys of 1,000,000, 0." in est.summary


@pytest.mark.slow  # a million keys written for it: about 8 s
async def test_a_drawn_big_key_is_counted_once_not_multiplied(million: RedisServer) -> None:
    """A sample of 10,000 of a million keys that happens to draw an 8 MiB key (about one estimate
    in a hundred does, for each such key) would count it a hundred times; it is counted once,
    named, and the shares stay within 3 points of the exact report's."""
    r = million.sync_client()
    r.set("big:blob", b"x" * (8 << 20))
    target = RedisTarget(name="big", url=million.url)
    try:
        exact = await run(target, "redis.memory_report")
        client = target.client
        pairs, _ = await estimate.sample_sizes(client, 10_000, unavailable={})
        big_bytes = int(r.memory_usage("big:blob") or 0)
        if all(k != b"big:blob" for k, _ in pairs):
            pairs[0] = (b"big:blob", big_bytes)  # as if RANDOMKEY had drawn it
        used = int(r.info("memory")["used_memory"])
    finally:
        await target.close()
    exact_share = {p["pattern"]: p["share"] for p in exact.data["prefixes"]}
    dbsize = 1_000_001

    small, big = estimate.split_big(pairs, dbsize, used)
    assert big == {b"big:blob": big_bytes}
    rows = {
        x.pattern: x
        for x in estimate.estimate_shares(small, dbsize, separator=b":", depth=1, top=10, big=big)
    }
    for pattern in ("agent:*", "sess:*", "bull:*", "big:*"):
        assert abs(rows[pattern].share - exact_share[pattern]) <= 0.03, (pattern, rows[pattern], exact_share)
    assert rows["big:*"].keys == 1 and rows["big:*"].bytes == big_bytes

    naive = {x.pattern: x for x in estimate.estimate_shares(pairs, dbsize, separator=b":", depth=1, top=10)}
    assert abs(naive["agent:*"].share - exact_share["agent:*"]) > 0.2, "the test needs a key that skews"


PLAYBOOK = """\
name: report-then-evict
match: {alertname: TestReportEvict}
steps:
  - {id: consumers, run: redis.memory_report, with: {top: 10}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*"}}
"""


def scan_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


@pytest.fixture
def bot_config(tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis) -> Any:
    def make(protected: str) -> Any:
        pb = tmp_path / "playbooks"
        pb.mkdir(exist_ok=True)
        (pb / "evict.yaml").write_text(PLAYBOOK)
        path = tmp_path / "bot.yaml"
        path.write_text(
            f"targets:\n  - match: {{job: redis}}\n    url: {redis_server.url}\n"
            f"playbooks: playbooks\nprotected_patterns: {protected}\n"
        )
        return load_config(path)

    return make


async def fire(engine: Engine) -> int:
    result = await engine.intake.receive(Notification.model_validate(alert_payload("TestReportEvict")))
    await engine.runner.drain()
    return result.new[0]


def seed(r: redis.Redis, agents: int = 20_000) -> None:
    r.execute_command("DEBUG", "POPULATE", agents, "agent", 100)
    r.execute_command("DEBUG", "POPULATE", 5_000, "sess", 50)
    r.rpush("bull:email:wait", "1", "2")


async def test_the_eviction_plan_reuses_the_incidents_memory_report(
    bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed(redis_sync)
    engine = Engine(bot_config("['sess:*']"), notifier=RecordingNotifier())
    await engine.start()
    try:
        redis_sync.config_resetstat()
        inc = await engine.store.get_incident(await fire(engine))
        assert inc.status == IncidentState.AWAITING_APPROVAL, inc.note
        # One pass over 25,002 keys at the report's COUNT 500 is ~51 SCAN calls; a second scan
        # (at the eviction's COUNT 1000 or less) would add 25 or more.
        assert scan_calls(redis_sync) <= 25_002 // 500 + 6, scan_calls(redis_sync)
        pending = inc.pending_step
        assert pending is not None
        plan = pending["plan"]
        report = next(s for s in inc.steps if s.step_id == "consumers")
        row = next(x for x in report.data["prefixes"] if x["pattern"] == "agent:*")
        assert plan["estimated_keys"] == row["keys"] == 20_000
        assert plan["estimated_bytes"] == row["bytes"]
        assert plan["details"]["counted_by"].startswith("the memory report (consumers, ")
        assert "counted again before executing" in plan["summary"]
        assert plan["sample_keys"] and all(k.startswith("agent:") for k in plan["sample_keys"])
        # The execute-time re-check scans afresh: keys added since the report make it ask again.
        redis_sync.execute_command("DEBUG", "POPULATE", 30_000, "agent", 100)
        report_calls = scan_calls(redis_sync)
        asked = await engine.runner.decide(inc.id, person("alice"), True)
        assert not asked.executed and "estimated keys grew from 20000 to 30000" in asked.message
        assert scan_calls(redis_sync) > report_calls, "the re-check scanned"
        assert redis_sync.exists("agent:0"), "nothing was deleted"
        again = await engine.store.get_incident(inc.id)
        assert again.pending_step is not None
        assert again.pending_step["plan"]["estimated_keys"] == 30_000
        assert again.pending_step["plan"]["details"]["counted_by"] == "a SCAN of the pattern", (
            "not stale again"
        )
        # Approved again with a re-plan that holds: executed.
        redis_sync.execute_command("DEBUG", "POPULATE", 30_000, "agent", 100)  # the same keys: no change
        done = await engine.runner.decide(inc.id, person("bob"), True)
        assert done.executed and done.result is not None and done.result.data["deleted"] == 30_000
        assert redis_sync.dbsize() == 5_001
    finally:
        await engine.stop()


async def test_a_protected_pattern_inside_the_prefix_makes_the_plan_scan(
    bot_config: Any, redis_sync: redis.Redis
) -> None:
    seed(redis_sync, agents=2_000)
    redis_sync.set("agent:vip:1", "keep")
    engine = Engine(bot_config("['sess:*', 'agent:vip:*']"), notifier=RecordingNotifier())
    await engine.start()
    try:
        inc = await engine.store.get_incident(await fire(engine))
        pending = inc.pending_step
        assert pending is not None
        plan = pending["plan"]
        assert plan["details"]["counted_by"] == "a SCAN of the pattern"
        assert plan["estimated_keys"] == 2_000 and plan["protected_excluded"] == 1
        steps = {s.step_id: s.status for s in inc.steps}
        assert steps["consumers"] == StepStatus.OK
    finally:
        await engine.stop()
