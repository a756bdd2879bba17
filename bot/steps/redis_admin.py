"""Gated actions on the server rather than the data: disconnecting a runaway client, and giving
free allocator pages back to the OS.

A client that never reads its replies (a forgotten ``MONITOR``, a stuck subscriber) makes Redis hold
every reply for it in an output buffer, which counts in used_memory like data. Disconnecting it
frees that memory at once and loses no data, but it is still a change on a production server:
like every action here it has a plan (the exact client, by its ID), an approval bound to that plan,
and an execute half that re-checks the client is the one approved before it acts. On a Redis
Cluster the client is looked for on every primary, and the plan names its node: the kill happens
there, not on the node in the URL.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace

import redis.asyncio as aioredis
from pydantic import Field, model_validator

from bot.config import ByteSize
from bot.errors import CommandNotAllowed, PlanRefused, StepError
from bot.eviction import stop_point
from bot.formatting import human_bytes
from bot.redisconn import redis_errors
from bot.redisops.clients import ClientEntry, find_clients
from bot.redisops.common import call
from bot.steps.pernode import on_primaries
from bot.steps.redis_actions import planned
from bot.steps.registry import Change, Plan, StepContext, StepOutput, StepParams, action

# ------------------------------------------------------------------------------------- client kill


class ClientKillParams(StepParams):
    id: int | None = Field(default=None, ge=1, description="the client's ID (CLIENT LIST id=)")
    addr: str | None = Field(
        default=None,
        pattern=r"^\S+:\d{1,5}$",
        description="the client's address, ip:port (CLIENT LIST addr=)",
    )
    buffers_over: ByteSize | None = Field(
        default=None,
        description="the client holding the biggest buffers (omem + qbuf), when they are over this; for playbooks",
    )

    @model_validator(mode="after")
    def _one(self) -> ClientKillParams:
        if sum(v is not None for v in (self.id, self.addr, self.buffers_over)) != 1:
            raise ValueError("give exactly one of `id`, `addr` or `buffers_over`")
        return self


def _selector(p: ClientKillParams) -> str:
    if p.id is not None:
        return f"with id {p.id}"
    if p.addr is not None:
        return f"at {p.addr}"
    return f"holding over {human_bytes(p.buffers_over)} of buffers"


async def _listed(client: aioredis.Redis) -> tuple[list[ClientEntry], int]:
    """One node's connections and the bot's own connection ID there."""
    return await find_clients(client), int(await call(client, "CLIENT", "ID"))


def _not_allowed(ctx: StepContext, exc: CommandNotAllowed) -> PlanRefused:
    return PlanRefused(
        f"CLIENT is not allowed on {ctx.target.name} (managed Redis, or an ACL without it): disconnect"
        f" the client from the provider's console or restart the application holding it. ({exc})"
    )


async def _clients(ctx: StepContext) -> tuple[list[ClientEntry], dict[str, int], dict[str, str]]:
    """Every connection (of every primary of a cluster, each naming its node), the bot's own
    connection ID per node (key ``""`` on a single node), and the nodes that could not be read."""
    try:
        runs = await on_primaries(ctx.target, _listed)
    except CommandNotAllowed as exc:
        raise _not_allowed(ctx, exc) from exc
    if not runs.cluster:
        entries, own = runs.results[0][1]
        return entries, {"": own}, {}
    found = [replace(e, node=addr) for addr, (entries, _) in runs.results for e in entries]
    return found, {addr: own for addr, (_, own) in runs.results}, runs.errors


def _pick(entries: list[ClientEntry], p: ClientKillParams) -> ClientEntry | None:
    if p.id is not None or p.addr is not None:
        found = [c for c in entries if (c.id == p.id if p.id is not None else c.addr == p.addr)]
        if len(found) > 1:  # client IDs are per node: the same ID may be on two primaries
            nodes = ", ".join(c.node for c in found)
            raise PlanRefused(
                f"a client {_selector(p)} is connected to several primaries ({nodes}): give its addr"
            )
        return found[0] if found else None
    return max(entries, key=lambda c: (c.buffers, c.id), default=None)


def refuse_reason(c: ClientEntry, own: int) -> str | None:
    """Why a client must not be disconnected by this action, if it must not."""
    if c.id == own:
        return f"client {c.id} is the bot's own connection"
    if c.replication_link:
        return (
            f"client {c.describe()} is a replication link (flags {c.flags}): disconnecting it forces a"
            " full resynchronisation, it is not a runaway client"
        )
    return None


def _on(node: str) -> str:
    return f" on node {node}" if node else ""


async def plan_client_kill(ctx: StepContext, p: ClientKillParams) -> Plan:
    """The one client to disconnect, named by ID (and on a cluster by its primary) and shown with
    what it holds; nothing to do (a plan of zero) when ``buffers_over`` finds no client that big."""
    entries, own, unread = await _clients(ctx)
    others = [c for c in entries if c.id != own[c.node]] if p.buffers_over is not None else entries
    c = _pick(others, p)
    if p.buffers_over is not None and (c is None or c.buffers <= p.buffers_over):
        biggest = f" (the biggest holds {human_bytes(c.buffers)}: {c.describe()}{_on(c.node)})" if c else ""
        return Plan(
            action="redis.client_kill",
            target=ctx.target.name,
            db=ctx.target.db,
            summary=f"no client holds over {human_bytes(p.buffers_over)} of buffers{biggest}",
            estimated_keys=0,
            details={"not_read": unread} if unread else {},
        )
    if c is None:
        raise PlanRefused(f"no client {_selector(p)} is connected to {ctx.target.name}")
    if reason := refuse_reason(c, own[c.node]):
        raise PlanRefused(f"refused: {reason}")
    return Plan(
        action="redis.client_kill",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"CLIENT KILL ID {c.id}{_on(c.node)}: disconnect {c.describe()}, which holds"
        f" {human_bytes(c.omem)} output and {human_bytes(c.qbuf)} query buffer",
        changes=[Change(op="client_kill", name=str(c.id), before=c.addr, node=c.node or None)],
        # The client as seen when planned: shown to the approver, not compared by the re-check (a
        # MONITOR's buffer grows by the second; its ID, address and node are what must not change).
        details={"client": asdict(c)},
    )


async def _node(ctx: StepContext, node: str | None) -> aioredis.Redis:
    """Where the approved client is: the target's client, or the named primary of the cluster, only
    while it is still one of the cluster's primaries (never an address taken from elsewhere)."""
    if node is None:
        return ctx.target.client
    async with redis_errors(ctx.target.name):
        primaries = dict(await ctx.target.primaries()) if await ctx.target.is_cluster() else {}
    if node not in primaries:
        raise StepError(f"not executed: {node} is not a primary of {ctx.target.name} now")
    return primaries[node]


@action("redis.client_kill", params=ClientKillParams, plan=plan_client_kill, timeout=30.0)
async def run_client_kill(ctx: StepContext, p: ClientKillParams, plan: Plan) -> StepOutput:
    """Disconnect one runaway client (CLIENT KILL ID), e.g. a forgotten MONITOR holding a huge output buffer.

    Chosen by ``id``, ``addr``, or in a playbook ``buffers_over`` (the client with the biggest
    buffers, when over that size; on a cluster, over every primary). The plan names the client by
    ID, address and node; execution connects to that node, kills exactly that ID, only while it is
    still connected there from the same address, never a replication link or the bot's own
    connection, not once the kill switch is on, and then checks the client is gone from that node.
    """
    changes = planned(plan, {"client_kill"})
    if len(changes) != 1 or not changes[0].name.isdigit():
        raise StepError("not executed: the plan must name exactly one client by ID")
    cid, addr, node = int(changes[0].name), changes[0].before, changes[0].node
    client = await _node(ctx, node)
    where = f"{ctx.target.name} ({node})" if node else ctx.target.name
    try:
        async with redis_errors(where):
            entries, own = await _listed(client)
    except CommandNotAllowed as exc:
        raise _not_allowed(ctx, exc) from exc
    c = next((e for e in entries if e.id == cid), None)
    base = {"id": cid, "addr": addr, "node": node}
    if c is None:
        return StepOutput(
            summary=f"client {cid} ({addr}){_on(node or '')} is gone already: nothing to disconnect",
            data=base | {"killed": 0},
        )
    if c.addr != addr:
        raise StepError(f"not executed: client {cid} is at {c.addr} now, not {addr} as approved")
    if reason := refuse_reason(c, own):
        raise StepError(f"not executed: {reason}")
    before = await _used_memory(client, where)
    await stop_point(ctx.should_stop, {"killed": 0})
    async with redis_errors(where):
        killed = int(await call(client, "CLIENT", "KILL", "ID", str(cid)))
        gone = not any(e.id == cid for e in await find_clients(client))
    after = await _used_memory(client, where)
    if not gone:
        raise StepError(
            f"CLIENT KILL ID {cid}{_on(node or '')} answered {killed}, but the client is still listed"
        )
    return StepOutput(
        summary=f"disconnected client {c.describe()}{_on(node or '')}, which held {human_bytes(c.buffers)}"
        f" of buffers (memory {human_bytes(before)} -> {human_bytes(after)}{_on(node or '')}); it is no"
        " longer listed there"
        if killed
        else f"client {cid} ({addr}) disconnected on its own meanwhile",
        data=base
        | {
            "killed": killed,
            "gone": gone,
            "buffers": c.buffers,
            "used_memory_before": before,
            "used_memory_after": after,
        },
    )


async def _used_memory(client: aioredis.Redis, where: str) -> int | None:
    try:
        async with redis_errors(where):
            return int((await client.info("memory")).get("used_memory", 0))
    except StepError:
        return None


# ------------------------------------------------------------------------------------ memory purge


class MemoryPurgeParams(StepParams):
    min_reclaim: ByteSize = Field(
        default=64 << 20, description="nothing to do while fewer free allocator pages than this are held"
    )


async def plan_memory_purge(ctx: StepContext, p: MemoryPurgeParams) -> Plan:
    """MEMORY PURGE when jemalloc holds at least ``min_reclaim`` of free pages (allocator_rss_bytes)."""
    async with redis_errors(ctx.target.name):
        info = await ctx.target.client.info("memory")
    allocator = str(info.get("mem_allocator", "?"))
    if not allocator.startswith("jemalloc"):
        raise PlanRefused(f"MEMORY PURGE only works with jemalloc; {ctx.target.name} uses {allocator}")
    reclaim = int(info.get("allocator_rss_bytes", 0) or 0)
    rss = int(info.get("used_memory_rss", 0) or 0)
    base = Plan(action="redis.memory_purge", target=ctx.target.name, db=ctx.target.db, summary="")
    if reclaim < p.min_reclaim:
        return base.model_copy(
            update={
                "summary": f"the allocator holds {human_bytes(reclaim)} of free pages, under"
                f" {human_bytes(p.min_reclaim)}: nothing worth purging",
                "estimated_keys": 0,
            }
        )
    return base.model_copy(
        update={
            "summary": f"MEMORY PURGE: ask jemalloc to return ~{human_bytes(reclaim)} of free pages to the"
            f" OS (RSS now {human_bytes(rss)}); no key is touched",
            "changes": [Change(op="memory_purge")],
            "details": {"rss": rss, "reclaimable": reclaim},
        }
    )


@action("redis.memory_purge", params=MemoryPurgeParams, plan=plan_memory_purge, timeout=60.0)
async def run_memory_purge(ctx: StepContext, p: MemoryPurgeParams, plan: Plan) -> StepOutput:
    """MEMORY PURGE: return the free pages jemalloc kept after a peak to the OS (RSS falls, no data moves).

    Helps when RSS stays high after a peak (allocator_rss_bytes); fragmentation inside pages needs
    ``activedefrag`` instead (see ``redis.memory_doctor``). Not once the kill switch is on.
    """
    if [c.op for c in planned(plan, {"memory_purge"})] != ["memory_purge"]:
        raise StepError("not executed: the plan must list exactly one MEMORY PURGE")
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        before = int((await client.info("memory")).get("used_memory_rss", 0))
        await stop_point(ctx.should_stop, {"purged": False})
        await call(client, "MEMORY", "PURGE")
        await asyncio.sleep(0.25)  # INFO's RSS figure is refreshed by the server's cron (10 times a second)
        after = int((await client.info("memory")).get("used_memory_rss", 0))
    return StepOutput(
        summary=f"MEMORY PURGE done: RSS {human_bytes(before)} -> {human_bytes(after)}",
        data={"purged": True, "rss_before": before, "rss_after": after, "returned": before - after},
    )
