"""Snapshots: a gated BGSAVE that shows the fork's cost first, and the backup freshness check.

Split from :mod:`bot.steps.redis_actions` (the data-changing actions); the runbook's daily backups
job (:mod:`bot.jobs.backups`) runs ``redis.backup_check`` on a schedule.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from bot.durations import Duration
from bot.errors import StepError
from bot.eviction import bgsave_and_wait, stop_point
from bot.formatting import format_duration
from bot.redisconn import redis_errors
from bot.redisops.expert import fork_cost
from bot.steps.redis_actions import planned
from bot.steps.registry import Change, Plan, StepContext, StepOutput, StepParams, action, step


class BgsaveParams(StepParams):
    timeout: Duration = 120.0


async def plan_bgsave(ctx: StepContext, p: BgsaveParams) -> Plan:
    """The approver sees what the fork will cost (pause, copy-on-write) before saying yes."""
    async with redis_errors(ctx.target.name):
        info = await ctx.target.client.info("everything")
    age = time.time() - int(info.get("rdb_last_save_time", 0))
    fork = fork_cost(info)
    return Plan(
        action="redis.bgsave",
        target=ctx.target.name,
        db=ctx.target.db,
        summary=f"BGSAVE a fresh snapshot (last one {format_duration(age)} ago) and wait up to"
        f" {format_duration(p.timeout)}. {fork.verdict}",
        changes=[Change(op="bgsave")],
        details={"fork": asdict(fork)},
    )


@action("redis.bgsave", params=BgsaveParams, plan=plan_bgsave, timeout=900.0)
async def run_bgsave(ctx: StepContext, p: BgsaveParams, plan: Plan) -> StepOutput:
    """Take a fresh RDB snapshot (BGSAVE) and wait for LASTSAVE to move, before a destructive step."""
    planned(plan, {"bgsave"})
    await stop_point(ctx.should_stop, {})
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
        "stale": age > p.max_age,
        "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
        "aof_enabled": int(info.get("aof_enabled", 0)),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "changes_since_last_save": info.get("rdb_changes_since_last_save"),
    }
    if problems:
        return StepOutput(summary="backup not fresh: " + "; ".join(problems), data=data, status="warning")
    return StepOutput(summary=f"last snapshot {format_duration(age)} ago, status ok", data=data)
