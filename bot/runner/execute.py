"""Executing an approved plan: re-check, claim, act, record, then carry on with verification.

Nothing here catches broadly around a decision: a check that fails cancels the approval with its
reason (one lifecycle event), and the action itself runs inside the step timeout wrapper, whose
outcome (including a stop by the kill switch) is recorded by the ``executed`` event. An error
outside those (the store failing) propagates; the approval then stays ``executing`` under this
process's name, and a restart marks it interrupted: never re-run without a new approval.
"""

from __future__ import annotations

import logging
import time

from bot.errors import ActionStopped, StepError
from bot.incidents import Approval, ApprovalState, Incident, IncidentState, StepStatus
from bot.lifecycle import AlertStatus
from bot.playbook import Playbook, Step
from bot.runner.core import FAILED_STATUSES
from bot.runner.decide import DecideMixin, DecisionReport
from bot.steps import Plan, StepOutput
from bot.store import StepResult

log = logging.getLogger(__name__)


def plan_drift(approved: Plan, fresh: Plan, margin: float) -> str | None:
    """Why a freshly computed plan is no longer what was approved, or None when it still holds.

    The target and what the action does must be identical; estimated keys and bytes may grow by at
    most ``margin`` (a live cache keeps changing) plus a small absolute slack for tiny plans.
    """
    if approved.node != fresh.node:
        return f"the primary moved from {approved.node} to {fresh.node} (a failover) since the plan was made"
    for name in ("action", "target", "db", "pattern", "params"):
        if getattr(approved, name) != getattr(fresh, name):
            return f"the plan's {name.replace('params', 'parameters')} changed"
    if approved.changes != fresh.changes:
        return "the changes the action would make are different now"
    for name, slack in (("estimated_keys", 100), ("estimated_bytes", 1 << 20)):
        old, new = getattr(approved, name), getattr(fresh, name)
        if old is not None and new is not None and new > old * (1 + margin) + slack:
            return f"{name.replace('_', ' ')} grew from {old} to {new} (more than {margin:.0%} over the approved plan)"
    return None


class ExecuteMixin(DecideMixin):
    async def _refuse(
        self, inc: Incident, ap: Approval, why: str, state: IncidentState = IncidentState.DIAGNOSED
    ) -> DecisionReport:
        """The approved plan will not run: cancel it (one event) and say why."""
        await self.store.cancel(ap.id, why, incident_state=state, actor="bot", target=inc.target)
        fresh = await self.store.get_incident(inc.id)
        run = next((s for s in fresh.steps if s.id == ap.step_run_id), None)
        if run is not None:
            await self.notifier.step_finished(fresh, run)
        await self.notifier.incident_updated(fresh)
        return DecisionReport(inc.id, ap, f"not executed: {why}", extra={"refused": True})

    async def _precheck(self, inc: Incident, ap: Approval, pb: Playbook) -> tuple[str, IncidentState] | None:
        step = pb.steps[ap.step_index] if ap.step_index < len(pb.steps) else None
        if step is None or step.id != ap.step_id or step.type.name != ap.step_type:
            return "the playbook changed since the approval was asked", IncidentState.DIAGNOSED
        if inc.alert_status != AlertStatus.FIRING:
            return "the alert resolved before the action ran", IncidentState.RESOLVED
        if self.dry_run(inc, pb):
            return "dry-run is on now: actions only report their plan", IncidentState.DIAGNOSED
        return None

    async def execute(self, incident_id: int, ap: Approval, who: str) -> DecisionReport:
        async with self._locks[incident_id], self.leased(incident_id, wait=self.lease_ttl) as fence:
            inc = await self.store.get_incident(incident_id)
            if fence is None:
                return await self._refuse(
                    inc, ap, "another process held the incident for longer than a lease period; approve again"
                )
            pb = self.playbook_of(inc)
            refused = await self._precheck(inc, ap, pb)
            if refused is not None:
                return await self._refuse(inc, ap, *refused)
            step = pb.steps[ap.step_index]
            target = self.target_for(inc)
            plan = Plan.model_validate(ap.plan)
            if plan.digest() != ap.plan_hash:
                return await self._refuse(inc, ap, "the stored plan does not match the approved hash")
            if (plan.target, plan.db) != (target.name, target.db):
                return await self._refuse(
                    inc, ap, f"the plan is for {plan.target} db {plan.db}, not {target.name} db {target.db}"
                )
            reason = await self.guardrails.reason(target.name)
            if reason is not None:
                return await self._refuse(inc, ap, reason, IncidentState.ESCALATED)
            fresh, error, _, _ = await self.plan(inc, step, target, reuse=False)
            if fresh is None:
                return await self._refuse(inc, ap, f"re-check failed: {error}")
            drift = plan_drift(plan, fresh, self.config.approvals.plan_margin)
            if drift is None and plan.node is not None:
                # Where the action will connect, asked once more: a failover may have happened just now.
                acting = self.target_for(inc, action=True)
                try:
                    node = await self.located(acting, acting.locate)
                except StepError as exc:
                    return await self._refuse(inc, ap, f"re-check failed: {exc}")
                if node != plan.node:
                    drift = f"the primary moved from {plan.node} to {node} (a failover) just before acting"
            if drift is not None:
                return await self._ask_again(inc, ap, pb, step, drift)
            run_id = await self.store.claim(
                ap.id,
                summary=f"approved by {', '.join(ap.approvers)}: {plan.summary}",
                actor=who,
                target=target.name,
                fence=fence,
            )
            if run_id is None:
                now = await self.store.get_approval(ap.id)
                if now.state == ApprovalState.APPROVED:  # not claimed: the alert resolved meanwhile
                    return await self._refuse(
                        inc, ap, "the alert resolved before the action ran", IncidentState.RESOLVED
                    )
                return DecisionReport(
                    inc.id, now, "not executed here: another process is already executing it"
                )
            await self._announce(inc.id)
            return await self._act(inc, pb, step, plan, ap, who, run_id)

    async def _ask_again(
        self, inc: Incident, ap: Approval, pb: Playbook, step: Step, drift: str
    ) -> DecisionReport:
        await self.store.cancel(
            ap.id,
            f"{drift}; asking again",
            incident_state=IncidentState.REMEDIATING,
            state=ApprovalState.SUPERSEDED,
            next_step=ap.step_index,
            actor="bot",
            target=inc.target,
        )
        waiting = await self.gate(  # from fresh measurements: the earlier ones just proved stale
            await self.store.get_incident(inc.id), pb, ap.step_index, step, self.target_for(inc), reuse=False
        )
        if not waiting:
            await self.advance(await self.store.get_incident(inc.id), pb, self.target_for(inc))
        new_ap = await self.store.pending_approval(inc.id)
        return DecisionReport(
            inc.id,
            new_ap or ap,
            f"not executed: {drift}; a new approval is needed for the new plan",
            extra={"asked_again": new_ap is not None, "refused": True},
        )

    async def _act(
        self, inc: Incident, pb: Playbook, step: Step, plan: Plan, ap: Approval, who: str, run_id: int
    ) -> DecisionReport:
        execute = step.type.execute
        assert execute is not None
        target = self.target_for(inc, action=True)
        ctx = self.context(inc, target, step.id, run_id=run_id)
        started = time.monotonic()
        out, status, error = await self.timed(step, lambda: execute(ctx, step.params, plan), inc.id)
        data: dict[str, object] = {}
        if isinstance(out, StepOutput):
            status, data = StepStatus(out.status), dict(out.data)
            result = StepResult(
                status, out.summary, out.details, out.data, plan=ap.plan, plan_hash=ap.plan_hash
            )
        elif isinstance(out, ActionStopped):
            data = {**out.done, "stopped": out.reason}
            status = StepStatus.FAILED
            result = StepResult(status, f"stopped part-way: {out.reason}", data=data, error=error)
        else:
            result = StepResult(status, error or "", error=error)
        ok = status not in FAILED_STATUSES
        run = await self.store.executed(
            ap.id,
            run_id,
            result,
            ok=ok,
            incident_state=IncidentState.REMEDIATING if ok else IncidentState.FAILED,
            note=None if ok else f"{step.id} failed: {result.error or result.summary}",
            next_step=ap.step_index + 1,
            actor=who,
            target=target.name,
            detail={
                "step": step.id,
                "type": step.type.name,
                "error": error,
                "keys_affected": data.get("deleted"),
                "stopped": data.get("stopped"),
                "duration_s": round(time.monotonic() - started, 3),
            },
            fence=self.fence(inc.id),
        )
        self.metrics.step_finished(step.type.name, str(run.status), run.duration_s)
        deleted = data.get("deleted")
        self.metrics.action_executed(step.type.name, ok, deleted if isinstance(deleted, int) else None)
        fresh = await self.store.get_incident(inc.id)
        await self.notifier.step_finished(fresh, run)
        if not ok:
            await self.notifier.incident_updated(fresh)
            return DecisionReport(
                inc.id, ap, f"executed, but it failed: {result.error or result.summary}", True, run
            )
        final = await self.advance(fresh, pb, self.target_for(inc))
        return DecisionReport(
            inc.id, ap, f"executed: {run.summary}", True, run, extra={"incident_status": str(final.status)}
        )
