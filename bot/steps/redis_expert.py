"""The diagnostics an expert runs next, each read-only and cheap, each with a summary that says what
the figures mean and what to do: MEMORY DOCTOR with fragmentation, LATENCY DOCTOR, the eviction
policy per database role, the cost of a fork, and replication (keys without TTL are in
:mod:`bot.steps.redis_ttl`). On a Redis Cluster each runs on every primary and names the nodes that
have something to say (:mod:`bot.steps.pernode`).

See :mod:`bot.steps.redis_info` for how steps wrap :mod:`bot.redisops`.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import Field

from bot.config import ByteSize
from bot.formatting import human_bytes, join_blocks, table, unavailable_details, unavailable_note
from bot.redisops import expert, roles
from bot.redisops.common import to_jsonable
from bot.steps.pernode import per_primary_step
from bot.steps.registry import StepContext, StepOutput, StepParams, step

# ----------------------------------------------------------------------------------- memory doctor


class MemoryDoctorParams(StepParams):
    ratio_warn: float = Field(1.5, gt=1.0, le=100.0, description="fragmentation ratio worth acting on")
    min_bytes: ByteSize = Field(32 << 20, description="below this much excess, fragmentation is noise")


@step("redis.memory_doctor", params=MemoryDoctorParams, timeout=15.0)
async def memory_doctor(ctx: StepContext, p: MemoryDoctorParams) -> StepOutput:
    """Redis's own MEMORY DOCTOR, and fragmentation explained: how much RSS no key holds, and the fix.

    Splits RSS above used memory into allocator fragmentation (``activedefrag``), free pages kept
    after a peak (``MEMORY PURGE``, see ``redis.memory_purge``) and process overhead; RSS below used
    memory means swapping.
    """
    return await per_primary_step(ctx, lambda c: _memory_doctor(c, p), "MEMORY DOCTOR and fragmentation")


async def _memory_doctor(client: aioredis.Redis, p: MemoryDoctorParams) -> StepOutput:
    unavailable: dict[str, str] = {}
    info = await client.info("memory")
    doc = await expert.doctor(client, "MEMORY")
    defrag = await expert.config_value(client, "activedefrag", unavailable)
    unavailable |= doc.unavailable
    f = expert.fragmentation(info, defrag, ratio_warn=p.ratio_warn, min_bytes=p.min_bytes)
    said = f"MEMORY DOCTOR: {', '.join(doc.findings)}" if doc.findings else ""
    if doc.text is not None and not doc.findings:
        said = "MEMORY DOCTOR finds no issue" if "can't find any memory issue" in doc.text else ""
    summary = f.verdict + (": " + "; ".join(f.advice) if f.problem and f.advice else "")
    if said:
        summary += f". {said}"
    return StepOutput(
        summary=summary + unavailable_note(unavailable),
        data={"fragmentation": to_jsonable(f), "doctor": doc.text, "findings": doc.findings},
        status="warning" if f.problem or doc.findings else "ok",
        details=join_blocks(doc.text or "", unavailable_details(unavailable)),
    )


# ---------------------------------------------------------------------------------- latency doctor


class LatencyDoctorParams(StepParams):
    pass


ENABLE_LATENCY_MONITOR = (
    "latency monitor is off (latency-monitor-threshold 0), so Redis recorded no latency events:"
    " turn it on with CONFIG SET latency-monitor-threshold 100 (records every event over 100 ms,"
    " costs nothing measurable), then read LATENCY DOCTOR after the next spike"
)


@step("redis.latency_doctor", params=LatencyDoctorParams, timeout=15.0)
async def latency_doctor(ctx: StepContext, p: LatencyDoctorParams) -> StepOutput:
    """Redis's own LATENCY DOCTOR: which events (fork, expire cycles, slow commands, AOF fsync) spiked.

    Says when nothing could be recorded because ``latency-monitor-threshold`` is 0, and how to turn
    it on.
    """
    return await per_primary_step(ctx, _latency_doctor, "LATENCY DOCTOR")


async def _latency_doctor(client: aioredis.Redis) -> StepOutput:
    unavailable: dict[str, str] = {}
    threshold = await expert.config_value(client, "latency-monitor-threshold", unavailable)
    doc = await expert.doctor(client, "LATENCY")
    unavailable |= doc.unavailable
    off = threshold == "0" or (doc.text is not None and "monitoring is disabled" in doc.text)
    if off:
        summary, status = ENABLE_LATENCY_MONITOR, "ok"
    elif doc.text is None:
        summary, status = "LATENCY DOCTOR is not available here", "ok"
    elif doc.findings:
        summary = (
            f"LATENCY DOCTOR: {'; '.join(doc.findings)} (threshold {threshold} ms); the details say what"
            " to change for each"
        )
        status = "warning"
    else:
        summary, status = f"no latency spike over {threshold or '?'} ms recorded since the start", "ok"
    return StepOutput(
        summary=summary + unavailable_note(unavailable),
        data={"threshold_ms": threshold, "monitor_off": off, "doctor": doc.text, "findings": doc.findings},
        status=status,
        details=join_blocks(doc.text or "", unavailable_details(unavailable)),
    )


# ---------------------------------------------------------------------------------- eviction policy


class EvictionPolicyParams(StepParams):
    sample: int = Field(500, ge=1, le=100_000, description="keys sampled per database")


@step("redis.eviction_policy", params=EvictionPolicyParams, timeout=60.0)
async def eviction_policy(ctx: StepContext, p: EvictionPolicyParams) -> StepOutput:
    """Whether maxmemory-policy fits what each database holds: BullMQ queues need noeviction, a pure
    cache wants allkeys-lru/lfu, volatile-* evicts only keys with a TTL."""
    protected = list(ctx.protected_patterns)
    return await per_primary_step(ctx, lambda c: _eviction_policy(c, p, protected), "eviction policy")


async def _eviction_policy(
    client: aioredis.Redis, p: EvictionPolicyParams, protected: list[str]
) -> StepOutput:
    keyspace = await client.info("keyspace")
    mem = await client.info("memory")
    found = await roles.database_roles(client, keyspace, protected, sample=p.sample)
    policy = str(mem["maxmemory_policy"]) if "maxmemory_policy" in mem else None
    maxmemory = int(mem.get("maxmemory", 0) or 0)
    verdict, problem = roles.policy_advice(policy, maxmemory, found)
    return StepOutput(
        summary=verdict,
        data={"policy": policy, "maxmemory": maxmemory, "databases": [to_jsonable(r) for r in found]},
        status="warning" if problem else "ok",
        details=table(
            ["db", "keys", "with TTL", "sampled", "role"],
            [[f"db{r.db}", r.keys, r.expires, r.sampled, r.role] for r in found],
        ),
    )


# --------------------------------------------------------------------------------------- fork cost


class ForkCostParams(StepParams):
    pause_warn_ms: float = Field(500.0, gt=0, le=60_000)


@step("redis.fork_cost", params=ForkCostParams, timeout=15.0)
async def fork_cost(ctx: StepContext, p: ForkCostParams) -> StepOutput:
    """What a BGSAVE would cost before anyone runs one: the fork's pause and the copy-on-write memory.

    From ``latest_fork_usec`` (or ~20 ms per GiB of RSS), the last save's copy-on-write size, and
    the host's free memory; warns when the pause or the copy would hurt.
    """
    return await per_primary_step(ctx, lambda c: _fork_cost(c, p), "fork cost")


async def _fork_cost(client: aioredis.Redis, p: ForkCostParams) -> StepOutput:
    info = await client.info("everything")
    f = expert.fork_cost(info, pause_warn_ms=p.pause_warn_ms)
    return StepOutput(summary=f.verdict, data=to_jsonable(f), status="warning" if f.problem else "ok")


# ------------------------------------------------------------------------------------- replication


class ReplicationParams(StepParams):
    lag_warn_s: int = Field(10, ge=1, le=3600)


@step("redis.replication", params=ReplicationParams, timeout=15.0)
async def replication(ctx: StepContext, p: ReplicationParams) -> StepOutput:
    """Replication health: each replica's state, lag in seconds and bytes, and the backlog; on a
    replica, the link to its primary."""
    return await per_primary_step(ctx, lambda c: _replication(c, p), "replication")


async def _replication(client: aioredis.Redis, p: ReplicationParams) -> StepOutput:
    info = await client.info("replication")
    r = expert.replication(info, lag_warn_s=p.lag_warn_s)
    rows = [[x.addr, x.state, x.lag_s, human_bytes(x.behind_bytes)] for x in r.replicas]
    return StepOutput(
        summary=r.verdict,
        data=to_jsonable(r),
        status="warning" if r.problems else "ok",
        details=table(["replica", "state", "lag s", "behind"], rows) if rows else "",
    )
