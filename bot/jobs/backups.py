"""Backup freshness: the runbook's daily backups, checked on a schedule with ``redis.backup_check``."""

from __future__ import annotations

from bot.config import Config, TargetConfig
from bot.errors import StepError
from bot.jobs.probe import probe_targets
from bot.metrics import Metrics
from bot.notifier import SafeNotifier
from bot.redisconn import RedisTarget
from bot.steps.redis_snapshot import BackupCheckParams, backup_check
from bot.steps.registry import StepContext


class BackupWatch:
    """The runbook's daily backups: warn once when a target's last save is stale or failed, and once
    when it is healthy again (not on every run)."""

    def __init__(
        self,
        config: Config,
        notifier: SafeNotifier,
        metrics: Metrics,
        targets: list[tuple[int, TargetConfig, RedisTarget]] | None = None,
    ) -> None:
        self.cfg = config.scheduler.backup_check
        self.notifier = notifier
        self.metrics = metrics
        self._owned = targets is None
        self.targets = targets if targets is not None else probe_targets(config, config.runner.redis_timeout)
        self.problems: dict[str, tuple[str, ...]] = {}

    async def close(self) -> None:
        if self._owned:
            for _, _, rt in self.targets:
                await rt.close()

    async def run(self) -> None:
        unreachable = []
        for _, _, rt in self.targets:
            try:
                out = await backup_check(StepContext(target=rt), BackupCheckParams(max_age=self.cfg.max_age))
            except StepError as exc:
                self.metrics.call_error("redis")
                unreachable.append(str(exc))
                continue
            d = out.data
            key = tuple(
                p
                for p in (
                    "stale" if d.get("stale") else "",  # the step's exact comparison, not the rounded age
                    f"bgsave {d.get('rdb_last_bgsave_status')}"
                    if d.get("rdb_last_bgsave_status", "ok") != "ok"
                    else "",
                    f"aof {d.get('aof_last_write_status')}"
                    if d.get("aof_enabled") and d.get("aof_last_write_status", "ok") != "ok"
                    else "",
                )
                if p
            )
            before = self.problems.get(rt.name, ())
            if key and key != before:
                await self.notifier.notice(f"Backups of {rt.name}: {out.summary}", "warning")
            elif not key and before:
                await self.notifier.notice(f"Backups of {rt.name} are healthy again: {out.summary}", "info")
            self.problems[rt.name] = key
        if unreachable:
            raise StepError("backup check could not read: " + "; ".join(unreachable))
