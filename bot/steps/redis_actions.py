"""The runbook's remediation actions, each mutating and therefore gated by an approval.

Each action has two halves: ``plan`` (read-only) computes exactly what would change, which the
approver sees and the approval is bound to; ``execute`` performs that approved plan and re-checks
the safety rules that may have changed in between (protected keys appearing, a failover).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bot.cluster import estimate_on, evict_cluster
from bot.config import ByteSize
from bot.errors import CommandNotAllowed, OverCap, PlanRefused, StepError
from bot.eviction import EvictionEstimate, evict, find_protected, stop_point
from bot.formatting import format_duration, human_bytes
from bot.keypatterns import key_matcher, refuse_reason
from bot.redisconn import redis_errors
from bot.steps.registry import Change, Plan, StepContext, StepOutput, StepParams, action

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


def _key_cap(ctx: StepContext, p: EvictParams) -> tuple[int, str]:
    """The smaller of the per-run guardrail and the step's own ``max_keys``, with its name."""
    guard = int(ctx.settings.get("max_keys_per_run") or 1_000_000)
    if p.max_keys and p.max_keys < guard:
        return p.max_keys, "max_keys of the step"
    return guard, "guardrails.max_keys_per_run"


def _byte_cap(ctx: StepContext) -> int | None:
    value = ctx.settings.get("max_bytes_per_run")
    return int(value) if value else None


def planned(plan: Plan, ops: set[str], names: set[str] | None = None) -> list[Change]:
    """The plan's changes, refusing any this action does not make: execute does what was approved,
    all of it and nothing else, whatever the step's parameters say now."""
    for c in plan.changes:
        if c.op not in ops or (names is not None and c.name not in names):
            raise StepError(
                f"not executed: the plan lists a change {plan.action} does not make ({c.op} {c.name})"
            )
    return list(plan.changes)


REPORT_MAX_AGE = 900.0
"""How old this incident's memory report may be for the eviction plan to take its counts."""


def _leading_literal(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob) and glob[i] not in "*?[":
        if glob[i] == "\\" and i + 1 < len(glob):
            i += 1
        out.append(glob[i])
        i += 1
    return "".join(out)


def reported(ctx: StepContext, pattern: str, protected: list[str]) -> tuple[EvictionEstimate, str] | None:
    """The keys and bytes of ``pattern`` as this incident's memory report counted them, so the plan
    does not scan the keyspace a second time; None when no recent, complete, depth-1 report has the
    pattern's row, or when a protected pattern could match keys of that prefix (the report cannot
    tell them apart). The execute-time re-check still scans (it gets no earlier steps)."""
    for run in reversed(ctx.earlier):
        d = run.data
        if run.type != "redis.memory_report" or not d.get("complete") or d.get("depth") != 1:
            continue
        row = next((x for x in d.get("prefixes") or [] if x.get("pattern") == pattern), None)
        at = datetime.fromisoformat(run.finished_at) if run.finished_at else None
        if row is None or at is None or (datetime.now(UTC) - at).total_seconds() > REPORT_MAX_AGE:
            continue
        prefix = str(row["prefix"])
        if any(prefix.startswith(lit) or lit.startswith(prefix) for lit in map(_leading_literal, protected)):
            return None
        samples = [str(k["key"]) for k in d.get("top_keys") or [] if k.get("prefix") == prefix]
        if row.get("biggest_key"):
            samples.insert(0, str(row["biggest_key"]))
        keys = int(row["keys"])  # every key measured: the sample is all of them
        est = EvictionEstimate(keys, 0, keys, int(row["bytes"]), list(dict.fromkeys(samples))[:5])
        return est, f"the memory report ({run.step_id}, {run.finished_at})"
    return None


async def plan_evict(ctx: StepContext, p: EvictParams) -> Plan:
    protected = list(ctx.protected_patterns)
    if key_matcher(protected)(p.pattern.encode()) and not any(c in p.pattern for c in "*?["):
        raise PlanRefused(f"{p.pattern} is a protected key")
    reuse = reported(ctx, p.pattern, protected)
    if reuse is not None:
        est, counted_by = reuse
    else:
        async with redis_errors(ctx.target.name):  # on every primary of a cluster
            est = await estimate_on(await ctx.target.primaries(), p.pattern, protected, p.count)
        counted_by = "a SCAN of the pattern"
    cap, cap_name = _key_cap(ctx, p)
    if est.deletable > cap:
        raise OverCap(
            f"{p.pattern} matches ~{est.deletable:,} keys, cap {cap:,} ({cap_name}): narrow the pattern"
            " or raise the cap"
        )
    max_bytes = _byte_cap(ctx)
    if max_bytes is not None and est.estimated_bytes > max_bytes:
        raise OverCap(
            f"{p.pattern} matches ~{est.deletable:,} keys of ~{human_bytes(est.estimated_bytes)}, cap"
            f" {human_bytes(max_bytes)} (guardrails.max_bytes_per_run): narrow the pattern or raise the cap"
        )
    return Plan(
        action="redis.evict",
        target=ctx.target.name,
        db=ctx.target.db,
        pattern=p.pattern,
        summary=f"delete {est.deletable:,} keys matching {p.pattern} (~{human_bytes(est.estimated_bytes)})"
        " with SCAN+UNLINK"
        + (f"; {est.protected:,} protected keys left alone" if est.protected else "")
        + (f"; counted by {counted_by}, counted again before executing" if reuse else ""),
        estimated_keys=est.deletable,
        estimated_bytes=est.estimated_bytes,
        protected_excluded=est.protected,
        sample_keys=est.samples,
        changes=[Change(op="unlink", name=p.pattern)],
        params={
            "max_keys": cap,
            "max_bytes": max_bytes,
            "batch": p.batch,
            "count": p.count,
            "protected": protected,
        },
        details={"counted_by": counted_by},
    )


def _evict_limit(ctx: StepContext, p: EvictParams, plan: Plan) -> tuple[int, str]:
    """How many keys this run may delete before it must stop, and which rule says so: the key cap
    (the plan's or today's, the smaller), the approved size plus the margin, and the byte cap as a
    key count at the plan's sampled bytes per key."""
    cap, cap_name = _key_cap(ctx, p)
    limits = [(min(cap, int(plan.params.get("max_keys") or cap)), cap_name)]
    margin = float(ctx.settings.get("plan_margin", 0.2))
    keys = plan.estimated_keys or 0
    limits.append((int(keys * (1 + margin)) + 100, f"the approved ~{keys:,} keys plus {margin:.0%}"))
    byte_caps = [b for b in (_byte_cap(ctx), plan.params.get("max_bytes")) if b]
    if byte_caps and keys and plan.estimated_bytes:
        per_key = plan.estimated_bytes / keys
        max_bytes = min(int(b) for b in byte_caps)
        limits.append(
            (
                int(max_bytes / per_key),
                f"guardrails.max_bytes_per_run {human_bytes(max_bytes)} at ~{per_key:.0f} B a key",
            )
        )
    return min(limits)


@action("redis.evict", params=EvictParams, plan=plan_evict, timeout=1800.0)
async def run_evict(ctx: StepContext, p: EvictParams, plan: Plan) -> StepOutput:
    """Invalidate a cache namespace: SCAN MATCH + UNLINK in paced batches, protected keys skipped.

    The runbook's "Evicting Specific Cache Keys", without KEYS or DEL. Deletes what the plan lists
    (its pattern), stops at once when the kill switch is turned on or more keys match than the caps
    or the approved size allow, and reports each finished batch to ``settings["checkpoint"]``.
    """
    changes = planned(plan, {"unlink"})
    if len(changes) != 1 or changes[0].name != plan.pattern:
        raise StepError("not executed: the plan must list exactly one UNLINK of its pattern")
    params = plan.params
    # Protected patterns of the plan and of today's config: a pattern added since still protects.
    protected = list(dict.fromkeys([*params.get("protected", []), *ctx.protected_patterns]))
    limit, limit_name = _evict_limit(ctx, p, plan)
    before = await _used_memory(ctx)
    pacing: dict[str, Any] = {
        "max_keys": limit,
        "limit_name": limit_name,
        "batch": int(params.get("batch", p.batch)),
        "count": int(params.get("count", p.count)),
        "progress": ctx.progress,
        "should_stop": ctx.should_stop,
        "checkpoint": ctx.settings.get("checkpoint"),
    }
    per_node: dict[str, int] = {}
    async with redis_errors(ctx.target.name):
        if await ctx.target.is_cluster():  # per primary, key by key, following resharding
            t = ctx.target
            res, per_node = await evict_cluster(
                t.primaries, t.topology, t.node_client, plan.pattern or "", protected, **pacing
            )
        else:
            res = await evict(ctx.target.client, changes[0].name, protected, **pacing)
    after = await _used_memory(ctx)
    freed = before - after if before is not None and after is not None else None
    return StepOutput(
        summary=f"deleted {res.deleted:,} keys matching {plan.pattern} in {format_duration(res.duration_s)}"
        f" ({res.protected_skipped:,} protected skipped; memory {human_bytes(before)} -> {human_bytes(after)})",
        data={
            "deleted": res.deleted,
            "matched": res.matched,
            "protected_skipped": res.protected_skipped,
            "batches": res.batches,
            "pauses": res.pauses,
            "duration_s": round(res.duration_s, 3),
            "slowest_call_ms": round(res.slowest_call_ms, 2),
            "used_memory_before": before,
            "used_memory_after": after,
            "freed_bytes": freed,
            "nodes": per_node,
        },
    )


async def _used_memory(ctx: StepContext) -> int | None:
    """Used memory of the target (summed over a cluster's primaries); None when unreadable."""
    try:
        async with redis_errors(ctx.target.name):
            return sum(
                [int((await c.info("memory")).get("used_memory", 0)) for _, c in await ctx.target.primaries()]
            )
    except StepError:
        return None


async def config_int(ctx: StepContext, name: str) -> int:
    """An integer setting read with CONFIG GET (0 when absent)."""
    reply = await ctx.target.client.config_get(name)
    return int(str(reply.get(name) or 0))


MaxmemoryPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
MAXMEMORY_SETTINGS = {"maxmemory", "maxmemory-policy"}


class MaxmemoryParams(StepParams):
    factor: float | None = Field(default=None, gt=1.0, le=4.0, description="new limit = current x factor")
    to: ByteSize | None = Field(default=None, description="new absolute limit, e.g. 2gb")
    ceiling: ByteSize | None = Field(default=None, description="never above this (default: the target's)")
    policy: MaxmemoryPolicy | None = Field(
        default=None, description="also set maxmemory-policy (refused if BullMQ keys exist)"
    )

    @model_validator(mode="after")
    def _one(self) -> MaxmemoryParams:
        if (self.factor is None) == (self.to is None):
            raise ValueError("give exactly one of `factor` or `to`")
        return self


NO_LIMIT = (
    "{target} has no memory limit (maxmemory 0): there is nothing to raise, and setting one now would"
    " cap it (under noeviction, writes fail once data reaches it). If it needs a limit, choose it"
    " deliberately in the deployment (Helm values: the chart's `maxmemory`, below the container's"
    " `redis.resources.limits.memory`)"
)


async def plan_maxmemory(ctx: StepContext, p: MaxmemoryParams) -> Plan:
    """Raise an existing limit, never lower one, never invent one; list every CONFIG SET it makes."""
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
    if current == 0:
        raise PlanRefused(NO_LIMIT.format(target=ctx.target.name))
    used = int(mem.get("used_memory", 0))
    ceiling = p.ceiling or ctx.settings.get("maxmemory_ceiling")
    if not ceiling:
        raise PlanRefused(
            "no ceiling configured: set `maxmemory_ceiling` on the target or `ceiling` in the step"
        )
    wanted = int(p.to if p.to is not None else current * (p.factor or 1.0))
    new = min(wanted, int(ceiling))
    if new <= used:
        raise PlanRefused(
            f"the new limit {human_bytes(new)} would not be above used memory {human_bytes(used)}"
        )
    if wanted <= current:
        raise PlanRefused(
            f"the new limit {human_bytes(wanted)} is not above the current {human_bytes(current)}:"
            " this step only raises the limit, never lowers it"
        )
    if new <= current:
        raise PlanRefused(
            f"already at {human_bytes(current)}; the ceiling {human_bytes(ceiling)} allows no more"
        )
    if p.policy and p.policy != "noeviction" and await find_protected(client, ["bull:*"], limit=1):
        raise PlanRefused(
            "BullMQ keys exist: maxmemory-policy must stay noeviction, or queued jobs get evicted"
        )
    changes = [Change(op="config_set", name="maxmemory", before=str(current), after=str(new))]
    if p.policy and p.policy != policy:
        changes.append(Change(op="config_set", name="maxmemory-policy", before=policy, after=p.policy))
    note = f" (capped by the ceiling {human_bytes(ceiling)})" if new < wanted else ""
    also = f"; maxmemory-policy {policy} -> {p.policy}" if len(changes) > 1 else ""
    return Plan(
        action="redis.set_maxmemory",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"CONFIG SET maxmemory {human_bytes(current)} -> {human_bytes(new)}{note}{also}",
        estimated_bytes=new,
        changes=changes,
        params={"from": current, "to": new, "policy": p.policy, "policy_before": policy},
        details={"used_memory": used, "ceiling": int(ceiling), "reminder": HELM_HINT},
    )


@action("redis.set_maxmemory", params=MaxmemoryParams, plan=plan_maxmemory, timeout=30.0)
async def run_maxmemory(ctx: StepContext, p: MaxmemoryParams, plan: Plan) -> StepOutput:
    """The runbook's "increase the memory limit": a bounded CONFIG SET maxmemory.

    Never below used memory or the current limit, never above the ceiling; never moves
    maxmemory-policy away from noeviction while BullMQ keys exist. Applies exactly the plan's
    changes, in one atomic CONFIG SET, only while each setting still has its planned "before"
    value. Reminds the operator to make the change permanent.
    """
    changes = planned(plan, {"config_set"}, MAXMEMORY_SETTINGS)
    new_of = {c.name: str(c.after) for c in changes}
    if "maxmemory" not in new_of or len(new_of) != len(changes):
        raise StepError("not executed: the plan must set maxmemory, each setting once")
    new = int(new_of["maxmemory"])
    previous = int(str(next(c.before for c in changes if c.name == "maxmemory")))
    if previous == 0 or new <= previous:
        raise StepError(
            "not executed: the plan does not raise an existing limit (it never lowers or invents one)"
        )
    client = ctx.target.client
    async with redis_errors(ctx.target.name):
        used = int((await client.info("memory")).get("used_memory", 0))
        if new <= used:
            raise StepError(f"used memory grew to {human_bytes(used)}, above the approved limit; not applied")
        for c in changes:
            now = str((await client.config_get(c.name)).get(c.name, ""))
            if now != c.before:
                raise StepError(f"{c.name} is {now} now, not {c.before} as planned: not applied, plan again")
        policy = new_of.get("maxmemory-policy", "noeviction")
        if policy != "noeviction" and await find_protected(client, ["bull:*"], limit=1):
            raise StepError("BullMQ keys exist now: maxmemory-policy stays noeviction; not applied")
        await stop_point(ctx.should_stop, {"applied": 0})
        pairs = [v for c in changes for v in (c.name, str(c.after))]
        await client.execute_command("CONFIG", "SET", *pairs)  # type: ignore[no-untyped-call]  # all or nothing
        read = {c.name: str((await client.config_get(c.name)).get(c.name, "")) for c in changes}
    if read != new_of:
        raise StepError(f"CONFIG GET reads {read} after setting {new_of}")
    done = [
        f"{c.name} is now {_config_text(c.name, c.after)} (was {_config_text(c.name, c.before)})"
        for c in changes
    ]
    return StepOutput(
        summary="; ".join(done) + f". {HELM_HINT}.",
        data={"maxmemory": new, "previous": previous, "applied": new_of, "reminder": HELM_HINT},
        status="warning",
    )


def _config_text(name: str, value: str | None) -> str:
    return human_bytes(int(value or 0)) if name == "maxmemory" else str(value)
