"""The expert diagnostics against real redis-servers: MEMORY/LATENCY DOCTOR, fragmentation and
MEMORY PURGE, keys without TTL, eviction policy per database role, fork cost, replication."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from bot.errors import ActionStopped
from bot.redisconn import RedisTarget
from bot.redisops import expert
from bot.steps import REGISTRY, StepContext, StepOutput
from tests.conftest import RedisServer, seed_platform, wait_for

PROTECTED = ("bull:*", "sess:*")


@pytest.fixture
async def targets() -> AsyncIterator[Callable[[RedisServer], RedisTarget]]:
    made: list[RedisTarget] = []

    def factory(server: RedisServer) -> RedisTarget:
        t = RedisTarget(name=f"t:{server.port}", url=server.url)
        made.append(t)
        return t

    yield factory
    for t in made:
        await t.close()


async def run(target: RedisTarget, name: str, **params: Any) -> StepOutput:
    st = REGISTRY[name]
    assert st.run is not None and not st.mutating
    return await st.run(StepContext(target=target, protected_patterns=PROTECTED), st.params(**params))


def fragment(r: redis.Redis) -> None:
    """300k keys of 300 bytes, then every other one deleted: pages stay half empty."""
    r.execute_command("DEBUG", "POPULATE", 300_000, "k", 300)
    r.eval("for i = 0, 300000, 2 do redis.call('DEL', 'k:' .. i) end return 1", 0)


async def test_memory_doctor_explains_fragmentation_and_purge_is_gated(
    make_redis: Any, targets: Callable[[RedisServer], RedisTarget]
) -> None:
    server = make_redis()
    t = targets(server)
    fresh = await run(t, "redis.memory_doctor")
    assert fresh.status == "ok", fresh.summary
    assert "fine" in fresh.summary or "fragmentation" in fresh.summary
    fragment(server.sync_client())
    out = await run(t, "redis.memory_doctor")
    f = out.data["fragmentation"]
    assert out.status == "warning", out.summary
    assert f["problem"] and f["ratio"] >= 1.5 and f["excess_bytes"] >= 32 << 20
    assert out.summary.startswith(f"fragmentation {f['ratio']:.2f}: RSS")
    assert "CONFIG SET activedefrag yes compacts it" in out.summary
    assert "High allocator fragmentation" in out.data["findings"]
    assert "MEMORY DOCTOR: " in out.summary and "I detected a few issues" in out.details

    purge = REGISTRY["redis.memory_purge"]
    assert purge.mutating and purge.plan is not None and purge.execute is not None
    ctx = StepContext(target=t)
    nothing = await purge.plan(ctx, purge.params(min_reclaim="10gb"))
    assert (
        nothing.estimated_keys == 0 and nothing.changes == [] and "nothing worth purging" in nothing.summary
    )
    plan = await purge.plan(ctx, purge.params(min_reclaim=1))
    assert [c.op for c in plan.changes] == ["memory_purge"] and "no key is touched" in plan.summary

    async def kill_switch() -> str | None:
        return "kill switch is on"

    with pytest.raises(ActionStopped):
        await purge.execute(StepContext(target=t, should_stop=kill_switch), purge.params(), plan)
    done = await purge.execute(ctx, purge.params(), plan)
    assert done.data["purged"] and done.summary.startswith("MEMORY PURGE done: RSS")
    assert server.sync_client().dbsize() == 150_000, "no key is touched"


async def test_latency_doctor_says_how_to_turn_the_monitor_on(
    make_redis: Any, targets: Callable[[RedisServer], RedisTarget]
) -> None:
    server = make_redis()
    t = targets(server)
    off = await run(t, "redis.latency_doctor")
    assert off.data["monitor_off"] and off.status == "ok"
    assert "latency-monitor-threshold 0" in off.summary
    assert "CONFIG SET latency-monitor-threshold 100" in off.summary
    r = server.sync_client()
    r.config_set("latency-monitor-threshold", 10)
    quiet = await run(t, "redis.latency_doctor")
    assert quiet.status == "ok" and quiet.summary.startswith("no latency spike over 10 ms")
    r.execute_command("DEBUG", "SLEEP", "0.05")
    spiked = await run(t, "redis.latency_doctor")
    assert spiked.status == "warning", spiked.summary
    assert spiked.data["findings"] == ["command"]
    assert spiked.summary.startswith("LATENCY DOCTOR: command (threshold 10 ms)")


async def test_keys_without_ttl_flags_cache_namespaces_not_protected_ones(
    target: RedisTarget, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync)  # agent:* and rl:* with TTLs; sess:* and bull:* without
    redis_sync.mset({f"user:{i}": "profile" for i in range(120)})
    redis_sync.set("user:0:short", "x", ex=60)
    out = await run(target, "redis.keys_without_ttl")
    assert out.status == "warning", out.summary
    flagged = [n["pattern"] for n in out.data["flagged"]]
    assert flagged == ["user:*"]
    keys = redis_sync.dbsize()
    expires = redis_sync.info("keyspace")["db0"]["expires"]
    assert out.data["databases"]["db0"] == {"keys": keys, "expires": expires, "without_ttl": keys - expires}
    assert "cache namespaces without TTL: user:* 99.2% of 121 sampled" in out.summary
    assert f"db0: {keys - expires:,} of {keys:,} keys without TTL" in out.summary
    assert "(protected sess:*, bull:* without TTL: expected)" in out.summary
    assert "growth unknown: no earlier reading (no Prometheus configured)" in out.summary
    assert out.data["growth"] == {"known": False, "reason": "no Prometheus configured"}
    redis_sync.delete(*[f"user:{i}" for i in range(120)])
    clean = await run(target, "redis.keys_without_ttl")
    assert clean.status == "ok" and "no unprotected namespace" in clean.summary


async def test_eviction_policy_advice_per_database_role(
    make_redis: Any, targets: Callable[[RedisServer], RedisTarget]
) -> None:
    server = make_redis()
    t = targets(server)
    r = server.sync_client()
    cache = server.sync_client(db=1)
    seed_platform(r)
    cache.mset({f"page:{i}": "html" for i in range(50)})

    unlimited = await run(t, "redis.eviction_policy")
    assert unlimited.status == "ok" and "never applies: no maxmemory" in unlimited.summary
    r.config_set("maxmemory", "512mb")
    shared = await run(t, "redis.eviction_policy")
    assert shared.status == "ok", shared.summary
    assert [(d["db"], d["role"]) for d in shared.data["databases"]] == [(0, "queue"), (1, "cache")]
    assert shared.summary.startswith("noeviction is right for BullMQ (db0), but the cache in db1")
    r.config_set("maxmemory-policy", "allkeys-lru")
    wrong = await run(t, "redis.eviction_policy")
    assert wrong.status == "warning"
    assert wrong.summary.startswith("BullMQ needs noeviction, but the policy is allkeys-lru")
    r.flushdb()
    r.mset({f"agent:{i}": "x" for i in range(30)})
    r.config_set("maxmemory-policy", "noeviction")
    pure = await run(t, "redis.eviction_policy")
    assert pure.status == "warning"
    assert pure.summary.startswith("a pure cache under noeviction rejects writes at maxmemory")
    r.config_set("maxmemory-policy", "volatile-lru")
    volatile = await run(t, "redis.eviction_policy")
    assert volatile.status == "warning" and "volatile-lru only evicts keys with a TTL" in volatile.summary
    r.config_set("maxmemory-policy", "allkeys-lfu")
    fits = await run(t, "redis.eviction_policy")
    assert fits.status == "ok" and fits.summary.startswith("policy allkeys-lfu fits")


async def test_fork_cost_before_a_bgsave(
    make_redis: Any, targets: Callable[[RedisServer], RedisTarget]
) -> None:
    server = make_redis()
    t = targets(server)
    before = await run(t, "redis.fork_cost")
    assert before.data["latest_fork_ms"] is None
    assert "a fork of" in before.summary and before.summary.startswith("BGSAVE cost is fine")
    r = server.sync_client()
    seed_platform(r, agents=2000)
    bgsave = REGISTRY["redis.bgsave"]
    assert bgsave.plan is not None
    plan = await bgsave.plan(StepContext(target=t), bgsave.params())
    assert "BGSAVE cost is fine" in plan.summary and "fork" in plan.details
    r.bgsave()
    await wait_for(
        lambda: r.info("persistence")["rdb_bgsave_in_progress"] == 0 and r.info("stats")["total_forks"]
    )
    after = await run(t, "redis.fork_cost")
    assert after.data["latest_fork_ms"] is not None and "last fork paused Redis" in after.summary
    # A host without room for the copy-on-write: the verdict says so and what to do.
    tight = expert.fork_cost(
        {"used_memory_rss": 8 << 30, "total_system_memory": 9 << 30, "total_forks": 1, "latest_fork_usec": 900_000,
         "rdb_last_cow_size": 2 << 30}
    )  # fmt: skip
    assert tight.problem
    assert "the fork would pause Redis ~900 ms" in tight.verdict
    assert "copy-on-write may need up to 3.0 GiB and the host has 1.0 GiB free" in tight.verdict
    assert "Snapshot from a replica" in tight.verdict


async def test_replication_lag_link_and_backlog(
    make_redis: Any, targets: Callable[[RedisServer], RedisTarget]
) -> None:
    primary = make_redis()
    replica = make_redis("--replicaof", "127.0.0.1", str(primary.port))
    p, rc = primary.sync_client(), replica.sync_client()
    await wait_for(lambda: rc.info("replication")["master_link_status"] == "up")
    await wait_for(lambda: p.info("replication").get("slave0", {}).get("state") == "online")
    on_primary = await run(targets(primary), "redis.replication")
    assert on_primary.status == "ok", on_primary.summary
    assert on_primary.summary.startswith(f"primary with 1 replica(s): 127.0.0.1:{replica.port} online")
    assert "backlog 1.0 MiB" in on_primary.summary
    on_replica = await run(targets(replica), "redis.replication")
    assert on_replica.status == "ok"
    assert on_replica.summary.startswith(f"replica of 127.0.0.1:{primary.port}, link up")
    primary.stop()
    await wait_for(lambda: rc.info("replication")["master_link_status"] == "down")
    broken = await run(targets(replica), "redis.replication")
    assert broken.status == "warning"
    assert broken.summary.startswith(
        f"replication problem: link to the primary 127.0.0.1:{primary.port} is down"
    )
    # A replica further behind than the backlog holds would need a full resync: said with the fix.
    behind = expert.replication(
        {"role": "master", "master_repl_offset": 5 << 20, "repl_backlog_size": 1 << 20, "repl_backlog_histlen": 1 << 20,
         "slave0": {"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 1 << 20, "lag": 30},
         "slave1": {"ip": "10.0.0.3", "port": 6379, "state": "wait_bgsave", "offset": 0, "lag": 0}}
    )  # fmt: skip
    assert "replica 10.0.0.3:6379 is wait_bgsave, not online" in behind.verdict
    assert "replica 10.0.0.2:6379 last acknowledged 30 s ago" in behind.verdict
    assert (
        "4.0 MiB behind, more than the 1.0 MiB backlog" in behind.verdict
        and "repl-backlog-size" in behind.verdict
    )
