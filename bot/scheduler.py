"""Jobs the service runs on its own: health probes, approval expiry, backup freshness, a daily digest.

APScheduler 3's ``AsyncIOScheduler`` runs them on the app's event loop; :func:`bot.app.create_app`
starts and stops it in a cleanup context (``serve`` only: CLI commands never schedule anything).
Every job has an explicit id, ``coalesce=True`` (a backlog of missed runs runs once), a misfire grace
time and at most one running instance, so a slow Redis never piles up probes. A job that fails is
logged and counted (``remediation_bot_scheduler_job_runs_total{outcome="error"}``) and simply runs
again at its next time: one bad run never stops the scheduler.

The jobs themselves are in :mod:`bot.jobs`: the health probe (:mod:`bot.jobs.probe`, which also
describes how it shares RedisDown incidents with Alertmanager), backup freshness
(:mod:`bot.jobs.backups`) and the digest (:mod:`bot.jobs.digest`). This module only wires them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.config import Config
from bot.config_jobs import JobSchedule
from bot.errors import StepError
from bot.intake import Intake
from bot.jobs.backups import BackupWatch
from bot.jobs.digest import digest_text
from bot.jobs.probe import HealthProbe
from bot.runner import Runner
from bot.store import Fence

log = logging.getLogger(__name__)

LEADER = "scheduler"
"""Name of the lease whose holder runs the scheduled jobs."""

JobFn = Callable[[], Awaitable[Any]]


class Scheduler:
    """The service's APScheduler, its jobs, and their bookkeeping (metrics, logs, clean shutdown)."""

    def __init__(self, config: Config, runner: Runner, intake: Intake) -> None:
        self.config = config
        self.cfg = config.scheduler
        self.runner = runner
        self.metrics = runner.metrics
        self.notifier = runner.notifier
        shared = runner.pool.fixed()  # the engine's clients: one pool per target for the process
        self.probe = HealthProbe(config, intake, self.metrics, shared)
        self.backups = BackupWatch(config, self.notifier, self.metrics, shared)
        self._digest_targets = shared
        self._sched = AsyncIOScheduler(timezone=ZoneInfo(self.cfg.timezone))
        self._sched.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.leader: Fence | None = None
        """This process's leadership of the scheduler (None: another replica runs the jobs)."""

    def add(self, job_id: str, fn: JobFn, schedule: JobSchedule) -> None:
        """Schedule ``fn`` under ``job_id`` (replacing a job of that id), wrapped for metrics and logs."""
        self._sched.add_job(
            self._wrap(job_id, fn),
            schedule.trigger(self.cfg.timezone),
            id=job_id,
            name=job_id,
            coalesce=True,
            misfire_grace_time=max(1, round(self.cfg.misfire_grace_time)),
            max_instances=1,
            replace_existing=True,
        )
        log.info("scheduled job %s: %s", job_id, schedule.describe())

    def _wrap(self, job_id: str, fn: JobFn) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            started = time.perf_counter()
            try:
                if not await self.lead():
                    self.metrics.job_run(job_id, "follower", time.perf_counter() - started)
                    return
                await fn()
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                return  # shutting down: not a failure, and APScheduler need not log one
            except Exception as exc:
                self.metrics.job_run(job_id, "error", time.perf_counter() - started)
                log.error(
                    "scheduled job %s failed (it runs again at its next time): %s: %s",
                    job_id,
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, StepError),
                    extra={"job": job_id},
                )
            else:
                self.metrics.job_run(job_id, "ok", time.perf_counter() - started)
            finally:
                if task is not None:
                    self._running.discard(task)

        return run

    async def lead(self) -> bool:
        """Whether this process leads the scheduler now: the jobs run once across replicas, on
        the holder of the ``scheduler`` lease in the store (taken over when its holder dies)."""
        fence = await self.runner.store.lead(LEADER, self.runner.owner, self.runner.lease_ttl)
        if (fence is None) != (self.leader is None):
            log.info(
                "scheduler: %s",
                "this process leads; jobs run here" if fence else "another process leads the jobs",
            )
        self.leader = fence
        return fence is not None

    def _on_event(self, event: JobEvent) -> None:
        outcome = "missed" if event.code == EVENT_JOB_MISSED else "skipped"
        self.metrics.job_run(event.job_id, outcome)

    @property
    def running(self) -> bool:
        return bool(self._sched.running)

    def job_ids(self) -> list[str]:
        return [job.id for job in self._sched.get_jobs()]

    async def start(self) -> None:
        c = self.cfg
        jobs: list[tuple[str, JobFn, JobSchedule]] = [
            ("health_probe", self.probe.run, c.health_probe),
            ("approval_expiry", self.expire_approvals, c.approval_expiry),
            ("backup_check", self.backups.run, c.backup_check),
            ("digest", self.send_digest, c.digest),
        ]
        for job_id, fn, schedule in jobs:
            if schedule.enabled:
                self.add(job_id, fn, schedule)
        # Leadership is renewed well within its lease, whatever the jobs' own schedules are.
        self.add("leadership", self._keep_lead, JobSchedule(every=max(1.0, self.runner.lease_ttl / 3)))
        # APScheduler logs every run at INFO; with a probe every few seconds that drowns the bot's log.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        self._sched.start()

    async def stop(self) -> None:
        """Stop scheduling, end running jobs (cancelled after a short grace), close job clients."""
        self._stopping = True
        if self._sched.running:
            self._sched.shutdown(wait=False)
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop iteration
        await self.probe.close()
        await self.backups.close()

    # -- jobs -----------------------------------------------------------------------------------

    async def _keep_lead(self) -> None:
        """The leadership job: ``lead()`` runs in the wrapper of every job; nothing more to do."""

    async def expire_approvals(self) -> None:
        n = await self.runner.expire_approvals()
        if n:
            log.info("approval expiry: %d approval(s) expired", n)

    async def send_digest(self) -> str:
        text = await digest_text(
            self.runner.store, self._digest_targets, self.runner.prometheus, self.cfg.digest.period
        )
        await self.notifier.notice(text, "info")
        return text
