"""Decisions on approvals: the rules (expiry, guardrails, quorum, two-person) and what follows.

The rules (:mod:`bot.approval_rules`, plus expiry and the guardrails) are applied here, once, for every way a decision arrives (Slack button, CLI, demo); the
store records the outcome as a compare-and-set, so two deciders racing in two processes see one
winner. A refused decision is audited and leaves the approval exactly as it was: still pending and
approvable once the cause is lifted (kill switch, breaker), or closed (expired).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from bot import approval_rules
from bot.approval_rules import DecisionResult
from bot.errors import AlreadyDecided, ApprovalError, DecisionConflict, DecisionRefused, NotFound
from bot.identity import Actor
from bot.incidents import Approval, ApprovalState, Incident, StepRun, iso
from bot.runner.gate import GateMixin

log = logging.getLogger(__name__)


@dataclass
class DecisionReport:
    """What a decision led to, for the person who made it."""

    incident_id: int
    approval: Approval
    message: str
    executed: bool = False
    result: StepRun | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DecideMixin(GateMixin):
    async def _pending(self, incident_id: int, approval_id: int | None) -> Approval:
        if approval_id is not None:
            return await self.store.get_approval(approval_id)
        pending = await self.store.pending_approval(incident_id)
        if pending is not None:
            return pending
        inc = await self.store.get_incident(incident_id, steps=False)
        last = await self.store.latest_approval(incident_id)
        if last is not None:
            raise AlreadyDecided(str(last.state), last.decided_by, last.decided_at)
        raise NotFound(f"incident {incident_id} ({inc.status}) has no step waiting for approval")

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
        different plan by now (it was re-planned meanwhile), the decision is refused. Raises
        :class:`AlreadyDecided` (with who decided) when someone was first or the approval expired,
        :class:`DecisionRefused` while a guardrail is on, and :class:`NotFound` when the incident has
        nothing pending.
        """
        ap = await self._pending(incident_id, approval_id)
        inc = await self.store.get_incident(ap.incident_id, steps=False)
        if plan_hash is not None and ap.plan_hash != plan_hash:
            raise ApprovalError(
                "the plan changed since you looked at it; look again (`incidents ID`) and decide on the new one"
            )
        for _ in range(10):
            if ap.state != ApprovalState.PENDING:
                raise AlreadyDecided(str(ap.state), ap.decided_by, ap.decided_at)
            now = time.time()
            if now >= ap.expires_ts:
                await self.close_expired(ap)
                raise AlreadyDecided("expired", "expiry", ap.expires_at)
            try:
                ruling = approval_rules.decide(
                    ap, who, approve, self.config.approvals, requested_by=inc.requested_by, at=iso(now) or ""
                )
                reason = await self.guardrails.reason(inc.target or "") if approve else None
                if reason is not None:
                    raise DecisionRefused(f"not recorded: {reason}; the approval is still pending")
            except AlreadyDecided:
                raise
            except ApprovalError as exc:  # refused by a rule or a guardrail: audited, nothing changes
                await self.store.audit(
                    "approval.refused",
                    incident_id=inc.id,
                    actor=who.label,
                    target=inc.target,
                    plan_hash=ap.plan_hash,
                    detail={
                        "approval_id": ap.id,
                        "approve": approve,
                        "identity": who.key,
                        "reason": str(exc),
                    },
                )
                raise
            try:
                ap = await self.store.decide(
                    ap.id,
                    who=who.label,
                    approve=approve,
                    seen=len(ap.decisions),
                    decisions=list(ruling.decisions),
                    state=ruling.state,
                    decided_by=ruling.decided_by,
                    approvers=ruling.approver_ids,
                    target=inc.target,
                    note=f"{ap.step_id} denied by {who.label}; no further actions" if not approve else None,
                )
                break
            except DecisionConflict:
                ap = await self.store.get_approval(ap.id)
        else:
            raise ApprovalError("too many decisions at once; try again")
        return await self._after_decision(inc, ap, who, ruling)

    async def _after_decision(
        self, inc: Incident, ap: Approval, who: Actor, ruling: DecisionResult
    ) -> DecisionReport:
        if ruling.state == ApprovalState.PENDING:
            await self.notifier.approval_requested(await self.store.get_incident(inc.id), ap)
            return DecisionReport(
                inc.id, ap, f"approved by {who.label}; needs {ruling.needed} more approver(s)"
            )
        self.metrics.approval_closed(ap)
        fresh = await self.store.get_incident(inc.id)
        await self.notifier.approval_closed(fresh, ap)
        if ruling.state == ApprovalState.DENIED:
            run = next((s for s in fresh.steps if s.id == ap.step_run_id), None)
            if run is not None:
                await self.notifier.step_finished(fresh, run)
            await self.notifier.incident_updated(fresh)
            return DecisionReport(inc.id, ap, f"denied by {who.label}: nothing was changed", result=run)
        return await self.execute(inc.id, ap, who.label)  # type: ignore[attr-defined,no-any-return]

    async def close_expired(self, ap: Approval) -> bool:
        """Expire one approval (its step run and incident with it) and tell the thread."""
        closed = await self.store.expire(ap.id)
        if closed is None:
            return False
        self.metrics.approval_closed(closed, "expired")
        inc = await self.store.get_incident(closed.incident_id)
        await self.notifier.approval_closed(inc, closed)
        await self.notifier.incident_updated(inc)
        return True

    async def expire_approvals(self) -> int:
        """Close approvals past their deadline as expired; returns how many."""
        now = time.time()
        n = 0
        for ap in await self.store.open_approvals():
            if ap.expires_ts <= now and await self.close_expired(ap):
                n += 1
        return n

    async def on_resolved(self, incident_id: int, cancelled: list[int] | None = None) -> None:
        """The alert resolved (the store already cancelled its pending approvals): tell the thread."""
        inc = await self.store.get_incident(incident_id)
        for ap_id in cancelled or []:
            ap = await self.store.get_approval(ap_id)
            if ap.incident_id == incident_id:
                self.metrics.approval_closed(ap, "cancelled")
                await self.notifier.approval_closed(inc, ap)
        await self.notifier.incident_updated(inc)
