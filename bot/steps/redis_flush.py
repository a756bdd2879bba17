"""The runbook's last resort, FLUSHDB ASYNC, behind two approvers; on a cluster, of every primary.

Split from :mod:`bot.steps.redis_actions`. A plan for a Redis Cluster lists one snapshot and one
flush per primary, so the approvers see every node it empties, and execution refuses when the
primaries are not the ones approved (a failover or a new shard since).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import Field

from bot.durations import Duration
from bot.errors import PlanRefused, StepError
from bot.eviction import bgsave_and_wait, find_protected, stop_point
from bot.redisconn import redis_errors
from bot.steps.redis_actions import planned
from bot.steps.registry import Change, Plan, StepContext, StepOutput, StepParams, action


class FlushParams(StepParams):
    snapshot_first: bool = Field(default=True, description="BGSAVE and wait for it before flushing")
    snapshot_timeout: Duration = 120.0


async def _flush_guards(ctx: StepContext) -> dict[str, Any]:
    """Every primary really is one and holds no protected key; the keys and memory they hold."""
    keys = used = 0
    async with redis_errors(ctx.target.name):
        cluster = await ctx.target.is_cluster()
        primaries = await ctx.target.primaries()
        for addr, client in primaries:
            where = f"{ctx.target.name} ({addr})" if cluster else ctx.target.name
            repl = await client.info("replication")
            if repl.get("role") != "master":
                raise PlanRefused(f"{where} is a replica (role {repl.get('role')}): never flush a replica")
            protected = await find_protected(client, list(ctx.protected_patterns), limit=20)
            if protected:
                raise PlanRefused(
                    f"refused: protected keys exist in db {ctx.target.db} of {where} (e.g."
                    f" {', '.join(protected[:5])}); FLUSHDB would delete queues/sessions. Evict the cache"
                    " namespace instead."
                )
            keys += int(await client.dbsize())
            used += int((await client.info("memory")).get("used_memory", 0))
    return {"keys": keys, "used_memory": used, "cluster": cluster, "nodes": sorted(a for a, _ in primaries)}


async def plan_flushdb(ctx: StepContext, p: FlushParams) -> Plan:
    g = await _flush_guards(ctx)
    snap = "after a fresh BGSAVE snapshot, " if p.snapshot_first else ""
    nodes: list[str] = g["nodes"] if g["cluster"] else [""]
    where = f" on every primary ({len(nodes)}: {', '.join(nodes)})" if g["cluster"] else ""
    return Plan(
        action="redis.flushdb",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"{snap}FLUSHDB ASYNC{where}: delete ALL {g['keys']:,} keys of db {ctx.target.db} (last resort)",
        estimated_keys=g["keys"],
        estimated_bytes=g["used_memory"],
        protected_excluded=0,
        approvers_required=2,
        changes=[
            *([Change(op="bgsave", name=n) for n in nodes] if p.snapshot_first else []),
            *(Change(op="flushdb", name=n) for n in nodes),
        ],
        params={"snapshot_first": p.snapshot_first},
    )


def _approved_nodes(plan: Plan) -> tuple[list[str], bool]:
    """The primaries the plan flushes, and whether it snapshots them first; refuses any other shape."""
    changes = planned(plan, {"bgsave", "flushdb"})
    saves = [c.name for c in changes if c.op == "bgsave"]
    flushes = [c.name for c in changes if c.op == "flushdb"]
    shape = [c.op for c in changes] == ["bgsave"] * len(saves) + ["flushdb"] * len(flushes)
    if not flushes or not shape or saves not in ([], flushes):
        raise StepError(
            f"not executed: the plan's changes {[c.op for c in changes]} are not [bgsave...,] flushdb..."
        )
    return flushes, bool(saves)


async def _guards_hold(ctx: StepContext, nodes: list[str]) -> None:
    g = await _flush_guards(ctx)
    if g["cluster"] and g["nodes"] != sorted(nodes):
        raise StepError(
            f"not executed: the cluster's primaries are {', '.join(g['nodes'])} now, not the approved"
            f" {', '.join(nodes)}; plan again"
        )


@action("redis.flushdb", params=FlushParams, plan=plan_flushdb, timeout=600.0)
async def run_flushdb(ctx: StepContext, p: FlushParams, plan: Plan) -> StepOutput:
    """The runbook's last resort: FLUSHDB ASYNC of the target's database (every primary of a cluster), with two approvers.

    Refused on a replica and while any protected key (BullMQ queues, sessions) exists in the db on
    any node. Whether a snapshot is taken first is what the plan lists, not what the step says now.
    """
    nodes, snapshot = _approved_nodes(plan)
    await _guards_hold(ctx, nodes)  # re-check: a queue may have appeared since the plan was approved
    saved = None
    if snapshot:
        await stop_point(ctx.should_stop, {"deleted": 0})
        async with redis_errors(ctx.target.name):
            try:
                stamps = await asyncio.gather(
                    *(bgsave_and_wait(c, timeout=p.snapshot_timeout) for _, c in await ctx.target.primaries())
                )
            except (TimeoutError, RuntimeError) as exc:
                raise StepError(f"no fresh snapshot, so no flush: {exc}") from exc
        saved = min(stamps)
    # Again, right before flushing: a queue may have appeared, or a failover happened, while the
    # snapshot was being written; and the kill switch may have been turned on.
    await _guards_hold(ctx, nodes)
    await stop_point(ctx.should_stop, {"deleted": 0, "snapshot_lastsave": saved or 0})
    size = 0
    async with redis_errors(ctx.target.name):
        for _, client in await ctx.target.primaries():
            size += int(await client.dbsize())
            await client.flushdb(asynchronous=True)
    where = f" on {len(nodes)} primaries" if nodes != [""] else ""
    return StepOutput(
        summary=f"FLUSHDB ASYNC done: {size:,} keys removed from db {ctx.target.db}{where}"
        + (f" (snapshot at {time.strftime('%H:%M:%S', time.gmtime(saved))}Z)" if saved else ""),
        data={"deleted": size, "snapshot_lastsave": saved, "nodes": [n for n in nodes if n]},
    )
