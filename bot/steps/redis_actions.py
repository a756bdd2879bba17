"""The runbook's remediation actions, each mutating and therefore gated by an approval.

Each action has two halves: ``plan`` (read-only) computes exactly what would change, which the
approver sees and the approval is bound to; ``execute`` performs that approved plan and re-checks
the safety rules that may have changed in between (protected keys appearing, a failover).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, field_validator, model_validator

from bot.config import ByteSize
from bot.durations import Duration
from bot.errors import CommandNotAllowed, PlanRefused, StepError
from bot.eviction import bgsave_and_wait, estimate_eviction, evict, find_protected
from bot.formatting import format_duration, human_bytes
from bot.keypatterns import key_matcher, refuse_reason
from bot.redisconn import redis_errors
from bot.steps.registry import Plan, StepContext, StepOutput, StepParams, action, step

HELM_HINT = (
    "CONFIG SET does not survive a restart: make it permanent in the deployment, e.g. the Helm values "
    "`redis.resources.limits.memory` (container limit) and the `maxmemory` setting of the chart"
)


class EvictParams(StepParams):
    pattern: str = Field(description="SCAN MATCH glob of the cache namespace, e.g. 'agent:*'")
    batch: int = Field(default=500, ge=1, le=10_000)
    count: int = Field(default=1000, ge=10, le=100_000)
    max_keys: int | None = Field(
        default=None, ge=1, description="cap per run (default: guardrails.max_keys_per_run)"
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        reason = refuse_reason(v)
        if reason:
            raise ValueError(reason)
        return v


def _cap(ctx: StepContext, p: EvictParams) -> int:
    limit = int(ctx.settings.get("max_keys_per_run") or 1_000_000)
    return min(limit, p.max_keys) if p.max_keys else limit


async def plan_evict(ctx: StepContext, p: EvictParams) -> Plan:
    protected = list(ctx.protected_patterns)
    if key_matcher(protected)(p.pattern.encode()) and not any(c in p.pattern for c in "*?["):
        raise PlanRefused(f"{p.pattern} is a protected key")
    async with redis_errors(ctx.target.name):
        est = await estimate_eviction(ctx.target.client, p.pattern, protected, count=p.count)
    cap = _cap(ctx, p)
    n = min(est.deletable, cap)
    capped = f" (capped at {cap:,} of {est.deletable:,})" if est.deletable > cap else ""
    return Plan(
        action="redis.evict",
        target=ctx.target.name,
        db=ctx.target.db,
        pattern=p.pattern,
        summary=f"delete {n:,} keys matching {p.pattern} (~{human_bytes(est.estimated_bytes)}){capped}"
        " with SCAN+UNLINK" + (f"; {est.protected:,} protected keys left alone" if est.protected else ""),
        estimated_keys=n,
        estimated_bytes=int(est.estimated_bytes * n / max(1, est.deletable)),
        protected_excluded=est.protected,
        sample_keys=est.samples,
        params={"max_keys": cap, "batch": p.batch, "count": p.count, "protected": protected},
    )


@action("redis.evict", params=EvictParams, plan=plan_evict, timeout=1800.0)
async def run_evict(ctx: StepContext, p: EvictParams, plan: Plan) -> StepOutput:
    """Invalidate a cache namespace: SCAN MATCH + UNLINK in paced batches, protected keys skipped.

    The runbook's "Evicting Specific Cache Keys", without KEYS or DEL.
    """
    params = plan.params
    before = await _used_memory(ctx)
    # Never more than what was approved (plus the margin the re-check allows), even if the
    # application keeps writing matching keys while the eviction runs.
    margin = float(ctx.settings.get("plan_margin", 0.2))
    approved = int((plan.estimated_keys or 0) * (1 + margin)) + 100
    limit = min(int(params.get("max_keys", _cap(ctx, p))), approved)
    async with redis_errors(ctx.target.name):
        res = await evict(
            ctx.target.client,
            plan.pattern or p.pattern,
            params.get("protected", list(ctx.protected_patterns)),
            max_keys=limit,
            batch=p.batch,
            count=p.count,
            progress=ctx.progress,
        )
    after = await _used_memory(ctx)
    freed = before - after if before is not None and after is not None else None
    cap_note = (
        f"; stopped at {limit:,} keys (the approved plan's size or the per-run cap), run again for more"
        if res.capped
        else ""
    )
    return StepOutput(
        summary=f"deleted {res.deleted:,} keys matching {plan.pattern} in {format_duration(res.duration_s)}"
        f" ({res.protected_skipped:,} protected skipped; memory {human_bytes(before)} -> {human_bytes(after)}){cap_note}",
        data={
            "deleted": res.deleted,
            "matched": res.matched,
            "protected_skipped": res.protected_skipped,
            "batches": res.batches,
            "pauses": res.pauses,
            "capped": res.capped,
            "duration_s": round(res.duration_s, 3),
            "slowest_call_ms": round(res.slowest_call_ms, 2),
            "used_memory_before": before,
            "used_memory_after": after,
            "freed_bytes": freed,
        },
    )


async def _used_memory(ctx: StepContext) -> int | None:
    try:
        async with redis_errors(ctx.target.name):
            info = await ctx.target.client.info("memory")
        return int(info.get("used_memory", 0))
    except StepError:
        return None


class FlushParams(StepParams):
    snapshot_first: bool = Field(default=True, description="BGSAVE and wait for it before flushing")
    snapshot_timeout: Duration = 120.0


async def _flush_guards(ctx: StepContext) -> dict[str, Any]:
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        repl = await client.info("replication")
        if repl.get("role") != "master":
            raise PlanRefused(
                f"{ctx.target.name} is a replica (role {repl.get('role')}): never flush a replica"
            )
        protected = await find_protected(client, list(ctx.protected_patterns), limit=20)
        if protected:
            raise PlanRefused(
                f"refused: protected keys exist in db {ctx.target.db} (e.g. {', '.join(protected[:5])});"
                " FLUSHDB would delete queues/sessions. Evict the cache namespace instead."
            )
        size = await client.dbsize()
        mem = await client.info("memory")
    return {"keys": int(size), "used_memory": int(mem.get("used_memory", 0))}


async def plan_flushdb(ctx: StepContext, p: FlushParams) -> Plan:
    g = await _flush_guards(ctx)
    snap = "after a fresh BGSAVE snapshot, " if p.snapshot_first else ""
    return Plan(
        action="redis.flushdb",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"{snap}FLUSHDB ASYNC: delete ALL {g['keys']:,} keys of db {ctx.target.db} (last resort)",
        estimated_keys=g["keys"],
        estimated_bytes=g["used_memory"],
        protected_excluded=0,
        approvers_required=2,
        params={"snapshot_first": p.snapshot_first},
    )


@action("redis.flushdb", params=FlushParams, plan=plan_flushdb, timeout=600.0)
async def run_flushdb(ctx: StepContext, p: FlushParams, plan: Plan) -> StepOutput:
    """The runbook's last resort: FLUSHDB ASYNC of the target's database, with two approvers.

    Refused on a replica and while any protected key (BullMQ queues, sessions) exists in the db.
    """
    await _flush_guards(ctx)  # re-check: a queue may have appeared since the plan was approved
    saved = None
    async with redis_errors(ctx.target.name):
        if p.snapshot_first:
            try:
                saved = await bgsave_and_wait(ctx.target.client, timeout=p.snapshot_timeout)
            except (TimeoutError, RuntimeError) as exc:
                raise StepError(f"no fresh snapshot, so no flush: {exc}") from exc
    # Again, right before flushing: a queue may have appeared, or a failover happened, while the
    # snapshot was being written.
    await _flush_guards(ctx)
    async with redis_errors(ctx.target.name):
        size = await ctx.target.client.dbsize()
        await ctx.target.client.flushdb(asynchronous=True)
    return StepOutput(
        summary=f"FLUSHDB ASYNC done: {size:,} keys removed from db {ctx.target.db}"
        + (f" (snapshot at {time.strftime('%H:%M:%S', time.gmtime(saved))}Z)" if saved else ""),
        data={"deleted": int(size), "snapshot_lastsave": saved},
    )


async def config_int(ctx: StepContext, name: str) -> int:
    """An integer setting read with CONFIG GET (0 when absent)."""
    reply = await ctx.target.client.config_get(name)
    return int(str(reply.get(name) or 0))


class MaxmemoryParams(StepParams):
    factor: float | None = Field(default=None, gt=1.0, le=4.0, description="new limit = current x factor")
    to: ByteSize | None = Field(default=None, description="new absolute limit, e.g. 2gb")
    ceiling: ByteSize | None = Field(default=None, description="never above this (default: the target's)")
    policy: str | None = Field(
        default=None, description="also set maxmemory-policy (refused if BullMQ keys exist)"
    )

    @model_validator(mode="after")
    def _one(self) -> MaxmemoryParams:
        if (self.factor is None) == (self.to is None):
            raise ValueError("give exactly one of `factor` or `to`")
        return self


async def plan_maxmemory(ctx: StepContext, p: MaxmemoryParams) -> Plan:
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        mem = await client.info("memory")
    try:
        async with redis_errors(ctx.target.name):
            current = await config_int(ctx, "maxmemory")
            policy = str((await client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except CommandNotAllowed as exc:
        raise PlanRefused(
            f"CONFIG is not allowed on {ctx.target.name} (managed Redis?): raise the memory limit in the"
            f" provider's console or the deployment instead. {HELM_HINT}. ({exc})"
        ) from exc
    used = int(mem.get("used_memory", 0))
    ceiling = p.ceiling or ctx.settings.get("maxmemory_ceiling")
    if not ceiling:
        raise PlanRefused(
            "no ceiling configured: set `maxmemory_ceiling` on the target or `ceiling` in the step"
        )
    base = current or used
    wanted = int(p.to if p.to is not None else base * (p.factor or 1.0))
    new = min(wanted, int(ceiling))
    if new <= used:
        raise PlanRefused(
            f"the new limit {human_bytes(new)} would not be above used memory {human_bytes(used)}"
        )
    if current and new <= current:
        raise PlanRefused(
            f"already at {human_bytes(current)}; the ceiling {human_bytes(ceiling)} allows no more"
        )
    if p.policy and p.policy != "noeviction" and await find_protected(client, ["bull:*"], limit=1):
        raise PlanRefused(
            "BullMQ keys exist: maxmemory-policy must stay noeviction, or queued jobs get evicted"
        )
    note = f" (capped by the ceiling {human_bytes(ceiling)})" if new < wanted else ""
    return Plan(
        action="redis.set_maxmemory",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"CONFIG SET maxmemory {human_bytes(current) if current else 'unlimited'} -> {human_bytes(new)}{note}",
        estimated_bytes=new,
        params={"from": current, "to": new, "policy": p.policy, "policy_before": policy},
        details={"used_memory": used, "ceiling": int(ceiling), "reminder": HELM_HINT},
    )


@action("redis.set_maxmemory", params=MaxmemoryParams, plan=plan_maxmemory, timeout=30.0)
async def run_maxmemory(ctx: StepContext, p: MaxmemoryParams, plan: Plan) -> StepOutput:
    """The runbook's "increase the memory limit": a bounded CONFIG SET maxmemory.

    Never below used memory, never above the ceiling; never moves maxmemory-policy away from
    noeviction while BullMQ keys exist. Reminds the operator to make the change permanent.
    """
    new = int(plan.params["to"])
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        used = int((await client.info("memory")).get("used_memory", 0))
        if new <= used:
            raise StepError(f"used memory grew to {human_bytes(used)}, above the approved limit; not applied")
        await client.config_set("maxmemory", new)
        if plan.params.get("policy"):
            await client.config_set("maxmemory-policy", plan.params["policy"])
        now = await config_int(ctx, "maxmemory")
    if now != new:
        raise StepError(f"maxmemory reads {now} after setting {new}")
    return StepOutput(
        summary=f"maxmemory is now {human_bytes(now)} (was {human_bytes(plan.params['from'])}). {HELM_HINT}.",
        data={"maxmemory": now, "previous": plan.params["from"], "reminder": HELM_HINT},
        status="warning",
    )


class BgsaveParams(StepParams):
    timeout: Duration = 120.0


async def plan_bgsave(ctx: StepContext, p: BgsaveParams) -> Plan:
    async with redis_errors(ctx.target.name):
        info = await ctx.target.client.info("persistence")
    age = time.time() - int(info.get("rdb_last_save_time", 0))
    return Plan(
        action="redis.bgsave",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"BGSAVE a fresh snapshot (last one {format_duration(age)} ago) and wait up to {format_duration(p.timeout)}",
    )


@action("redis.bgsave", params=BgsaveParams, plan=plan_bgsave, timeout=900.0)
async def run_bgsave(ctx: StepContext, p: BgsaveParams, plan: Plan) -> StepOutput:
    """Take a fresh RDB snapshot (BGSAVE) and wait for LASTSAVE to move, before a destructive step."""
    async with redis_errors(ctx.target.name):
        try:
            ts = await bgsave_and_wait(ctx.target.client, timeout=p.timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise StepError(str(exc)) from exc
    return StepOutput(
        summary=f"snapshot written at {time.strftime('%H:%M:%S', time.gmtime(ts))}Z", data={"lastsave": ts}
    )


class BackupCheckParams(StepParams):
    max_age: Duration = 26 * 3600.0


@step("redis.backup_check", params=BackupCheckParams, timeout=15.0)
async def backup_check(ctx: StepContext, p: BackupCheckParams) -> StepOutput:
    """Backup freshness: last RDB save age and status, AOF write status (the runbook's daily backups)."""
    async with redis_errors(ctx.target.name):
        info = await ctx.target.client.info("persistence")
    age = time.time() - int(info.get("rdb_last_save_time", 0))
    problems = []
    if info.get("rdb_last_bgsave_status", "ok") != "ok":
        problems.append(f"last BGSAVE {info.get('rdb_last_bgsave_status')}")
    if int(info.get("aof_enabled", 0)) and info.get("aof_last_write_status", "ok") != "ok":
        problems.append(f"AOF write {info.get('aof_last_write_status')}")
    if age > p.max_age:
        problems.append(f"last snapshot {format_duration(age)} ago (older than {format_duration(p.max_age)})")
    data = {
        "last_save_age_s": round(age),
        "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
        "aof_enabled": int(info.get("aof_enabled", 0)),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "changes_since_last_save": info.get("rdb_changes_since_last_save"),
    }
    if problems:
        return StepOutput(summary="backup not fresh: " + "; ".join(problems), data=data, status="warning")
    return StepOutput(summary=f"last snapshot {format_duration(age)} ago, status ok", data=data)
