"""The gate in front of every mutating step: plan it, then ask for an approval bound to the plan.

A plan that cannot be made (unsafe, or nothing to do), a dry run, a plan over a safety cap and a
guardrail that is on all end here without an approval being offered.
"""

from __future__ import annotations

from bot.errors import OverCap
from bot.incidents import Incident, StepRun, StepStatus
from bot.playbook import Playbook, Step
from bot.redisconn import RedisTarget
from bot.runner.core import RunnerCore
from bot.steps import Plan
from bot.store import StepResult


class GateMixin(RunnerCore):
    async def plan(
        self, inc: Incident, step: Step, target: RedisTarget, *, reuse: bool = True
    ) -> tuple[Plan | None, str | None, StepStatus, Exception | None]:
        """(plan, error, status, exception): a plan, or why there is none. ``reuse=False`` (the
        re-check before executing) keeps the plan from reusing the incident's earlier measurements."""
        plan_fn = step.type.plan
        assert plan_fn is not None
        ctx = self.context(inc, target, step.id, earlier=reuse)
        out, status, error = await self.timed(
            step, lambda: self.located(target, lambda: plan_fn(ctx, step.params)), inc.id
        )
        if isinstance(out, Plan):
            if target.node is not None:  # bound to the primary it was made on (see plan_drift)
                out = out.model_copy(update={"node": target.node})
            return out, None, status, None
        return None, error, status, out if isinstance(out, Exception) else None

    async def gate(
        self, inc: Incident, pb: Playbook, idx: int, step: Step, target: RedisTarget, *, reuse: bool = True
    ) -> bool:
        """Plan a mutating step and ask for approval. True when the incident now waits (or stopped).

        ``reuse=False`` (asking again after the plan drifted) plans from fresh measurements only."""
        fence = self.fence(inc.id)
        run_id = await self.store.start_step(inc.id, idx, step.id, step.type.name, True, fence=fence)
        plan, error, status, exc = await self.plan(inc, step, target, reuse=reuse)
        if plan is None:
            if isinstance(exc, OverCap):
                # A cap is a safety stop, not a size to trim the action to: a human decides.
                run = await self.store.escalate(
                    inc.id,
                    run_id,
                    StepResult(StepStatus.ESCALATED, f"escalated: {error}", error=error),
                    f"{step.id}: {error}",
                    next_step=idx + 1,
                    target=target.name,
                    fence=fence,
                )
                await self._told(inc, run)
                await self._announce(inc.id)
                return True
            run = await self.store.finish_step(
                run_id,
                StepResult(status, f"no plan: {error}", error=error),
                next_step=idx + 1,
                target=target.name,
                fence=fence,
            )
            await self.notifier.step_finished(inc, run)
            return False
        digest = plan.digest()
        plan_data = plan.model_dump(mode="json")
        passed = None
        if self.dry_run(inc, pb):
            passed = StepResult(
                StepStatus.PLANNED, f"dry run, would: {plan.summary}", plan=plan_data, plan_hash=digest
            )
        elif plan.estimated_keys == 0:
            passed = StepResult(
                StepStatus.SKIPPED, f"nothing to do: {plan.summary}", plan=plan_data, plan_hash=digest
            )
        if passed is not None:  # no approval needed: the playbook goes on
            run = await self.store.finish_step(
                run_id, passed, next_step=idx + 1, target=target.name, fence=fence
            )
            await self.notifier.step_finished(inc, run)
            return False
        reason = await self.guardrails.reason(target.name)
        if reason is not None:
            run = await self.store.escalate(
                inc.id,
                run_id,
                StepResult(StepStatus.ESCALATED, f"escalated: {reason}", plan=plan_data, plan_hash=digest),
                reason,
                next_step=idx + 1,
                target=target.name,
                fence=fence,
            )
            await self._told(inc, run)
            await self._announce(inc.id)
            return True
        approval = await self.store.request_approval(
            inc.id,
            run_id,
            step_id=step.id,
            step_index=idx,
            step_type=step.type.name,
            plan=plan_data,
            plan_hash=digest,
            summary=plan.summary,
            required=plan.approvers_required,
            ttl=self.config.approvals.ttl,
            target=target.name,
            requested_by=inc.requested_by,
            fence=fence,
        )
        inc = await self.store.get_incident(inc.id)
        await self.notifier.approval_requested(inc, approval)
        await self.notifier.incident_updated(inc)
        return True

    async def _told(self, inc: Incident, run: StepRun | None) -> None:
        if run is not None:
            await self.notifier.step_finished(inc, run)
