"""Jobs the service runs on its own: health probes, approval expiry, backup freshness, a daily digest.

APScheduler 3's ``AsyncIOScheduler`` runs them on the app's event loop; :func:`bot.app.create_app`
starts and stops it in a cleanup context (``serve`` only: CLI commands never schedule anything).
Every job has an explicit id, ``coalesce=True`` (a backlog of missed runs runs once), a misfire grace
time and at most one running instance, so a slow Redis never piles up probes. A job that fails is
logged and counted (``remediation_bot_scheduler_job_runs_total{outcome="error"}``) and simply runs
again at its next time: one bad run never stops the scheduler.

The health probe and Alertmanager's RedisDown share one incident per target. After ``failures``
failed PINGs in a row the probe opens RedisDown for the target through the same intake as
Alertmanager's alerts (source ``probe``, fingerprint ``probe:<target>``, startsAt = first failure),
unless a RedisDown for that target already fires: then it only notes its findings on that incident.
While the probe's incident fires, Alertmanager's RedisDown for the same target is recorded but merged
into it (see :meth:`bot.intake.Intake._merge_with_probe`). When PING answers again, the probe resolves
the incident it opened; an incident opened by Alertmanager is left for Alertmanager to resolve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError

from bot.alerts import Alert
from bot.config import Config, JobSchedule, TargetConfig
from bot.durations import format_duration
from bot.errors import StepError
from bot.incidents import OPEN_STATES, Incident
from bot.intake import PROBE_SOURCE, Intake, firing_incident
from bot.metrics import Metrics
from bot.notifier import SafeNotifier
from bot.planview import human_bytes
from bot.prom import PromClient, PrometheusError, render
from bot.redisconn import RedisTarget, describe_redis_error, redact_url, redis_errors
from bot.runner import Runner
from bot.steps.redis_actions import BackupCheckParams, backup_check
from bot.steps.registry import StepContext
from bot.store import IngestItem, Store

log = logging.getLogger(__name__)

JobFn = Callable[[], Awaitable[Any]]


def probe_targets(config: Config, timeout: float) -> list[tuple[int, TargetConfig, RedisTarget]]:
    """The targets a job can reach without an alert: those whose URL needs no alert labels."""
    found = []
    for i, t in enumerate(config.targets):
        if t.label_names():
            log.info(
                "target %s is not probed: its URL is built from alert labels", t.name or redact_url(t.url)
            )
            continue
        found.append((i, t, t.resolve({}, timeout)))
    return found


# -- the health probe --------------------------------------------------------------------------------


@dataclass
class ProbeState:
    """What the probe knows about one target between runs."""

    failures: int = 0
    since: datetime | None = None
    error: str = ""
    incident_id: int | None = None
    owned: bool = False
    """True when the probe opened the incident itself (and so resolves it on recovery)."""
    alert: Alert | None = None
    swept: bool = False


class HealthProbe:
    """PING every reachable target; open, join or resolve RedisDown (see the module docstring)."""

    def __init__(self, config: Config, intake: Intake, metrics: Metrics) -> None:
        self.cfg = config.scheduler.health_probe
        self.intake = intake
        self.store: Store = intake.store
        self.metrics = metrics
        self.targets = probe_targets(config, self.cfg.timeout)
        self.state = {rt.name: ProbeState() for _, _, rt in self.targets}

    async def run(self) -> None:
        results = await asyncio.gather(
            *(self.check(i, t, rt) for i, t, rt in self.targets), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def close(self) -> None:
        for _, _, rt in self.targets:
            await rt.close()

    async def ping(self, rt: RedisTarget) -> str | None:
        """None when PING answered in time, else why not (for the incident's description)."""
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await rt.client.ping()
        except TimeoutError:
            return f"no answer to PING within {format_duration(self.cfg.timeout)}"
        except RedisError as exc:
            return str(describe_redis_error(exc, rt.name))
        except OSError as exc:
            return f"cannot reach Redis {rt.name}: {exc}"
        return None

    async def check(self, index: int, tcfg: TargetConfig, rt: RedisTarget) -> None:
        st = self.state[rt.name]
        error = await self.ping(rt)
        self.metrics.probe_up.labels(rt.name).set(0 if error else 1)
        if error is None:
            if not st.swept:
                await self._sweep(index, rt)
                st.swept = True
            if st.incident_id is not None or st.alert is not None:
                await self._recovered(index, rt, st)
            if st.failures:
                log.info("health probe: %s answers PING again", rt.name, extra={"target": rt.name})
            st.failures, st.since, st.error = 0, None, ""
            return
        self.metrics.call_error("redis")
        st.failures += 1
        st.error = error
        st.since = st.since or datetime.now(UTC)
        if st.failures in (1, self.cfg.failures):
            log.warning(
                "health probe: %s: %s (%d in a row)", rt.name, error, st.failures, extra={"target": rt.name}
            )
        if st.failures >= self.cfg.failures and st.incident_id is None and st.alert is None:
            await self._down(index, tcfg, rt, st)

    def _alert(self, tcfg: TargetConfig, rt: RedisTarget, st: ProbeState) -> Alert:
        labels = {
            **tcfg.match,
            "alertname": self.cfg.alertname,
            "severity": "critical",
            "bot_target": rt.name,
            "bot_probe": "true",
        }
        return Alert.model_validate(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "summary": f"Redis {rt.name} did not answer {st.failures} PINGs in a row (the bot's health probe)",
                    "description": st.error,
                },
                "startsAt": (st.since or datetime.now(UTC)).isoformat(),
                "fingerprint": f"probe:{rt.name}",
            }
        )

    @staticmethod
    def _alert_of(inc: Incident) -> Alert:
        """The alert behind a stored incident, with the same identity (fingerprint, startsAt)."""
        return Alert.model_validate(
            {
                "status": "firing",
                "labels": inc.labels or {"alertname": inc.alertname},
                "annotations": inc.annotations,
                "startsAt": inc.starts_at,
                "fingerprint": inc.fingerprint,
            }
        )

    def _item(self, alert: Alert, index: int, rt: RedisTarget) -> IngestItem:
        pb = self.intake.playbooks.match(alert.labels)
        return IngestItem(alert, pb.name if pb else None, rt.name, index, "", PROBE_SOURCE)

    async def _down(self, index: int, tcfg: TargetConfig, rt: RedisTarget, st: ProbeState) -> None:
        existing = await firing_incident(self.store, rt.name, self.cfg.alertname)
        if existing is not None:
            st.incident_id = existing.id
            st.owned = existing.source == PROBE_SOURCE
            if st.owned:
                st.alert = self._alert_of(existing)  # ours, from before a restart: adopt it
                return
            await self.store.audit(
                "probe.down",
                incident_id=existing.id,
                target=rt.name,
                actor=PROBE_SOURCE,
                detail={"failures": st.failures, "error": st.error},
            )
            log.warning(
                "health probe: %s is down; joined incident %s instead of opening another",
                rt.name,
                existing.id,
                extra={"incident": existing.id, "target": rt.name},
            )
            return
        alert = self._alert(tcfg, rt, st)
        result = await self.intake.receive_items([self._item(alert, index, rt)])
        st.alert, st.owned = alert, True
        st.incident_id = result.new[0] if result.new else None
        log.warning(
            "health probe: opened %s for %s (incident %s)",
            self.cfg.alertname,
            rt.name,
            st.incident_id,
            extra={"incident": st.incident_id, "target": rt.name},
        )

    async def _resolve(self, alert: Alert, index: int, rt: RedisTarget) -> None:
        resolved = alert.model_copy(update={"status": "resolved", "ends_at": datetime.now(UTC)})
        await self.intake.receive_items([self._item(resolved, index, rt)])

    async def _recovered(self, index: int, rt: RedisTarget, st: ProbeState) -> None:
        if st.owned and st.alert is not None:
            await self._resolve(st.alert, index, rt)
        elif st.incident_id is not None:
            await self.store.audit(
                "probe.recovered", incident_id=st.incident_id, target=rt.name, actor=PROBE_SOURCE
            )
        st.incident_id, st.owned, st.alert = None, False, None

    async def _sweep(self, index: int, rt: RedisTarget) -> None:
        """Resolve probe incidents a previous run left firing (the bot restarted while Redis was down)."""
        for _ in range(20):
            inc = await firing_incident(self.store, rt.name, self.cfg.alertname, source=PROBE_SOURCE)
            if inc is None:
                return
            log.info(
                "health probe: %s is up; resolving incident %s left from before a restart", rt.name, inc.id
            )
            await self._resolve(self._alert_of(inc), index, rt)


# -- backup freshness --------------------------------------------------------------------------------


class BackupWatch:
    """The runbook's daily backups: warn once when a target's last save is stale or failed, and once
    when it is healthy again (not on every run)."""

    def __init__(self, config: Config, notifier: SafeNotifier, metrics: Metrics) -> None:
        self.cfg = config.scheduler.backup_check
        self.notifier = notifier
        self.metrics = metrics
        self.targets = probe_targets(config, config.runner.redis_timeout)
        self.problems: dict[str, tuple[str, ...]] = {}

    async def close(self) -> None:
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
                    "stale" if (d.get("last_save_age_s") or 0) > self.cfg.max_age else "",
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


# -- the digest --------------------------------------------------------------------------------------


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _period(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds % 3600 == 0 else format_duration(seconds)


async def _target_line(tcfg: TargetConfig, rt: RedisTarget, prom: PromClient | None, period: float) -> str:
    """Hit rate and memory peak of one target: over the period from Prometheus when it can select the
    target's series, else what Redis itself counts (since its last restart or stats reset)."""
    if prom is not None:
        try:
            sel = render("{{ selector }}", tcfg.match, prom.selector or "")
            w = f"{int(period)}s"
            hits, misses, peak, limit = await prom.values(
                [
                    f"sum(increase(redis_keyspace_hits_total{sel}[{w}]))",
                    f"sum(increase(redis_keyspace_misses_total{sel}[{w}]))",
                    f"max(max_over_time(redis_memory_used_bytes{sel}[{w}]))",
                    f"max(redis_memory_max_bytes{sel})",
                ]
            )
            if peak is not None:
                rate = (
                    f"{hits / (hits + misses):.1%}"
                    if hits is not None and misses and hits + misses > 0
                    else "n/a"
                )
                of = f" of {human_bytes(limit)}" if limit else ""
                return f"{rt.name}: hit rate {rate}, memory peak {human_bytes(peak)}{of} (Prometheus, last {_period(period)})"
        except PrometheusError as exc:
            log.info("digest: Prometheus figures for %s unavailable: %s", rt.name, exc)
    try:
        async with redis_errors(rt.name):
            stats = await rt.client.info("stats")
            memory = await rt.client.info("memory")
    except StepError as exc:
        return f"{rt.name}: unavailable ({exc})"
    hits, misses = int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0))
    rate = f"{hits / (hits + misses):.1%}" if hits + misses else "n/a (no lookups)"
    limit = int(memory.get("maxmemory", 0))
    of = f" of {human_bytes(limit)}" if limit else ""
    return f"{rt.name}: hit rate {rate}, memory peak {human_bytes(int(memory.get('used_memory_peak', 0)))}{of} (Redis, since its start)"


async def digest_text(
    store: Store,
    targets: list[tuple[int, TargetConfig, RedisTarget]],
    prom: PromClient | None,
    period: float,
    now: float | None = None,
) -> str:
    """The digest: incidents, actions and approvals of the last ``period``, and each target's figures."""
    now = time.time() if now is None else now
    since = now - period
    incidents = [i for i in await store.list_incidents(limit=5000, steps=False) if _ts(i.created_at) >= since]
    audit = [e for e in await store.list_audit(limit=50_000) if _ts(e.ts) >= since]
    kinds = Counter(e.kind for e in audit)
    actions = [e for e in audit if e.kind == "action.executed"]
    ok = sum(1 for e in actions if e.detail.get("ok"))
    deleted = sum(int(e.detail.get("keys_affected") or 0) for e in actions)
    decided = Counter(str(e.detail.get("state")) for e in audit if e.kind == "approval.decided")
    by_name = Counter(i.alertname for i in incidents)
    by_state = Counter(str(i.status) for i in incidents)
    still_open = sum(1 for i in incidents if i.status in OPEN_STATES)

    def listing(c: Counter[str]) -> str:
        return ", ".join(f"{k} {n}" for k, n in c.most_common())

    lines = [
        f"Digest of the last {_period(period)} (since {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M}Z)"
    ]
    if incidents:
        lines.append(
            f"- incidents: {len(incidents)} ({listing(by_name)}); now {listing(by_state)}; {still_open} still open"
        )
    else:
        lines.append("- incidents: none")
    lines.append(
        f"- actions: {len(actions)} executed ({ok} ok, {len(actions) - ok} failed), {deleted:,} keys deleted"
    )
    lines.append(
        f"- approvals: {kinds['approval.requested']} asked; {decided['approved']} approved,"
        f" {decided['denied']} denied, {kinds['approval.expired']} expired, {kinds['approval.cancelled']} cancelled"
    )
    for _, tcfg, rt in targets:
        lines.append("- " + await _target_line(tcfg, rt, prom, period))
    return "\n".join(lines)


# -- the scheduler -----------------------------------------------------------------------------------


class Scheduler:
    """The service's APScheduler, its jobs, and their bookkeeping (metrics, logs, clean shutdown)."""

    def __init__(self, config: Config, runner: Runner, intake: Intake) -> None:
        self.config = config
        self.cfg = config.scheduler
        self.runner = runner
        self.metrics = runner.metrics
        self.notifier = runner.notifier
        self.probe = HealthProbe(config, intake, self.metrics)
        self.backups = BackupWatch(config, self.notifier, self.metrics)
        self._digest_targets = probe_targets(config, config.runner.redis_timeout)
        self._sched = AsyncIOScheduler(timezone=ZoneInfo(self.cfg.timezone))
        self._sched.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False

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
        for _, _, rt in self._digest_targets:
            await rt.close()

    # -- jobs -----------------------------------------------------------------------------------

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
