"""Runs a playbook for an incident: steps in order, approval gates, execution, verification.

Read-only steps run at once. A mutating step first builds its exact plan; the bot then asks for an
approval bound to the plan's hash and stops there. A decision (CLI or chat) resumes the incident:
the bot re-checks that the alert still fires and the plan still holds, executes, then runs the
remaining steps (verification). The store is the source of truth, so any process holding a Runner
(the service, or the ``approve`` CLI) can carry an incident forward, and a compare-and-set makes
sure only one of them executes an approved plan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.config import Config
from bot.durations import format_duration
from bot.errors import AlreadyDecided, ApprovalError, BotError, NotFound, StepError, TargetError
from bot.identity import Actor
from bot.incidents import Approval, ApprovalState, Incident, IncidentState, StepRun, StepStatus
from bot.metrics import Metrics
from bot.notifier import NullNotifier, SafeNotifier
from bot.playbook import Playbook, PlaybookSet, Step
from bot.prom import PromClient
from bot.redisconn import RedisTarget
from bot.steps import Plan, StepContext, StepOutput
from bot.store import Store

log = logging.getLogger(__name__)

FAILED_STATUSES = frozenset({StepStatus.FAILED, StepStatus.ERROR, StepStatus.TIMEOUT})
KILL_SWITCH = "kill_switch"


@dataclass
class DecisionReport:
    """What a decision led to, for the person who made it."""

    incident_id: int
    approval: Approval
    message: str
    executed: bool = False
    result: StepRun | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Carries incidents through their playbooks. One per process; shares the store with the others."""

    def __init__(
        self,
        config: Config,
        playbooks: PlaybookSet,
        store: Store,
        notifier: Any = None,
        *,
        ad_hoc_targets: dict[str, RedisTarget] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.playbooks = playbooks
        self.store = store
        self.metrics = metrics or Metrics()
        chat = "slack" if "slack" in type(notifier).__module__ else "chat"
        self.notifier = SafeNotifier(
            notifier or NullNotifier(), on_failure=lambda _name: self.metrics.call_error(chat)
        )
        self.prometheus: PromClient | None = None
        if config.prometheus is not None:
            p = config.prometheus
            self.prometheus = PromClient.from_env(
                p.url,
                timeout=p.timeout,
                selector=p.selector,
                verify_tls=p.verify_tls,
                on_error=lambda: self.metrics.call_error("prometheus"),
            )
        self._targets: dict[str, RedisTarget] = dict(ad_hoc_targets or {})
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the last run and start the workers."""
        interrupted = await self.store.mark_interrupted()
        for inc_id in interrupted:
            log.warning(
                "incident %s: a remediation was interrupted by a restart and will not be re-run",
                inc_id,
                extra={"incident": inc_id},
            )
        for inc_id in await self.store.incidents_to_resume():
            self.submit(inc_id)
        for i in range(self.config.runner.concurrency):
            self._workers.append(asyncio.create_task(self._worker(), name=f"runner-{i}"))

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
        for t in self._targets.values():
            await t.close()
        self._targets.clear()
        if self.prometheus is not None:
            await self.prometheus.close()

    def submit(self, incident_id: int) -> None:
        """Queue an incident for its playbook; the webhook calls this after persisting."""
        self._queue.put_nowait(incident_id)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends (and logging failures)."""

        async def wrapped() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed")

        task = asyncio.create_task(wrapped())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self) -> None:
        while True:
            inc_id = await self._queue.get()
            try:
                await self.run_incident(inc_id)
            except Exception:
                log.exception("incident %s: runner failed", inc_id, extra={"incident": inc_id})
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued incident has been worked on (tests, and the ``run`` command)."""
        await self._queue.join()

    # -- targets --------------------------------------------------------------------------------

    def target_for(self, incident: Incident, *, action: bool = False) -> RedisTarget:
        """The Redis target of an incident, with a client reused across steps.

        ``action=True`` selects the target's action credentials (``action_url``) when configured.
        """
        if incident.target is None:
            raise TargetError(f"incident {incident.id} has no target")
        if incident.target_index is None:
            if incident.target in self._targets:  # a hand-started run's ad-hoc target
                return self._targets[incident.target]
            raise TargetError(
                f"target {incident.target} of incident {incident.id} is not in the config;"
                " add it to `targets` to act on it"
            )
        if incident.target_index >= len(self.config.targets):
            raise TargetError(
                f"target {incident.target} of incident {incident.id} is not in the config any more;"
                " add it to `targets` to act on it"
            )
        t = self.config.targets[incident.target_index].resolve(
            incident.labels, self.config.runner.redis_timeout, action=action
        )
        if t.name != incident.target:
            raise TargetError(
                f"the config's target #{incident.target_index} is now {t.name}, not {incident.target}"
                " as when the incident opened; not acting on a different Redis"
            )
        # Keyed by the resolved URL: a templated target resolves to a different Redis per alert.
        key = f"{'action' if action else 'read'}:{t.url}"
        if key in self._targets:
            return self._targets[key]
        self._targets[key] = t
        return t

    def _context(self, incident: Incident, target: RedisTarget, step_id: str) -> StepContext:
        async def progress(message: str) -> None:
            await self.notifier.step_progress(incident, step_id, message)

        g = self.config.guardrails
        tcfg = self.config.targets[incident.target_index] if incident.target_index is not None else None
        return StepContext(
            target=target,
            labels=incident.labels,
            protected_patterns=tuple(self.config.protected_patterns),
            progress=progress,
            settings={
                "max_keys_per_run": g.max_keys_per_run,
                "maxmemory_ceiling": tcfg.maxmemory_ceiling if tcfg else None,
                "approval_ttl": self.config.approvals.ttl,
                "plan_margin": self.config.approvals.plan_margin,
                "incident_id": incident.id,
                "step_id": step_id,
                "chart_dir": str(self.config.state_file.parent / "charts"),
            },
            prometheus=self.prometheus,
        )

    # -- running playbooks ----------------------------------------------------------------------

    def playbook_of(self, incident: Incident) -> Playbook:
        pb = self.playbooks.get(incident.playbook or "")
        if pb is None:
            raise NotFound(f"playbook {incident.playbook!r} of incident {incident.id} is not loaded")
        return pb

    async def run_incident(self, incident_id: int) -> Incident:
        """Run (or resume) an incident's playbook from its next step until it ends or waits."""
        async with self._locks[incident_id]:
            inc = await self.store.get_incident(incident_id)
            if inc.status not in (IncidentState.NEW, IncidentState.DIAGNOSING, IncidentState.REMEDIATING):
                return inc
            first = inc.status == IncidentState.NEW and inc.next_step == 0
            try:
                pb = self.playbook_of(inc)
                target = self.target_for(inc)
            except BotError as exc:
                await self.store.update_incident(inc.id, state=IncidentState.FAILED, note=str(exc))
                inc = await self.store.get_incident(inc.id)
                await self.notifier.incident_updated(inc)
                return inc
            if inc.status == IncidentState.NEW:
                await self.store.update_incident(inc.id, state=IncidentState.DIAGNOSING)
                inc = await self.store.get_incident(inc.id)
            if first:
                await self.notifier.incident_opened(inc)
            return await self._continue(inc, pb, target)

    async def _continue(self, inc: Incident, pb: Playbook, target: RedisTarget) -> Incident:
        idx = inc.next_step
        while idx < len(pb.steps):
            step = pb.steps[idx]
            fresh = await self.store.get_incident(inc.id, steps=False)
            if fresh.alert_status == "resolved":
                return await self.store.get_incident(inc.id)
            inc = await self.store.get_incident(inc.id)
            if step.when == "unresolved" and self._verified(inc):
                await self._skip(inc, idx, step, "skipped: an earlier check shows the problem is fixed")
                idx += 1
                await self.store.update_incident(inc.id, next_step=idx)
                continue
            if step.mutating:
                waiting = await self._gate(inc, pb, idx, step, target)
                if waiting is not None:
                    return waiting
                idx += 1
                await self.store.update_incident(inc.id, next_step=idx)
                continue
            run = await self._run_readonly(inc, idx, step, target)
            idx += 1
            await self.store.update_incident(inc.id, next_step=idx)
            if run.status in FAILED_STATUSES and step.on_failure == "stop":
                await self.store.update_incident(
                    inc.id, state=IncidentState.FAILED, note=f"stopped: step {step.id} {run.status}"
                )
                return await self._announce(inc.id)
        return await self._finish(inc.id)

    async def _finish(self, incident_id: int) -> Incident:
        inc = await self.store.get_incident(incident_id)
        acted = any(s.mutating and s.status == StepStatus.OK for s in inc.steps)
        checks = [s for s in inc.steps if s.data.get("verification")]
        if acted and checks:
            last = checks[-1]
            state = IncidentState.VERIFIED if last.status == StepStatus.OK else IncidentState.FAILED
            note = "the action helped" if state == IncidentState.VERIFIED else "the action did not help"
        elif acted:
            state, note = IncidentState.VERIFIED, "action executed (no verification step)"
        else:
            state, note = IncidentState.DIAGNOSED, inc.note or "diagnostics complete"
        if inc.alert_status == "resolved":
            state = IncidentState.RESOLVED
        await self.store.update_incident(incident_id, state=state, note=note)
        return await self._announce(incident_id)

    async def _announce(self, incident_id: int) -> Incident:
        inc = await self.store.get_incident(incident_id)
        await self.notifier.incident_updated(inc)
        return inc

    @staticmethod
    def _verified(inc: Incident) -> bool:
        checks = [s for s in inc.steps if s.data.get("verification")]
        return bool(checks) and checks[-1].status == StepStatus.OK

    async def _skip(self, inc: Incident, idx: int, step: Step, why: str) -> None:
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, step.mutating)
        run = await self.store.finish_step(run_id, StepStatus.SKIPPED, summary=why, audit_target=inc.target)
        await self.notifier.step_finished(inc, run)

    async def _timed(
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
            return None, StepStatus.ERROR, str(exc)
        except BotError as exc:
            return None, StepStatus.ERROR, str(exc)
        except Exception as exc:  # a bug in a step must not take the incident down with it
            log.exception(
                "step %s (%s) crashed",
                step.id,
                step.type.name,
                extra={"incident": incident_id, "step": step.id},
            )
            return None, StepStatus.ERROR, f"unexpected error: {type(exc).__name__}: {exc}"

    async def _run_readonly(self, inc: Incident, idx: int, step: Step, target: RedisTarget) -> StepRun:
        run_fn = step.type.run
        assert run_fn is not None
        ctx = self._context(inc, target, step.id)
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, False)
        out, status, error = await self._timed(step, lambda: run_fn(ctx, step.params), inc.id)
        if isinstance(out, StepOutput):
            status = StepStatus(out.status)
            run = await self.store.finish_step(
                run_id,
                status,
                summary=out.summary,
                details=out.details,
                data=out.data,
                audit_target=target.name,
            )
        else:
            run = await self.store.finish_step(
                run_id, status, summary=error or "", error=error, audit_target=target.name
            )
        self.metrics.step_finished(step.type.name, str(run.status), run.duration_s)
        await self.notifier.step_finished(inc, run)
        return run

    # -- approval gates -------------------------------------------------------------------------

    async def _plan(
        self, inc: Incident, step: Step, target: RedisTarget
    ) -> tuple[Plan | None, str | None, StepStatus]:
        plan_fn = step.type.plan
        assert plan_fn is not None
        ctx = self._context(inc, target, step.id)
        plan, status, error = await self._timed(step, lambda: plan_fn(ctx, step.params), inc.id)
        return plan, error, status

    async def guard_reason(self, target: str) -> str | None:
        """Why no action may run on ``target`` now (kill switch, circuit breaker), or None."""
        reason = await self._guard_reason(target)
        self.metrics.breaker(target, reason is not None)
        return reason

    async def _guard_reason(self, target: str) -> str | None:
        g = self.config.guardrails
        if g.kill_switch:
            return "the kill switch is on in the config (guardrails.kill_switch): no actions run"
        switch = await self.store.get_setting(KILL_SWITCH)
        if switch:
            return f"the kill switch is on ({switch}): no actions run; `remediation-bot kill-switch off` lifts it"
        count, failures = await self.store.action_history(target, time.time() - 3600)
        if count >= g.max_actions_per_hour:
            return (
                f"circuit breaker: {count} actions on {target} in the last hour (limit"
                f" {g.max_actions_per_hour}); a human should look before the bot does more"
            )
        if failures >= g.pause_after_failures:
            return (
                f"circuit breaker: the last {failures} actions on {target} failed; actions are paused"
                " until someone runs `remediation-bot breaker-reset`"
            )
        return None

    def _dry_run(self, inc: Incident, pb: Playbook) -> bool:
        return self.config.guardrails.dry_run or pb.dry_run or inc.dry_run

    async def _gate(
        self, inc: Incident, pb: Playbook, idx: int, step: Step, target: RedisTarget
    ) -> Incident | None:
        """Plan a mutating step and ask for approval. Returns the incident if it now waits, else None."""
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, True)
        plan, error, status = await self._plan(inc, step, target)
        if plan is None:
            run = await self.store.finish_step(
                run_id, status, summary=f"no plan: {error}", error=error, audit_target=target.name
            )
            await self.notifier.step_finished(inc, run)
            return None
        digest = plan.digest()
        plan_data = plan.model_dump(mode="json")
        if self._dry_run(inc, pb):
            run = await self.store.finish_step(
                run_id,
                StepStatus.PLANNED,
                summary=f"dry run, would: {plan.summary}",
                plan=plan_data,
                plan_hash=digest,
                audit_target=target.name,
            )
            await self.notifier.step_finished(inc, run)
            return None
        if plan.estimated_keys == 0 and plan.action == "redis.evict":
            run = await self.store.finish_step(
                run_id,
                StepStatus.SKIPPED,
                summary=f"nothing to do: {plan.summary}",
                plan=plan_data,
                plan_hash=digest,
                audit_target=target.name,
            )
            await self.notifier.step_finished(inc, run)
            return None
        reason = await self.guard_reason(target.name)
        if reason is not None:
            run = await self.store.finish_step(
                run_id,
                StepStatus.ESCALATED,
                summary=f"escalated: {reason}",
                plan=plan_data,
                plan_hash=digest,
                audit_target=target.name,
            )
            await self.store.update_incident(
                inc.id, state=IncidentState.ESCALATED, note=reason, next_step=idx + 1
            )
            await self.store.audit(
                "incident.escalated", incident_id=inc.id, target=target.name, detail={"reason": reason}
            )
            await self.notifier.step_finished(inc, run)
            return await self._announce(inc.id)
        approval = await self.store.create_approval(
            incident_id=inc.id,
            step_run_id=run_id,
            step_id=step.id,
            step_index=idx,
            step_type=step.type.name,
            plan=plan_data,
            plan_hash=digest,
            required=plan.approvers_required,
            ttl=self.config.approvals.ttl,
            target=target.name,
        )
        await self.store.finish_step(
            run_id,
            StepStatus.AWAITING_APPROVAL,
            summary=f"waiting for approval: {plan.summary}",
            plan=plan_data,
            plan_hash=digest,
            audit_target=target.name,
        )
        await self.store.update_incident(inc.id, state=IncidentState.AWAITING_APPROVAL, next_step=idx)
        inc = await self.store.get_incident(inc.id)
        await self.notifier.approval_requested(inc, approval)
        await self.notifier.incident_updated(inc)
        return inc

    # -- decisions ------------------------------------------------------------------------------

    async def decide(
        self,
        incident_id: int,
        who: Actor,
        approve: bool,
        *,
        approval_id: int | None = None,
        plan_hash: str | None = None,
    ) -> DecisionReport:
        """Approve or deny the pending step of an incident; on a complete approval, execute it here.

        ``plan_hash``, when given, is the plan the person saw: if the pending approval is for a
        different plan by now (it was re-planned meanwhile), the decision is refused.
        Raises :class:`AlreadyDecided` (with who decided) when someone was first, and
        :class:`NotFound` when the incident has nothing pending.
        """
        if approval_id is None:
            pending = await self.store.pending_approval(incident_id)
            if pending is None:
                inc = await self.store.get_incident(incident_id, steps=False)
                last = await self.store.latest_approval(incident_id)
                if last is not None:
                    raise AlreadyDecided(str(last.state), last.decided_by, last.decided_at)
                raise NotFound(f"incident {incident_id} ({inc.status}) has no step waiting for approval")
            approval_id = pending.id
        inc = await self.store.get_incident(incident_id, steps=False)
        if plan_hash is not None:
            current = await self.store.get_approval(approval_id)
            if current.plan_hash != plan_hash:
                raise ApprovalError(
                    "the plan changed since you looked at it; look again (`incidents ID`) and decide on the new one"
                )
        # identity: the approval rules (requester, cli_approvers, two-person) run in the store's decide.
        outcome = await self.store.decide(
            approval_id, who, approve, policy=self.config.approvals, target=inc.target
        )
        ap = outcome.approval
        if not outcome.complete:
            await self.notifier.approval_requested(await self.store.get_incident(incident_id), ap)
            return DecisionReport(
                incident_id, ap, f"approved by {who.label}; needs {outcome.needed} more approver(s)"
            )
        self.metrics.approval_closed(ap)
        await self.notifier.approval_closed(await self.store.get_incident(incident_id), ap)
        if not approve:
            return await self._denied(incident_id, ap, who.label)
        try:
            return await self._execute(incident_id, ap, who.label)
        except Exception as exc:
            # Never leave an approved action dangling: close it and say why.
            log.exception("incident %s: executing approval %s failed", incident_id, ap.id)
            inc = await self.store.get_incident(incident_id)
            return await self._refuse(inc, ap, f"{type(exc).__name__}: {exc}")

    async def _denied(self, incident_id: int, ap: Approval, who: str) -> DecisionReport:
        async with self._locks[incident_id]:
            run = await self.store.finish_step(
                ap.step_run_id,
                StepStatus.DENIED,
                summary=f"denied by {who}",
                plan=ap.plan,
                plan_hash=ap.plan_hash,
            )
            await self.store.update_incident(
                incident_id,
                state=IncidentState.DIAGNOSED,
                note=f"{ap.step_id} denied by {who}; no further actions",
            )
            inc = await self.store.get_incident(incident_id)
            await self.notifier.step_finished(inc, run)
            await self.notifier.incident_updated(inc)
        return DecisionReport(incident_id, ap, f"denied by {who}: nothing was changed", result=run)

    async def _execute(self, incident_id: int, ap: Approval, who: str) -> DecisionReport:
        async with self._locks[incident_id]:
            inc = await self.store.get_incident(incident_id)
            pb = self.playbook_of(inc)
            step = pb.steps[ap.step_index] if ap.step_index < len(pb.steps) else None
            if step is None or step.id != ap.step_id or step.type.name != ap.step_type:
                return await self._refuse(inc, ap, "the playbook changed since the approval was asked")
            if inc.alert_status != "firing":
                return await self._refuse(inc, ap, "the alert resolved before the action ran")
            if self._dry_run(inc, pb):
                return await self._refuse(inc, ap, "dry-run is on now: actions only report their plan")
            target = self.target_for(inc)
            plan = Plan.model_validate(ap.plan)
            if plan.digest() != ap.plan_hash:
                return await self._refuse(inc, ap, "the stored plan does not match the approved hash")
            if (plan.target, plan.db) != (target.name, target.db):
                return await self._refuse(
                    inc, ap, f"the plan is for {plan.target} db {plan.db}, not {target.name} db {target.db}"
                )
            reason = await self.guard_reason(target.name)
            if reason is not None:
                await self.store.set_approval_state(ap.id, [ApprovalState.APPROVED], ApprovalState.CANCELLED)
                await self.store.update_incident(inc.id, state=IncidentState.ESCALATED, note=reason)
                await self._announce(inc.id)
                return DecisionReport(incident_id, ap, f"not executed: {reason}")
            fresh, error, _ = await self._plan(inc, step, target)
            if fresh is None:
                return await self._refuse(inc, ap, f"re-check failed: {error}")
            drift = plan_drift(plan, fresh, self.config.approvals.plan_margin)
            if drift is not None:
                await self.store.set_approval_state(ap.id, [ApprovalState.APPROVED], ApprovalState.SUPERSEDED)
                await self.store.update_incident(
                    inc.id, state=IncidentState.REMEDIATING, next_step=ap.step_index
                )
                await self.store.finish_step(
                    ap.step_run_id,
                    StepStatus.CANCELLED,
                    summary=f"not executed: {drift}; asking again",
                    plan=ap.plan,
                    plan_hash=ap.plan_hash,
                )
                waiting = await self._gate(
                    await self.store.get_incident(inc.id), pb, ap.step_index, step, target
                )
                new_ap = await self.store.pending_approval(inc.id)
                return DecisionReport(
                    incident_id,
                    new_ap or ap,
                    f"not executed: {drift}; a new approval is needed for the new plan",
                    extra={"asked_again": waiting is not None},
                )
            await self.store.update_incident(inc.id, state=IncidentState.REMEDIATING)
            await self.store.finish_step(
                ap.step_run_id,
                StepStatus.APPROVED,
                summary=f"approved by {', '.join(ap.approvers)}: {plan.summary}",
                plan=ap.plan,
                plan_hash=ap.plan_hash,
                audit_target=target.name,
                actor=who,
            )
            # The claim is atomic with "the alert still fires": a resolve that arrived during the
            # re-check wins, and two processes can never both pass this point.
            if not await self.store.claim_execution(ap.id):
                fresh_inc = await self.store.get_incident(inc.id)
                why = (
                    "the alert resolved before the action ran"
                    if fresh_inc.alert_status != "firing"
                    else ("another process is already executing it")
                )
                return await self._refuse(fresh_inc, ap, why)
            await self._announce(inc.id)
            run = await self._run_action(inc, step, self.target_for(inc, action=True), plan, ap, who)
            await self.store.update_incident(inc.id, next_step=ap.step_index + 1)
            if run.status in FAILED_STATUSES:
                await self.store.update_incident(
                    inc.id, state=IncidentState.FAILED, note=f"{step.id} failed: {run.error or run.summary}"
                )
                await self._announce(inc.id)
                return DecisionReport(incident_id, ap, f"executed, but it failed: {run.error}", True, run)
            final = await self._continue(await self.store.get_incident(inc.id), pb, target)
            return DecisionReport(
                incident_id,
                ap,
                f"executed: {run.summary}",
                True,
                run,
                extra={"incident_status": str(final.status)},
            )

    async def _run_action(
        self, inc: Incident, step: Step, target: RedisTarget, plan: Plan, ap: Approval, who: str
    ) -> StepRun:
        execute = step.type.execute
        assert execute is not None
        ctx = self._context(inc, target, step.id)
        run_id = await self.store.start_step(inc.id, ap.step_index, step.id, step.type.name, True)
        started = time.monotonic()
        out, status, error = await self._timed(step, lambda: execute(ctx, step.params, plan), inc.id)
        if isinstance(out, StepOutput):
            status = StepStatus(out.status)
        ok = status not in FAILED_STATUSES
        run = await self.store.finish_step(
            run_id,
            status,
            summary=out.summary if out else error or "",
            details=out.details if out else "",
            data=out.data if out else {},
            error=error,
            plan=ap.plan,
            plan_hash=ap.plan_hash,
            audit_target=target.name,
            actor=who,
        )
        await self.store.set_approval_state(
            ap.id, [ApprovalState.EXECUTING, ApprovalState.APPROVED], ApprovalState.EXECUTED
        )
        self.metrics.step_finished(step.type.name, str(run.status), run.duration_s)
        self.metrics.action_executed(step.type.name, ok, out.data.get("deleted") if out else None)
        await self.store.audit(
            "action.executed",
            incident_id=inc.id,
            actor=who,
            target=target.name,
            plan_hash=ap.plan_hash,
            detail={
                "step": step.id,
                "type": step.type.name,
                "ok": ok,
                "error": error,
                "keys_affected": (out.data.get("deleted") if out else None),
                "duration_s": round(time.monotonic() - started, 3),
                "approvers": ap.approvers,
            },
        )
        await self.notifier.step_finished(inc, run)
        return run

    async def _refuse(self, inc: Incident, ap: Approval, why: str) -> DecisionReport:
        await self.store.set_approval_state(ap.id, [ApprovalState.APPROVED], ApprovalState.CANCELLED)
        run = await self.store.finish_step(
            ap.step_run_id,
            StepStatus.CANCELLED,
            summary=f"not executed: {why}",
            plan=ap.plan,
            plan_hash=ap.plan_hash,
        )
        await self.store.audit(
            "approval.cancelled",
            incident_id=inc.id,
            target=inc.target,
            plan_hash=ap.plan_hash,
            detail={"approval_id": ap.id, "reason": why},
        )
        if inc.alert_status == "resolved":
            await self.store.update_incident(inc.id, state=IncidentState.RESOLVED)
        else:
            await self.store.update_incident(
                inc.id, state=IncidentState.DIAGNOSED, note=f"not executed: {why}"
            )
        inc = await self.store.get_incident(inc.id)
        await self.notifier.step_finished(inc, run)
        await self.notifier.incident_updated(inc)
        return DecisionReport(inc.id, ap, f"not executed: {why}")

    # -- resolution and expiry ------------------------------------------------------------------

    async def on_resolved(self, incident_id: int) -> None:
        """The alert resolved: cancel its pending approvals and update the incident's messages."""
        for ap in await self.store.open_approvals(incident_id=incident_id):
            if await self.store.set_approval_state(
                ap.id,
                [ApprovalState.PENDING],
                ApprovalState.CANCELLED,
                audit_kind="approval.cancelled",
                actor="alert resolved",
            ):
                self.metrics.approval_closed(ap, "cancelled")
                await self.store.finish_step(
                    ap.step_run_id,
                    StepStatus.CANCELLED,
                    summary="cancelled: the alert resolved",
                    plan=ap.plan,
                    plan_hash=ap.plan_hash,
                )
                await self.notifier.approval_closed(
                    await self.store.get_incident(incident_id), await self.store.get_approval(ap.id)
                )
        await self._announce(incident_id)

    async def expire_approvals(self) -> int:
        """Close approvals past their deadline as expired; returns how many."""
        now = time.time()
        n = 0
        for ap in await self.store.open_approvals():
            if ap.expires_ts > now:
                continue
            if await self.store.set_approval_state(
                ap.id,
                [ApprovalState.PENDING],
                ApprovalState.EXPIRED,
                audit_kind="approval.expired",
                actor="expiry",
            ):
                n += 1
                self.metrics.approval_closed(ap, "expired")
                await self.store.finish_step(
                    ap.step_run_id,
                    StepStatus.EXPIRED,
                    summary="expired: nobody decided in time",
                    plan=ap.plan,
                    plan_hash=ap.plan_hash,
                )
                await self.store.update_incident(
                    ap.incident_id, state=IncidentState.DIAGNOSED, note=f"approval for {ap.step_id} expired"
                )
                inc = await self.store.get_incident(ap.incident_id)
                await self.notifier.approval_closed(inc, await self.store.get_approval(ap.id))
                await self.notifier.incident_updated(inc)
        return n


def plan_drift(approved: Plan, fresh: Plan, margin: float) -> str | None:
    """Why a freshly computed plan is no longer what was approved, or None when it still holds.

    The target and what the action does must be identical; estimated keys and bytes may grow by at
    most ``margin`` (a live cache keeps changing) plus a small absolute slack for tiny plans.
    """
    for name in ("action", "target", "db", "pattern", "params"):
        if getattr(approved, name) != getattr(fresh, name):
            return f"the plan's {name.replace('params', 'parameters')} changed"
    for name, slack in (("estimated_keys", 100), ("estimated_bytes", 1 << 20)):
        old, new = getattr(approved, name), getattr(fresh, name)
        if old is not None and new is not None and new > old * (1 + margin) + slack:
            return f"{name.replace('_', ' ')} grew from {old} to {new} (more than {margin:.0%} over the approved plan)"
    return None
