"""Gated actions on the server rather than the data: disconnecting a runaway client, and giving
free allocator pages back to the OS.

A client that never reads its replies (a forgotten ``MONITOR``, a stuck subscriber) makes Redis hold
every reply for it in an output buffer, which counts in used_memory like data. Disconnecting it
frees that memory at once and loses no data, but it is still a change on a production server:
like every action here it has a plan (the exact client, by its ID), an approval bound to that plan,
and an execute half that re-checks the client is the one approved before it acts.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from pydantic import Field, model_validator

from bot.config import ByteSize
from bot.errors import CommandNotAllowed, PlanRefused, StepError
from bot.eviction import stop_point
from bot.formatting import human_bytes
from bot.redisconn import redis_errors
from bot.redisops.clients import ClientEntry, find_clients
from bot.redisops.common import call
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


async def _clients(ctx: StepContext) -> tuple[list[ClientEntry], int]:
    """Every connection and our own connection's ID; a refused CLIENT command says where to go."""
    try:
        async with redis_errors(ctx.target.name):
            entries = await find_clients(ctx.target.client)
            own = int(await call(ctx.target.client, "CLIENT", "ID"))
    except CommandNotAllowed as exc:
        raise PlanRefused(
            f"CLIENT is not allowed on {ctx.target.name} (managed Redis, or an ACL without it): disconnect"
            f" the client from the provider's console or restart the application holding it. ({exc})"
        ) from exc
    return entries, own


def _pick(entries: list[ClientEntry], p: ClientKillParams) -> ClientEntry | None:
    if p.id is not None:
        return next((c for c in entries if c.id == p.id), None)
    if p.addr is not None:
        return next((c for c in entries if c.addr == p.addr), None)
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


async def plan_client_kill(ctx: StepContext, p: ClientKillParams) -> Plan:
    """The one client to disconnect, named by ID and shown with what it holds; nothing to do (a plan
    of zero) when ``buffers_over`` finds no client that big."""
    entries, own = await _clients(ctx)
    others = [c for c in entries if c.id != own] if p.buffers_over is not None else entries
    c = _pick(others, p)
    if p.buffers_over is not None and (c is None or c.buffers <= p.buffers_over):
        biggest = f" (the biggest holds {human_bytes(c.buffers)}: {c.describe()})" if c else ""
        return Plan(
            action="redis.client_kill",
            target=ctx.target.name,
            db=ctx.target.db,
            summary=f"no client holds over {human_bytes(p.buffers_over)} of buffers{biggest}",
            estimated_keys=0,
        )
    if c is None:
        raise PlanRefused(f"no client {_selector(p)} is connected to {ctx.target.name}")
    if reason := refuse_reason(c, own):
        raise PlanRefused(f"refused: {reason}")
    return Plan(
        action="redis.client_kill",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"CLIENT KILL ID {c.id}: disconnect {c.describe()}, which holds {human_bytes(c.omem)}"
        f" output and {human_bytes(c.qbuf)} query buffer",
        changes=[Change(op="client_kill", name=str(c.id), before=c.addr)],
        # The client as seen when planned: shown to the approver, not compared by the re-check (a
        # MONITOR's buffer grows by the second; its ID and address are what must not change).
        details={"client": asdict(c)},
    )


@action("redis.client_kill", params=ClientKillParams, plan=plan_client_kill, timeout=30.0)
async def run_client_kill(ctx: StepContext, p: ClientKillParams, plan: Plan) -> StepOutput:
    """Disconnect one runaway client (CLIENT KILL ID), e.g. a forgotten MONITOR holding a huge output buffer.

    Chosen by ``id``, ``addr``, or in a playbook ``buffers_over`` (the client with the biggest
    buffers, when over that size). The plan names the client by ID and address; execution kills
    exactly that ID, only while it is still connected from the same address, never a replication
    link or the bot's own connection, and not once the kill switch is on.
    """
    changes = planned(plan, {"client_kill"})
    if len(changes) != 1 or not changes[0].name.isdigit():
        raise StepError("not executed: the plan must name exactly one client by ID")
    cid, addr = int(changes[0].name), changes[0].before
    entries, own = await _clients(ctx)
    c = next((e for e in entries if e.id == cid), None)
    if c is None:
        return StepOutput(
            summary=f"client {cid} ({addr}) is gone already: nothing to disconnect",
            data={"killed": 0, "id": cid, "addr": addr},
        )
    if c.addr != addr:
        raise StepError(f"not executed: client {cid} is at {c.addr} now, not {addr} as approved")
    if reason := refuse_reason(c, own):
        raise StepError(f"not executed: {reason}")
    before = await _used_memory(ctx)
    await stop_point(ctx.should_stop, {"killed": 0})
    async with redis_errors(ctx.target.name):
        killed = int(await call(ctx.target.client, "CLIENT", "KILL", "ID", str(cid)))
    after = await _used_memory(ctx)
    return StepOutput(
        summary=f"disconnected client {c.describe()}, which held {human_bytes(c.buffers)} of buffers"
        f" (memory {human_bytes(before)} -> {human_bytes(after)})"
        if killed
        else f"client {cid} ({addr}) disconnected on its own meanwhile",
        data={
            "killed": killed,
            "id": cid,
            "addr": addr,
            "buffers": c.buffers,
            "used_memory_before": before,
            "used_memory_after": after,
        },
    )


async def _used_memory(ctx: StepContext) -> int | None:
    try:
        async with redis_errors(ctx.target.name):
            return int((await ctx.target.client.info("memory")).get("used_memory", 0))
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
