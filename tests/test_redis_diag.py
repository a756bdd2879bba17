"""The read-only diagnostics against a real redis-server: exact figures on seeded platform data."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from bot.errors import CommandNotAllowed, RedisUnavailable
from bot.redisconn import RedisTarget
from bot.redisops import measure, memory
from bot.redisops.common import OTHER_PREFIXES
from bot.steps import REGISTRY, StepContext, StepOutput
from tests.conftest import RedisServer, free_port, seed_platform

STEPS = [
    "redis.ping",
    "redis.info",
    "redis.memory_report",
    "redis.slowlog",
    "redis.clients",
    "redis.latency",
    "redis.monitor_sample",
    "redis.keyspace",
]

# seed() below: seed_platform plus a big BullMQ list, an events stream, one fat session and a
# key without prefix.
PREFIX_KEYS = {"agent:": 200, "sess:": 50, "rl:": 30, "bull:": 6, "(no prefix)": 1}
TYPE_KEYS = {"string": 232, "hash": 51, "list": 2, "zset": 1, "stream": 1}
# strings: 200 x 100 bytes, rl values 0..29 (10 one-digit + 20 two-digit), "3", "on"
TYPE_ELEMENTS = {
    "string": 200 * 100 + 10 + 40 + 1 + 2,
    "hash": 49 * 2 + 102 + 2,
    "list": 3003,
    "zset": 1,
    "stream": 10,
}
TOTAL_KEYS = 287


def seed(client: redis.Redis) -> None:
    seed_platform(client)
    client.rpush("bull:email:completed", *(f"job-{i}" for i in range(3000)))
    for i in range(10):
        client.xadd("bull:email:events", {"event": "completed", "jobId": str(i)})
    client.hset("sess:7", mapping={f"cart:{i}": "item" for i in range(100)})
    client.set("config", "on")


async def run(target: RedisTarget, name: str, **params: Any) -> StepOutput:
    st = REGISTRY[name]
    assert st.run is not None
    return await st.run(StepContext(target=target), st.params(**params))


def by_prefix(out: StepOutput) -> dict[str, int]:
    return {p["prefix"]: p["keys"] for p in out.data["prefixes"]}


def sampled_by_prefix(out: StepOutput) -> dict[str, int]:
    return {p["prefix"]: p["sampled"] for p in out.data["prefixes"]}


@pytest.fixture
async def targets() -> AsyncIterator[Callable[..., RedisTarget]]:
    """Targets on extra servers (or other users), closed at the end."""
    made: list[RedisTarget] = []

    def factory(server: RedisServer, url: str | None = None) -> RedisTarget:
        t = RedisTarget(name=f"extra:{server.port}", url=url or server.url, timeout=5.0)
        made.append(t)
        return t

    yield factory
    for t in made:
        await t.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def monitors(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if "O" in c["flags"])


# ------------------------------------------------------------------------------------- registration


def test_steps_are_registered_read_only_with_docs() -> None:
    for name in STEPS:
        st = REGISTRY[name]
        assert not st.mutating
        assert st.run is not None
        assert st.description
        assert "\n" not in st.description


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("redis.monitor_sample", {"seconds": 31}),
        ("redis.monitor_sample", {"seconds": 0}),
        ("redis.memory_report", {"top": 0}),
        ("redis.memory_report", {"count": 5}),
        ("redis.memory_report", {"separator": ""}),
        ("redis.memory_report", {"topp": 3}),
        ("redis.info", {"section": "memory; FLUSHALL"}),
        ("redis.keyspace", {"sample": 0}),
        ("redis.latency", {"interval": 60}),
        ("redis.slowlog", {"n": 0}),
    ],
)
def test_bad_parameters_are_rejected(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        REGISTRY[name].params(**params)


# -------------------------------------------------------------------------------------- ping / info


async def test_ping(target: RedisTarget) -> None:
    out = await run(target, "redis.ping", count=4, threshold_ms=1000)
    assert out.status == "ok"
    assert out.summary.startswith("PONG from test:")
    assert out.data["count"] == 4
    assert len(out.data["samples_ms"]) == 4
    assert 0 < out.data["min_ms"] <= out.data["avg_ms"] <= out.data["max_ms"]
    slow = await run(target, "redis.ping", threshold_ms=0.0001)
    assert slow.status == "warning"
    assert slow.summary.startswith("slow PING: PONG from test:")
    assert slow.summary.endswith("threshold 0.0001 ms")


async def test_unreachable_redis_is_a_clear_step_error() -> None:
    t = RedisTarget(name="nowhere", url=f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    try:
        with pytest.raises(RedisUnavailable, match="cannot reach Redis nowhere"):
            await run(t, "redis.ping")
    finally:
        await t.close()


async def test_info_memory_without_limit(target: RedisTarget) -> None:
    out = await run(target, "redis.info")
    assert out.status == "ok"
    assert "no maxmemory limit" in out.summary
    assert "policy noeviction" in out.summary
    assert out.data["section"] == "memory"
    assert out.data["info"]["maxmemory"] == 0
    assert "used_memory_human:" in out.details
    assert "total_system_memory" not in out.details, "details show key fields only"
    assert "total_system_memory" in out.data["info"]


async def test_info_memory_warns_at_80_percent_of_maxmemory(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    used = int(redis_sync.info("memory")["used_memory"])
    redis_sync.config_set("maxmemory", int(used / 0.85))
    try:
        out = await run(target, "redis.info", section="memory")
    finally:
        redis_sync.config_set("maxmemory", 0)
    assert out.status == "warning"
    assert out.summary.startswith("memory high:")
    memory = out.data["figures"]["memory"]
    assert memory["ratio"] == round(out.data["info"]["used_memory"] / out.data["info"]["maxmemory"], 4)
    assert 0.8 <= memory["ratio"] < 1
    assert f"({memory['ratio'] * 100:.1f}%)" in out.summary


async def test_info_stats_hit_ratio(target: RedisTarget, redis_sync: redis.Redis) -> None:
    redis_sync.set("agent:1", "x")
    for _ in range(3):
        redis_sync.get("agent:1")
    redis_sync.get("agent:missing")
    out = await run(target, "redis.info", section="STATS")
    assert out.status == "ok"
    assert out.data["info"]["keyspace_hits"] == 3
    assert out.data["info"]["keyspace_misses"] == 1
    assert out.summary.startswith("hit ratio 75.0% (3 hits / 1 misses)")
    for _ in range(5):
        redis_sync.get("agent:missing")
    low = await run(target, "redis.info", section="stats")
    assert low.status == "warning"
    assert low.summary.startswith("low hit ratio 33.3% (3 hits / 6 misses)")


async def test_info_other_sections(target: RedisTarget, redis_sync: redis.Redis) -> None:
    seed(redis_sync)
    everything = await run(target, "redis.info", section="everything")
    assert everything.status == "ok"
    assert everything.summary.startswith("Redis ")
    assert "role master" in everything.summary
    assert everything.data["info"]["db0"]["keys"] == TOTAL_KEYS
    json.dumps(everything.data)
    persistence = await run(target, "redis.info", section="persistence")
    assert "last bgsave ok" in persistence.summary
    assert "AOF off" in persistence.summary
    keyspace = await run(target, "redis.info", section="keyspace")
    assert keyspace.summary == f"db0: {TOTAL_KEYS} keys (230 with TTL)"
    unknown = await run(target, "redis.info", section="nosuchsection")
    assert unknown.status == "warning"
    assert "nothing" in unknown.summary


# ------------------------------------------------------------------------------------ memory report


async def test_memory_report_exact_figures(target: RedisTarget, redis_sync: redis.Redis) -> None:
    seed(redis_sync)
    out = await run(target, "redis.memory_report")
    d = out.data
    assert out.status == "ok"
    assert d["scanned_keys"] == TOTAL_KEYS
    assert d["dbsize"] == TOTAL_KEYS
    assert d["complete"]
    assert not d["max_keys_reached"]
    assert d["vanished_keys"] == 0
    assert d["method"] == "script"
    assert d["unavailable"] == {}
    assert by_prefix(out) == PREFIX_KEYS
    patterns = {p["prefix"]: p["pattern"] for p in d["prefixes"]}
    assert patterns["agent:"] == "agent:*"
    assert patterns["(no prefix)"] is None

    expected_total = sum(int(redis_sync.memory_usage(k, samples=5)) for k in redis_sync.scan_iter(count=1000))
    assert d["total_bytes"] == expected_total > 0
    assert sum(p["bytes"] for p in d["prefixes"]) == expected_total
    assert sum(t["bytes"] for t in d["types"]) == expected_total
    agent_bytes = sum(int(redis_sync.memory_usage(f"agent:{i}", samples=5)) for i in range(200))
    agent = next(p for p in d["prefixes"] if p["prefix"] == "agent:")
    assert agent["bytes"] == agent_bytes
    assert agent["elements"] == 200 * 100
    assert agent["types"] == {"string": 200}
    assert 0 < d["share_of_used_memory"] < 1

    types = {t["type"]: t for t in d["types"]}
    assert {k: t["keys"] for k, t in types.items()} == TYPE_KEYS
    assert {k: t["elements"] for k, t in types.items()} == TYPE_ELEMENTS
    assert types["hash"]["biggest_by_elements"]["key"] == "sess:7"
    assert types["hash"]["biggest_by_elements"]["elements"] == 102
    assert types["list"]["biggest_by_memory"]["key"] == "bull:email:completed"
    assert types["stream"]["biggest_by_elements"] == {
        "key": "bull:email:events",
        "type": "stream",
        "bytes": int(redis_sync.memory_usage("bull:email:events", samples=5)),
        "elements": 10,
        "prefix": "bull:",
    }

    top = d["top_keys"]
    assert len(top) == 10
    assert top[0]["key"] == "bull:email:completed"
    assert top[0]["type"] == "list"
    assert top[0]["elements"] == 3000
    assert top[0]["bytes"] == redis_sync.memory_usage("bull:email:completed", samples=5)
    assert [k["bytes"] for k in top] == sorted((k["bytes"] for k in top), reverse=True)
    sizes = sorted(
        ((redis_sync.memory_usage(k, samples=5), k.decode()) for k in redis_sync.scan_iter()), reverse=True
    )
    assert [k["key"] for k in top[:3]] == [k for _, k in sizes[:3]]
    assert top[2]["key"] == "sess:7"

    assert out.summary.startswith(f"{TOTAL_KEYS} keys use ")
    assert "biggest key bull:email:completed (list, 3000 items" in out.summary
    assert "agent:*" in out.details
    assert "bull:email:completed" in out.details
    json.dumps(d)

    commandstats = redis_sync.info("commandstats")
    assert "cmdstat_keys" not in commandstats
    assert commandstats["cmdstat_scan"]["calls"] >= 1


async def test_memory_report_pipelines_give_the_same_figures(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    seed(redis_sync)
    # SAMPLES 0: exact sizes; sampled MEMORY USAGE of big hashes picks random fields each call.
    scripted = (await run(target, "redis.memory_report", samples=0)).data
    piped = (await run(target, "redis.memory_report", scripts=False, samples=0)).data
    assert piped["method"] == "pipeline"
    for field in ("scanned_keys", "total_bytes", "prefixes", "types", "top_keys"):
        assert piped[field] == scripted[field], field
    assert "cmdstat_keys" not in redis_sync.info("commandstats")


async def test_memory_report_bounds_and_grouping(target: RedisTarget, redis_sync: redis.Redis) -> None:
    seed(redis_sync)
    redis_sync.set(b"\xffblob", b"z" * 100_000)

    capped = (await run(target, "redis.memory_report", max_keys=100, count=50)).data
    assert capped["scanned_keys"] == 100
    assert capped["max_keys_reached"]
    assert not capped["complete"]
    assert sum(p["keys"] for p in capped["prefixes"]) == 100

    exact = (await run(target, "redis.memory_report", max_keys=TOTAL_KEYS + 1)).data
    assert exact["complete"]
    assert not exact["max_keys_reached"]
    assert exact["top_keys"][0]["key"] == "\\xffblob"
    assert exact["top_keys"][0]["prefix"] == "(no prefix)"

    deep = await run(target, "redis.memory_report", depth=2, top=3)
    assert by_prefix(deep) == {"agent:": 200, "sess:": 50, "rl:api:": 30, "bull:email:": 6, "(no prefix)": 2}
    assert len(deep.data["top_keys"]) == 3

    dashed = await run(target, "redis.memory_report", separator="-")
    assert by_prefix(dashed) == {"(no prefix)": TOTAL_KEYS + 1}

    lumped = (await run(target, "redis.memory_report", max_prefixes=2)).data
    assert lumped["prefixes_overflowed"]
    assert lumped["prefixes_tracked"] == 2
    keys = {p["prefix"]: p["keys"] for p in lumped["prefixes"]}
    assert keys[OTHER_PREFIXES] == TOTAL_KEYS + 1 - sum(n for p, n in keys.items() if p != OTHER_PREFIXES)
    assert sum(t["keys"] for t in lumped["types"]) == TOTAL_KEYS + 1

    full = {p["prefix"]: p for p in exact["prefixes"]}
    assert [p["prefix"] for p in exact["prefixes"]][:3] == ["(no prefix)", "bull:", "agent:"]
    short = (await run(target, "redis.memory_report", top_prefixes=2)).data
    assert short["prefixes"][:2] == exact["prefixes"][:2]
    rest = short["prefixes"][2]
    assert rest["prefix"] == "(3 smaller prefixes)"
    assert rest["pattern"] is None
    assert rest["keys"] == full["agent:"]["keys"] + full["sess:"]["keys"] + full["rl:"]["keys"] == 280
    assert sum(p["bytes"] for p in short["prefixes"]) == short["total_bytes"]


async def test_memory_report_streams_with_progress(target: RedisTarget, redis_sync: redis.Redis) -> None:
    redis_sync.execute_command("DEBUG", "POPULATE", 120_000, "cache", 10)
    messages: list[str] = []

    async def progress(message: str) -> None:
        messages.append(message)

    st = REGISTRY["redis.memory_report"]
    assert st.run is not None
    out = await st.run(StepContext(target=target, progress=progress), st.params())
    assert out.data["scanned_keys"] == 120_000
    assert by_prefix(out) == {"cache:": 120_000}
    assert len(messages) == 1
    assert messages[0].endswith("of ~120,000 keys scanned")
    assert out.data["elapsed_s"] < 5


async def test_memory_report_skips_keys_deleted_during_the_scan(
    target: RedisTarget, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelines: a key deleted between SCAN and its measurement is counted as vanished, not as 0 bytes."""
    real_scan = memory.scan_batch

    async def scan_then_delete(client: aioredis.Redis, cursor: int, count: int) -> tuple[int, list[bytes]]:
        cursor, keys = await real_scan(client, cursor, count)
        redis_sync.delete(*[k for k in keys if k.startswith(b"sess:")][:5])
        return cursor, keys

    monkeypatch.setattr(memory, "scan_batch", scan_then_delete)
    seed_platform(redis_sync)
    out = await run(target, "redis.memory_report", scripts=False)
    assert out.data["vanished_keys"] == 5
    assert out.data["scanned_keys"] == 284
    assert by_prefix(out) == {"agent:": 200, "sess:": 45, "rl:": 30, "bull:": 4}
    assert "5 keys vanished during the scan" in out.details


async def test_memory_report_script_measures_what_it_scanned(
    target: RedisTarget, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script scans and measures in one atomic step: keys deleted afterwards are still counted."""
    real_fetch = measure.ReportScript.fetch

    async def fetch_then_delete(
        self: measure.ReportScript, cursor: int
    ) -> tuple[int, list[bytes], list[Any]]:
        cursor, keys, reply = await real_fetch(self, cursor)
        sessions = [k for k in keys if k.startswith(b"sess:")][:5]
        if sessions:
            redis_sync.delete(*sessions)
        return cursor, keys, reply

    monkeypatch.setattr(measure.ReportScript, "fetch", fetch_then_delete)
    seed_platform(redis_sync)
    out = await run(target, "redis.memory_report", count=50)
    assert out.data["method"] == "script"
    assert out.data["vanished_keys"] == 0
    assert out.data["scanned_keys"] == 284
    assert by_prefix(out) == {"agent:": 200, "sess:": 50, "rl:": 30, "bull:": 4}
    assert redis_sync.dbsize() < 284


async def test_memory_report_survives_a_script_cache_flush(
    aredis: aioredis.Redis, redis_sync: redis.Redis
) -> None:
    seed(redis_sync)
    flushes = 0

    async def flush_scripts(scanned: int, dbsize: int) -> None:
        nonlocal flushes
        flushes += 1
        redis_sync.script_flush()

    r = await memory.memory_report(aredis, count=20, progress=flush_scripts, progress_every=40)
    assert flushes >= 3
    assert r.method == "script"
    assert r.unavailable == {}
    assert r.complete
    assert r.scanned_keys == TOTAL_KEYS
    assert {t.type: t.keys for t in r.types} == TYPE_KEYS


async def test_memory_report_failing_mid_scan_leaves_no_reply_behind(
    aredis: aioredis.Redis, redis_sync: redis.Redis
) -> None:
    """The next batch is requested before the current one is aggregated; an error in between must not
    leave its reply on a pooled connection for the next command to read."""
    seed(redis_sync)

    async def boom(scanned: int, dbsize: int) -> None:
        raise RuntimeError("chat is down")

    with pytest.raises(RuntimeError, match="chat is down"):
        await memory.memory_report(aredis, count=20, progress=boom, progress_every=20)
    for _ in range(5):
        assert await aredis.ping() is True
        assert await aredis.dbsize() == TOTAL_KEYS
    r = await memory.memory_report(aredis, count=20)
    assert r.scanned_keys == TOTAL_KEYS
    assert r.method == "script"


# ------------------------------------------------------------------------------------------ slowlog


async def test_slowlog_shows_a_provoked_slow_command(
    make_redis: Any, targets: Callable[..., RedisTarget]
) -> None:
    """On a server of its own: the session's server may log its other clients' commands past 10 ms
    when the machine is loaded (two test workers on two cores), and this test counts the entries."""
    redis_server = make_redis()
    target = targets(redis_server)
    slow = redis.Redis(port=redis_server.port, client_name="slow-worker")
    try:
        slow.execute_command("DEBUG", "SLEEP", "0.02")
    finally:
        slow.close()
    out = await run(target, "redis.slowlog")
    assert out.status == "warning"
    d = out.data
    assert d["length"] == 1
    assert d["over_threshold"] == 1
    assert d["log_slower_than_us"] == 10_000
    assert d["unavailable"] == {}
    (entry,) = d["entries"]
    assert entry["command"] == "DEBUG SLEEP 0.02"
    assert entry["client_name"] == "slow-worker"
    assert 20 <= entry["duration_ms"] < 1000
    assert out.summary.startswith("slowlog: 1 commands >= 10 ms (1 logged); slowest ")
    assert "DEBUG SLEEP 0.02 from 127.0.0.1:" in out.summary
    assert "(slow-worker)" in out.summary
    assert "slow-worker" in out.details

    quiet = await run(target, "redis.slowlog", threshold_ms=50)
    assert quiet.status == "ok"
    assert quiet.data["over_threshold"] == 0


async def test_slowlog_shortens_long_arguments(target: RedisTarget, redis_sync: redis.Redis) -> None:
    redis_sync.config_set("slowlog-log-slower-than", 0)
    try:
        redis_sync.set("agent:long", "v" * 500)
        redis_sync.execute_command("SADD", "tags", *(f"tag{i}" for i in range(20)))
    finally:
        redis_sync.config_set("slowlog-log-slower-than", 10_000)
    out = await run(target, "redis.slowlog", n=50)
    assert out.status == "ok"
    assert "empty" not in out.summary
    commands = [e["command"] for e in out.data["entries"]]
    set_cmd = next(c for c in commands if c.startswith("SET agent:long "))
    assert len(set_cmd) < 80
    assert "..." in set_cmd
    sadd = next(c for c in commands if c.startswith("SADD tags "))
    assert sadd.endswith("... (+14 args)")


async def test_slowlog_empty(target: RedisTarget) -> None:
    out = await run(target, "redis.slowlog")
    assert out.status == "ok"
    assert out.summary == "slowlog is empty (logs commands >= 10 ms)"


# ------------------------------------------------------------------------------------------ clients


async def test_clients_names_and_blocked_queue_workers(
    target: RedisTarget, redis_server: RedisServer
) -> None:
    api = redis.Redis(port=redis_server.port, client_name="checkout-api")
    api.ping()
    worker = aioredis.Redis(port=redis_server.port, client_name="bull-worker")
    job = asyncio.create_task(worker.brpoplpush("bull:email:wait", "bull:email:active", timeout=5))
    try:
        await wait_for(lambda: any("b" in c["flags"] for c in api.client_list()))
        out = await run(target, "redis.clients")
    finally:
        api.lpush("bull:email:wait", "job-1")
        assert await job == b"job-1"
        await worker.aclose()
        api.close()
    d = out.data
    assert out.status == "ok"
    assert d["source"] == "client list"
    assert d["unavailable"] == {}
    assert d["by_name"]["checkout-api"] == 1
    assert d["by_name"]["bull-worker"] == 1
    assert d["blocked"] == 1
    assert d["blocked_queue_workers"] == 1
    assert d["blocked_by_cmd"] == {"brpoplpush": 1}
    assert d["total"] == d["info"]["connected_clients"] >= 3
    assert d["by_host"]["127.0.0.1"] == d["total"]
    assert d["total_mem"] >= sum(c["tot_mem"] for c in d["top_memory"]) > 0
    assert "1 blocked (1 queue workers waiting, normal)" in out.summary
    assert "checkout-api" in out.details


async def test_clients_near_maxclients_warns(make_redis: Any, targets: Callable[..., RedisTarget]) -> None:
    server = make_redis("--maxclients", "5")
    extra = [server.sync_client() for _ in range(3)]
    for c in extra:
        c.ping()
    try:
        out = await run(targets(server), "redis.clients")
    finally:
        for c in extra:
            c.close()
    assert out.status == "warning"
    assert out.data["maxclients"] == 5
    assert out.data["total"] == 4
    assert out.summary.startswith("near maxclients 5:")


# ------------------------------------------------------------------------------------------ latency


async def test_latency_with_monitor_off(target: RedisTarget) -> None:
    out = await run(target, "redis.latency", interval=0.2, pings=3, threshold_ms=1000, cpu_warn_percent=1000)
    d = out.data
    assert out.status == "ok", out.summary
    assert d["events"] == []
    assert d["monitor_threshold_ms"] == 0
    assert d["ping"]["count"] == 3
    assert 0.2 <= d["cpu_interval_s"] < 1
    assert 0 <= d["cpu_percent"] < 100
    assert isinstance(d["ops_per_sec"], int)
    assert "latency monitor off" in out.summary


async def test_latency_reports_server_events(make_redis: Any, targets: Callable[..., RedisTarget]) -> None:
    server = make_redis("--latency-monitor-threshold", "5")
    client = server.sync_client()
    client.execute_command("DEBUG", "SLEEP", "0.03")
    client.close()
    out = await run(targets(server), "redis.latency", interval=0.2)
    assert out.status == "warning"
    (event,) = out.data["events"]
    assert event["event"] == "command"
    assert 30 <= event["latest_ms"] < 1000
    assert out.data["monitor_threshold_ms"] == 5
    assert out.summary.startswith(f"latency high: command event {event['latest_ms']} ms ")
    assert "command" in out.details


# ------------------------------------------------------------------------------------------ monitor


async def test_monitor_counts_concurrent_traffic(target: RedisTarget, redis_sync: redis.Redis) -> None:
    seed_platform(redis_sync)
    worker = aioredis.Redis(
        port=redis_sync.connection_pool.connection_kwargs["port"], client_name="test-worker"
    )
    await worker.ping()
    step = asyncio.create_task(run(target, "redis.monitor_sample", seconds=1.0))
    try:
        await wait_for(lambda: monitors(redis_sync) == 1)
        for i in range(30):
            await worker.set(f"agent:{i}", "fresh")
        for i in range(20):
            await worker.hgetall(f"sess:{i}")
        await worker.keys("nothing*")
        out = await step
    finally:
        await worker.aclose()
    d = out.data
    assert d["commands"] == 51
    assert not d["capped"]
    assert d["top_commands"] == {"SET": 30, "HGETALL": 20, "KEYS": 1}
    assert d["top_prefixes"] == {"agent:": 30, "sess:": 20}
    assert d["top_clients"][0]["name"] == "test-worker"
    assert d["top_clients"][0]["commands"] == 51
    assert d["dangerous"] == {"KEYS": 1}
    assert out.status == "warning"
    assert d["key_positions"] == "COMMAND"
    assert 0.9 <= d["seconds"] < 3
    assert out.summary.startswith("KEYS x1 seen live; 51 commands in 1.0 s")
    assert "busiest client test-worker 100%" in out.summary
    assert monitors(redis_sync) == 0


async def test_monitor_stops_at_max_commands(target: RedisTarget, redis_sync: redis.Redis) -> None:
    client = aioredis.Redis(port=redis_sync.connection_pool.connection_kwargs["port"])
    await client.ping()
    step = asyncio.create_task(run(target, "redis.monitor_sample", seconds=5, max_commands=10))
    try:
        await wait_for(lambda: monitors(redis_sync) == 1)
        started = time.monotonic()
        for i in range(25):
            await client.get(f"rl:api:{i}")
        out = await step
    finally:
        await client.aclose()
    assert time.monotonic() - started < 2
    assert out.data["commands"] == 10
    assert out.data["capped"]
    assert out.data["top_prefixes"] == {"rl:": 10}
    assert "(max_commands reached)" in out.summary
    await wait_for(lambda: monitors(redis_sync) == 0)


async def test_monitor_connection_closed_on_cancel_and_timeout(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    step = asyncio.create_task(run(target, "redis.monitor_sample", seconds=20))
    await wait_for(lambda: monitors(redis_sync) == 1)
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    await wait_for(lambda: monitors(redis_sync) == 0)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run(target, "redis.monitor_sample", seconds=20), timeout=0.3)
    await wait_for(lambda: monitors(redis_sync) == 0)
    assert await run(target, "redis.ping")


# ----------------------------------------------------------------------------------------- keyspace


def restore_with(client: redis.Redis, keys: list[str], *modifier: Any) -> None:
    for key in keys:
        ttl = client.pttl(key)
        client.execute_command("RESTORE", key, max(ttl, 0), client.dump(key), "REPLACE", *modifier)


async def test_keyspace_hit_ratio_and_idle_profile(target: RedisTarget, redis_sync: redis.Redis) -> None:
    seed(redis_sync)
    restore_with(redis_sync, [f"sess:{i}" for i in range(50)], "IDLETIME", 1000)
    redis_sync.config_resetstat()
    for i in range(6):
        redis_sync.get(f"agent:{i}")
    for i in range(4):
        redis_sync.get(f"nope:{i}")

    out = await run(target, "redis.keyspace")
    d = out.data
    assert out.status == "ok"
    assert (d["hits"], d["misses"], d["hit_ratio"]) == (6, 4, 0.6)
    assert d["policy"] == "noeviction"
    assert d["policy_source"] == "config"
    assert d["databases"]["db0"]["keys"] == TOTAL_KEYS
    assert d["databases"]["db0"]["expires"] == 230
    assert d["sampled"] == TOTAL_KEYS
    assert d["activity_metric"] == "idletime"
    rows = {p["prefix"]: p for p in d["prefixes"]}
    assert {k: r["sampled"] for k, r in rows.items()} == PREFIX_KEYS
    assert rows["agent:"]["with_ttl"] == 200
    assert rows["agent:"]["ttl_share"] == 1.0
    assert 3500 <= rows["agent:"]["ttl_median_s"] <= 3600
    assert rows["rl:"]["ttl_share"] == 1.0
    assert rows["sess:"]["ttl_share"] == 0.0
    assert rows["sess:"]["ttl_median_s"] is None
    assert 1000 <= rows["sess:"]["idle_median_s"] <= 1002
    assert 1000 <= rows["sess:"]["idle_p90_s"] <= 1002
    assert rows["agent:"]["idle_p90_s"] < 5
    assert out.summary == (
        "hit ratio 60.0% (6 hits / 4 misses); 0 evicted, 0 expired; policy noeviction; "
        f"80% of {TOTAL_KEYS} sampled keys have a TTL"
    )
    assert "sess:*" in out.details


async def test_keyspace_warns_on_low_hit_ratio_and_samples_a_bounded_number(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    seed(redis_sync)
    redis_sync.config_resetstat()
    redis_sync.get("agent:1")
    for i in range(3):
        redis_sync.get(f"nope:{i}")
    out = await run(target, "redis.keyspace", sample=100, count=20)
    assert out.status == "warning"
    assert out.summary.startswith("low hit ratio (< 50%): hit ratio 25.0% (1 hits / 3 misses)")
    assert out.data["sampled"] == 100
    assert sum(p["sampled"] for p in out.data["prefixes"]) == 100


async def test_keyspace_uses_object_freq_under_lfu(
    make_redis: Any, targets: Callable[..., RedisTarget]
) -> None:
    server = make_redis("--maxmemory-policy", "allkeys-lfu")
    client = server.sync_client()
    seed_platform(client)
    restore_with(client, [f"sess:{i}" for i in range(50)], "FREQ", 100)
    client.close()
    out = await run(targets(server), "redis.keyspace")
    d = out.data
    assert d["policy"] == "allkeys-lfu"
    assert d["activity_metric"] == "freq"
    rows = {p["prefix"]: p for p in d["prefixes"]}
    assert rows["sess:"]["freq_median"] == 100
    assert rows["sess:"]["idle_median_s"] is None
    assert rows["agent:"]["freq_median"] == 5
    assert "freq p50" in out.details
    assert d["unavailable"] == {}


# ------------------------------------------------------------------------------- managed-Redis limits


async def test_steps_degrade_without_config(make_redis: Any, targets: Callable[..., RedisTarget]) -> None:
    server = make_redis("--rename-command", "CONFIG", "")
    client = server.sync_client()
    seed_platform(client)
    client.execute_command("DEBUG", "SLEEP", "0.02")
    client.close()
    t = targets(server)

    keyspace = await run(t, "redis.keyspace")
    assert keyspace.data["policy"] == "noeviction"
    assert keyspace.data["policy_source"] == "info"
    assert "unknown command" in keyspace.data["unavailable"]["CONFIG GET"]
    assert keyspace.summary.endswith("(CONFIG GET not allowed)")
    assert sampled_by_prefix(keyspace) == {"agent:": 200, "sess:": 50, "rl:": 30, "bull:": 4}

    slow = await run(t, "redis.slowlog")
    assert slow.status == "warning"
    assert slow.data["entries"][0]["command"] == "DEBUG SLEEP 0.02"
    assert slow.data["log_slower_than_us"] is None
    assert "CONFIG GET" in slow.data["unavailable"]
    assert "unavailable: CONFIG GET refused" in slow.details

    latency = await run(t, "redis.latency", interval=0.1)
    assert latency.data["monitor_threshold_ms"] is None
    assert latency.data["events"] == []
    assert "CONFIG GET" in latency.data["unavailable"]


async def test_steps_degrade_for_a_least_privilege_acl_user(
    make_redis: Any, targets: Callable[..., RedisTarget]
) -> None:
    server = make_redis()
    admin = server.sync_client()
    seed_platform(admin)
    admin.execute_command(
        "ACL", "SETUSER", "diag", "on", ">s3cret", "~*", "&*", "+@all",
        "-@scripting", "-client|list", "-latency", "-config", "-slowlog",
    )  # fmt: skip
    admin.close()
    t = targets(server, f"redis://diag:s3cret@127.0.0.1:{server.port}/0")

    clients = await run(t, "redis.clients")
    assert clients.data["source"] == "info"
    assert clients.data["total"] >= 1
    assert "no permissions" in clients.data["unavailable"]["CLIENT LIST"]
    assert "CLIENT LIST not allowed: figures from INFO clients" in clients.summary

    latency = await run(t, "redis.latency", interval=0.1)
    assert latency.data["events"] is None
    assert "LATENCY LATEST" in latency.data["unavailable"]
    assert "latency events n/a" in latency.summary

    report = await run(t, "redis.memory_report")
    assert report.data["method"] == "pipeline"
    assert "script" in report.data["unavailable"]
    assert by_prefix(report) == {"agent:": 200, "sess:": 50, "rl:": 30, "bull:": 4}

    keyspace = await run(t, "redis.keyspace")
    assert keyspace.data["policy_source"] == "info"
    assert keyspace.data["sampled"] == 284

    with pytest.raises(CommandNotAllowed, match="does not allow this command"):
        await run(t, "redis.slowlog")


@pytest.mark.parametrize(
    ("misses", "evicted", "expired", "expected"),
    [
        (1000, 500, 0, "evictions: 500 keys evicted"),
        (1000, 10, 400, "expiry: 400 keys expired"),
        (1000, 0, 0, "never cached"),
        (0, 0, 0, "never cached"),
    ],
)
def test_likely_miss_cause(misses: int, evicted: int, expired: int, expected: str) -> None:
    from bot.steps.redis_memory import likely_miss_cause

    assert expected in likely_miss_cause(misses, evicted, expired, "allkeys-lru")
