"""The playbook loop: queue, workers, read-only steps, and how an incident ends.

Read-only steps run at once. A mutating step goes to the gate (:mod:`bot.runner.gate`), which plans
it and asks for an approval; a decision (:mod:`bot.runner.decide`) resumes the incident through
:mod:`bot.runner.execute`. The store is the source of truth and only its lifecycle events write a
state, so any process holding a Runner (the service, or the ``approve`` CLI) can carry an incident
forward, and compare-and-set makes sure only one of them executes an approved plan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from bot.charts import chart_bytes
from bot.config import Config
from bot.durations import format_duration
from bot.errors import BotError, NotFound, StepError, StoreError, TargetError
from bot.incidents import Incident, IncidentState, StepRun, StepStatus, moments
from bot.lifecycle import AlertStatus
from bot.metrics import Metrics
from bot.notifier import SafeNotifier
from bot.playbook import Playbook, PlaybookSet, Step
from bot.prom import PromClient
from bot.redisconn import RedisTarget, redis_errors
from bot.runner.guardrails import Guardrails
from bot.runner.queue import FairQueue
from bot.steps import EarlierStep, StepContext, StepOutput
from bot.store import Fence, StepResult, Store, process_owner
from bot.target_pool import TargetPool

log = logging.getLogger(__name__)

FAILED_STATUSES = frozenset({StepStatus.FAILED, StepStatus.ERROR, StepStatus.TIMEOUT})
CHECKED = frozenset({StepStatus.OK, StepStatus.WARNING, StepStatus.FAILED})
QUEUE_PER_TARGET = 100


def _log_failed_checkpoint(task: asyncio.Task[None]) -> None:
    """A lost progress count is worth a log line, never a stopped action."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not save an action's progress: %s", task.exception())


class RunnerCore:
    """Carries incidents through their playbooks. One per process; shares the store with the others."""

    def __init__(
        self,
        config: Config,
        playbooks: PlaybookSet,
        store: Store,
        notifier: SafeNotifier,
        *,
        metrics: Metrics,
        prometheus: PromClient | None = None,
        pool: TargetPool,
    ) -> None:
        self.config = config
        self.playbooks = playbooks
        self.store = store
        self.metrics = metrics
        self.notifier = notifier
        self.prometheus = prometheus
        self.guardrails = Guardrails(config, store, metrics)
        self.pool = pool
        self.owner = process_owner()
        """This process, as lease holder: ``host:pid``."""
        self.lease_ttl = config.runner.lease_ttl
        self._fences: dict[int, Fence] = {}
        self._lost: set[int] = set()
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queue = FairQueue(QUEUE_PER_TARGET)
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle of the runner itself ----------------------------------------------------------

    async def start(self) -> None:
        """Recover from the last run and start the workers."""
        for inc_id in await self.store.interrupt_orphans():
            log.warning(
                "incident %s: a remediation was interrupted by a restart and will not be re-run",
                inc_id,
                extra={"incident": inc_id},
            )
            self.spawn(self._announce(inc_id))
        for inc_id in await self.store.incidents_to_resume():
            inc = await self.store.get_incident(inc_id, steps=False)
            self.submit(inc_id, inc.target or "")
        for i in range(self.config.runner.concurrency):
            self._workers.append(asyncio.create_task(self._worker(), name=f"runner-{i}"))
        self._workers.append(asyncio.create_task(self._sweeper(), name="lease-sweeper"))

    async def stop(self) -> None:
        for task in [*self._workers, *self._tasks]:
            task.cancel()
        pending = {*self._workers, *self._tasks}
        while pending:
            # Re-cancel until done: a cancellation swallowed by library code must not hang shutdown.
            _, pending = await asyncio.wait(pending, timeout=1.0)
            for task in pending:
                task.cancel()
        self._workers.clear()

    def submit(self, incident_id: int, target: str = "") -> bool:
        """Queue an incident for its playbook (after it is persisted). False when the target's queue
        is full: the caller closes the incident and says so."""
        return self._queue.put(target, incident_id)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends (and logging failures)."""

        async def wrapped() -> None:
            try:
                await coro
            except Exception:  # a boundary: a background job reports, it never decides
                log.exception("background task failed")

        task = asyncio.create_task(wrapped())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self) -> None:
        while True:
            inc_id = await self._queue.get()
            try:
                await self.run_incident(inc_id)
            except Exception:  # a boundary: one incident's crash must not stop the worker
                log.exception("incident %s: runner failed", inc_id, extra={"incident": inc_id})
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued incident has been worked on (tests, and the ``run`` command)."""
        await self._queue.join()

    # -- leases: one process runs an incident at a time -----------------------------------------

    def fence(self, incident_id: int) -> Fence | None:
        """The lease this process holds on an incident (its writes carry it), or None."""
        return self._fences.get(incident_id)

    @asynccontextmanager
    async def leased(self, incident_id: int, *, wait: float = 0.0) -> AsyncIterator[Fence | None]:
        """Hold the incident's lease while working on it (None: another live process holds it;
        ``wait`` seconds are given for it to be released). A heartbeat renews it; if it is lost
        (this process paused past the lease), writes under it are refused and actions stop."""
        deadline = time.monotonic() + wait
        fence = await self.store.acquire(incident_id, self.owner, self.lease_ttl)
        while fence is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # bounded poll for another process to release it
            fence = await self.store.acquire(incident_id, self.owner, self.lease_ttl)
        if fence is None:
            yield None
            return
        self._fences[incident_id] = fence
        self._lost.discard(incident_id)
        beat = asyncio.create_task(self._heartbeat(incident_id, fence), name=f"lease-{incident_id}")
        try:
            yield fence
        finally:
            beat.cancel()
            self._fences.pop(incident_id, None)
            if incident_id not in self._lost:
                try:
                    await self.store.release(incident_id, fence)
                except StoreError as exc:  # it lapses on its own; another process may take over then
                    log.warning("incident %s: could not release its lease: %s", incident_id, exc)

    async def _heartbeat(self, incident_id: int, fence: Fence) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                held = await self.store.renew(incident_id, fence, self.lease_ttl)
            except StoreError as exc:
                log.warning("incident %s: lease renewal failed (will retry): %s", incident_id, exc)
                continue
            if not held:
                self._lost.add(incident_id)
                log.warning(
                    "incident %s: lease lost (another process took it over); this process stops working on it",
                    incident_id,
                    extra={"incident": incident_id},
                )
                return

    async def _sweeper(self) -> None:
        """Take over incidents whose process died (lease lapsed) and carry them on."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("lease sweep failed: %s", exc)

    async def sweep(self) -> list[int]:
        """One pass of the takeover: returns the incidents this process took over."""
        taken = []
        for inc_id in await self.store.lapsed(idle=self.lease_ttl):
            if inc_id in self._fences:
                continue  # this process is working on it right now
            fence = await self.store.take_over(inc_id, self.owner, self.lease_ttl, idle=self.lease_ttl)
            if fence is None:
                continue  # another process was first, or the holder came back
            taken.append(inc_id)
            inc = await self.store.get_incident(inc_id, steps=False)
            log.warning(
                "incident %s: taken over from a process that stopped (token %s)",
                inc_id,
                fence.token,
                extra={"incident": inc_id},
            )
            await self.store.release(inc_id, fence)
            if inc.status in (IncidentState.NEW, IncidentState.DIAGNOSING, IncidentState.REMEDIATING):
                self.submit(inc_id, inc.target or "")
            else:
                await self._announce(inc_id)
        return taken

    # -- targets --------------------------------------------------------------------------------

    def target_for(self, incident: Incident, *, action: bool = False) -> RedisTarget:
        """The Redis target of an incident, with a client reused across steps.

        ``action=True`` selects the target's action credentials (``action_url``) when configured.
        """
        if incident.target is None:
            raise TargetError(f"incident {incident.id} has no target")
        if incident.target_index is None:
            ad_hoc = self.pool.ad_hoc(incident.target)  # a hand-started run's target
            if ad_hoc is not None:
                return ad_hoc
            raise TargetError(
                f"target {incident.target} of incident {incident.id} is not in the config;"
                " add it to `targets` to act on it"
            )
        if incident.target_index >= len(self.config.targets):
            raise TargetError(
                f"target {incident.target} of incident {incident.id} is not in the config any more;"
                " add it to `targets` to act on it"
            )
        t = self.pool.get(incident.target_index, incident.labels, action=action)
        if t.name != incident.target:
            raise TargetError(
                f"the config's target #{incident.target_index} is now {t.name}, not {incident.target}"
                " as when the incident opened; not acting on a different Redis"
            )
        return t

    def context(
        self,
        incident: Incident,
        target: RedisTarget,
        step_id: str,
        *,
        run_id: int | None = None,
        earlier: bool = True,
    ) -> StepContext:
        """What a step of ``incident`` may use; ``earlier=False`` hides the incident's earlier results
        (the execute-time re-plan measures afresh)."""

        async def progress(message: str) -> None:
            await self.notifier.step_progress(incident, step_id, message)

        saving: list[asyncio.Task[None]] = []

        async def checkpoint(data: dict[str, Any]) -> None:
            # Saved alongside the action, not in its way: one write in flight at a time, the
            # latest count wins, so a killed process leaves a count at most a batch or two behind
            # without a write per batch slowing the eviction down.
            if run_id is None or (saving and not saving[-1].done()):
                return
            task = asyncio.create_task(self.store.checkpoint(run_id, dict(data)))
            task.add_done_callback(_log_failed_checkpoint)
            saving[:] = [task]

        g = self.config.guardrails
        tcfg = self.config.targets[incident.target_index] if incident.target_index is not None else None
        return StepContext(
            target=target,
            labels=incident.labels,
            protected_patterns=tuple(self.config.protected_patterns),
            progress=progress,
            settings={
                "max_keys_per_run": g.max_keys_per_run,
                "max_bytes_per_run": g.max_bytes_per_run,
                "maxmemory_ceiling": tcfg.maxmemory_ceiling if tcfg else None,
                "approval_ttl": self.config.approvals.ttl,
                "plan_margin": self.config.approvals.plan_margin,
                "incident_id": incident.id,
                "step_id": step_id,
                "chart_dir": str(self.config.state_file.parent / "charts"),
                "marks": moments(incident),
                "checkpoint": checkpoint,
            },
            prometheus=self.prometheus,
            should_stop=lambda: self._should_stop(incident.id),
            earlier=tuple(
                EarlierStep(s.step_id, s.step_type, str(s.status), s.data, s.finished_at)
                for s in incident.steps
                if earlier and not s.mutating and s.status in (StepStatus.OK, StepStatus.WARNING)
            ),
        )

    async def _should_stop(self, incident_id: int) -> str | None:
        """Asked by a running action before each batch: the kill switch, or a lost lease."""
        if incident_id in self._lost:
            return "this process lost the incident's lease (another process took it over)"
        return await self.guardrails.kill_switch()

    # -- running playbooks ----------------------------------------------------------------------

    def playbook_of(self, incident: Incident) -> Playbook:
        pb = self.playbooks.get(incident.playbook or "", incident.params)
        if pb is None:
            raise NotFound(f"playbook {incident.playbook!r} of incident {incident.id} is not loaded")
        return pb

    async def run_incident(self, incident_id: int) -> Incident:
        """Run (or resume) an incident's playbook from its next step until it ends or waits."""
        async with self._locks[incident_id], self.leased(incident_id) as fence:
            inc = await self.store.get_incident(incident_id)
            if fence is None:
                return inc  # another live process runs it
            if inc.status not in (IncidentState.NEW, IncidentState.DIAGNOSING, IncidentState.REMEDIATING):
                return inc
            first = inc.status == IncidentState.NEW and inc.next_step == 0
            try:
                pb = self.playbook_of(inc)
                target = self.target_for(inc)
            except BotError as exc:
                await self.store.fail(inc.id, str(exc), target=inc.target, fence=fence)
                return await self._announce(inc.id)
            if inc.status == IncidentState.NEW and not await self.store.begin(inc.id, fence=fence):
                return await self.store.get_incident(inc.id)
            inc = await self.store.get_incident(inc.id)
            if first:
                await self.notifier.incident_opened(inc)
            return await self.advance(inc, pb, target)

    async def advance(self, inc: Incident, pb: Playbook, target: RedisTarget) -> Incident:
        """Run steps from the incident's next step: until the end, a gate that waits, or a stop."""
        idx = inc.next_step
        while idx < len(pb.steps):
            step = pb.steps[idx]
            inc = await self.store.get_incident(inc.id)
            if inc.alert_status == AlertStatus.RESOLVED or inc.status not in (
                IncidentState.DIAGNOSING,
                IncidentState.REMEDIATING,
            ):
                return inc
            if step.when == "unresolved" and self.verified(inc, pb):
                await self._skip(inc, idx, step, "skipped: an earlier check shows the problem is fixed")
            elif step.type.verifies and self.dry_run(inc, pb) and any(s.mutating for s in pb.steps[:idx]):
                # A check after actions that only reported their plans would wait its whole `within`
                # for a change nothing made, then report a failure nobody caused. (A check with no
                # action before it is a diagnostic, e.g. "is the hit rate still low": it runs.)
                await self._skip(
                    inc, idx, step, "skipped: dry run, no action ran, so there is nothing to verify"
                )
            elif step.mutating:
                if await self.gate(inc, pb, idx, step, target):  # type: ignore[attr-defined]
                    return await self.store.get_incident(inc.id)
            else:
                run = await self._run_readonly(inc, idx, step, target)
                if run.status in FAILED_STATUSES and step.on_failure == "stop":
                    await self.store.finish(
                        inc.id,
                        IncidentState.FAILED,
                        f"stopped: step {step.id} {run.status}",
                        fence=self.fence(inc.id),
                    )
                    return await self._announce(inc.id)
            idx += 1
        return await self._finish(inc.id, pb)

    async def _finish(self, incident_id: int, pb: Playbook) -> Incident:
        inc = await self.store.get_incident(incident_id)
        acted = any(s.mutating and s.status == StepStatus.OK for s in inc.steps)
        checks = self._checks(inc, pb)
        readonly = [s for s in inc.steps if not s.mutating and s.status != StepStatus.SKIPPED]
        errors = [s for s in readonly if s.status in (StepStatus.ERROR, StepStatus.TIMEOUT)]
        if acted and checks:
            state = IncidentState.VERIFIED if checks[-1].status == StepStatus.OK else IncidentState.FAILED
            note = "the action helped" if state == IncidentState.VERIFIED else "the action did not help"
        elif acted:
            state, note = IncidentState.VERIFIED, "action executed (no verification step)"
        elif readonly and len(errors) == len(readonly):
            state = IncidentState.FAILED
            note = f"diagnosis failed: every step errored ({errors[0].step_id}: {errors[0].error or errors[0].summary})"
        else:
            state, note = IncidentState.DIAGNOSED, inc.note or "diagnostics complete"
            if errors:
                note += f"; {len(errors)} step(s) failed: {', '.join(s.step_id for s in errors)}"
        await self.store.finish(incident_id, state, note, fence=self.fence(incident_id))
        return await self._announce(incident_id)

    async def _announce(self, incident_id: int) -> Incident:
        inc = await self.store.get_incident(incident_id)
        await self.notifier.incident_updated(inc)
        return inc

    @staticmethod
    def _checks(inc: Incident, pb: Playbook) -> list[StepRun]:
        verifying = {s.id for s in pb.steps if s.type.verifies}
        return [s for s in inc.steps if s.step_id in verifying and s.status in CHECKED]

    def dry_run(self, inc: Incident, pb: Playbook) -> bool:
        return self.config.guardrails.dry_run or pb.dry_run or inc.dry_run

    def verified(self, inc: Incident, pb: Playbook) -> bool:
        checks = self._checks(inc, pb)
        return bool(checks) and checks[-1].status == StepStatus.OK

    async def _skip(self, inc: Incident, idx: int, step: Step, why: str) -> None:
        fence = self.fence(inc.id)
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, step.mutating, fence=fence)
        run = await self.store.finish_step(
            run_id, StepResult(StepStatus.SKIPPED, why), next_step=idx + 1, target=inc.target, fence=fence
        )
        await self.notifier.step_finished(inc, run)

    async def timed(
        self, step: Step, fn: Callable[[], Awaitable[Any]], incident_id: int | None = None
    ) -> tuple[Any, StepStatus, str | None]:
        """Run a step function with its timeout; map failures to a status and a human message."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow an outer cancellation.
            async with asyncio.timeout(step.timeout):
                return await fn(), StepStatus.OK, None
        except TimeoutError:
            return None, StepStatus.TIMEOUT, f"timed out after {format_duration(step.timeout)}"
        except StepError as exc:
            self.metrics.step_error(exc)
            return exc, StepStatus.ERROR, str(exc)
        except BotError as exc:
            return exc, StepStatus.ERROR, str(exc)
        except Exception as exc:  # a boundary that reports: a bug in a step must not take the incident down
            log.exception(
                "step %s (%s) crashed",
                step.id,
                step.type.name,
                extra={"incident": incident_id, "step": step.id},
            )
            return None, StepStatus.ERROR, f"unexpected error: {type(exc).__name__}: {exc}"

    @staticmethod
    async def located(target: RedisTarget, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``fn()`` after asking Sentinel where the primary is now (nothing to ask for a URL target),
        so a step or action never runs against a primary that failed over since the last one."""
        async with redis_errors(target.name):
            await target.locate()
        return await fn()

    async def _run_readonly(self, inc: Incident, idx: int, step: Step, target: RedisTarget) -> StepRun:
        run_fn = step.type.run
        assert run_fn is not None
        ctx = self.context(inc, target, step.id)
        fence = self.fence(inc.id)
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, False, fence=fence)
        out, status, error = await self.timed(
            step, lambda: self.located(target, lambda: run_fn(ctx, step.params)), inc.id
        )
        if isinstance(out, StepOutput):
            result = StepResult(StepStatus(out.status), out.summary, out.details, out.data)
            if isinstance(path := out.data.get("chart_path"), str) and (
                png := await asyncio.to_thread(chart_bytes, path)
            ):
                await self.store.save_chart(run_id, png)  # any replica's incident page shows it
        else:
            result = StepResult(status, error or "", error=error)
        run = await self.store.finish_step(run_id, result, next_step=idx + 1, target=target.name, fence=fence)
        self.metrics.step_finished(step.type.name, str(run.status), run.duration_s)
        await self.notifier.step_finished(inc, run)
        return run
