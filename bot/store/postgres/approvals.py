"""The lifecycle's approval events on PostgreSQL: request, decide, expire, cancel, claim, executed.

Same semantics as :mod:`bot.store.sqlite_approvals`. The compare-and-sets that make a decision and
an execution happen once, however many replicas receive the clicks, are row locks here: ``decide``
locks the approval and checks it is still pending with the number of decisions the engine saw;
``claim`` locks the incident and the approval and moves ``approved -> executing`` only while the
alert fires. A second caller waits for the first's transaction, then sees its result.
"""

from __future__ import annotations

import time
from typing import Any

from bot import lifecycle
from bot.errors import AlreadyDecided, DecisionConflict
from bot.incidents import Approval, ApprovalState, Decision, IncidentState, StepRun, StepStatus
from bot.lifecycle import Event
from bot.store.postgres.base import Conn, one
from bot.store.postgres.moves import MovesMixin, check_fence
from bot.store.records import Fence, StepResult, approval_of, dumps

I, A, S = IncidentState, ApprovalState, StepStatus  # noqa: E741


class ApprovalEventsMixin(MovesMixin):
    """Approval events: request, decide, expire, cancel, claim, executed."""

    async def request_approval(
        self,
        incident_id: int,
        run_id: int,
        *,
        step_id: str,
        step_index: int,
        step_type: str,
        plan: dict[str, Any],
        plan_hash: str,
        summary: str,
        required: int,
        ttl: float,
        target: str | None,
        requested_by: str | None = None,
        fence: Fence | None = None,
    ) -> Approval:
        """Ask for a decision on a plan: the step run waits, the incident waits, older pending
        approvals of the incident are superseded, all in one transaction."""
        state = lifecycle.move("approval", Event.REQUEST_APPROVAL, None, A.PENDING)

        async def run(conn: Conn) -> Approval:
            now = time.time()
            await self._lock_incident(conn, incident_id)
            await check_fence(conn, incident_id, fence)
            for old in await conn.fetch(
                "SELECT * FROM approvals WHERE incident_id = $1 AND state = 'pending' ORDER BY id FOR UPDATE",
                incident_id,
            ):
                await self._move_approval(
                    conn, Event.REQUEST_APPROVAL, approval_of(old), A.SUPERSEDED, decided_at=now
                )
            await self._finish_run(
                conn,
                Event.REQUEST_APPROVAL,
                run_id,
                StepResult(
                    S.AWAITING_APPROVAL, f"waiting for approval: {summary}", plan=plan, plan_hash=plan_hash
                ),
                finished=False,
            )
            row = one(
                await conn.fetchrow(
                    "INSERT INTO approvals (incident_id, step_run_id, step_id, step_index, step_type, plan, plan_hash,"
                    " state, required, requested_at, expires_at, requested_by, owner)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) RETURNING *",
                    incident_id,
                    run_id,
                    step_id,
                    step_index,
                    step_type,
                    dumps(plan),
                    plan_hash,
                    state,
                    required,
                    now,
                    now + ttl,
                    requested_by,
                    self._owner(),
                )
            )
            await self._move_incident(
                conn, Event.REQUEST_APPROVAL, incident_id, I.AWAITING_APPROVAL, next_step=step_index
            )
            await self._audit(
                conn,
                "approval.requested",
                incident_id=incident_id,
                target=target,
                plan_hash=plan_hash,
                detail={
                    "approval_id": row["id"],
                    "step": step_id,
                    "type": step_type,
                    "required": required,
                    "expires_in_s": ttl,
                    "plan": plan,
                },
            )
            return approval_of(row)

        return await self._write(run)

    async def decide(
        self,
        approval_id: int,
        *,
        who: str,
        approve: bool,
        seen: int,
        decisions: list[Decision],
        state: ApprovalState,
        decided_by: str | None,
        approvers: list[str],
        target: str | None,
        note: str | None = None,
    ) -> Approval:
        """Record a decision the engine worked out, as a compare-and-set on the approval.

        ``seen`` is how many decisions the engine saw: if another landed meanwhile (on any replica)
        this raises :class:`DecisionConflict` (the engine reads again and re-applies its rules); if
        the approval is no longer pending it raises :class:`AlreadyDecided` naming who decided.
        """

        async def run(conn: Conn) -> Approval:
            now = time.time()
            ap = await self._lock_approval(conn, approval_id)
            if ap.state != A.PENDING:
                raise AlreadyDecided(str(ap.state), ap.decided_by, ap.decided_at)
            if len(ap.decisions) != seen:
                raise DecisionConflict("another decision arrived meanwhile")
            final = state != A.PENDING
            ap = await self._move_approval(
                conn,
                Event.DECIDE,
                ap,
                state,
                decisions=dumps([d.model_dump() for d in decisions]),
                decided_by=decided_by if final else None,
                decided_at=now if final else None,
                owner=self._owner(),
            )
            if state == A.DENIED:
                await self._finish_run(
                    conn, Event.DECIDE, ap.step_run_id, StepResult(S.DENIED, f"denied by {who}")
                )
                await self._move_incident(conn, Event.DECIDE, ap.incident_id, I.DIAGNOSED, note=note)
            elif state == A.APPROVED:
                await self._move_incident(conn, Event.DECIDE, ap.incident_id, I.REMEDIATING)
            await self._audit(
                conn,
                "approval.decided",
                incident_id=ap.incident_id,
                actor=who,
                target=target,
                plan_hash=ap.plan_hash,
                detail={
                    "approval_id": approval_id,
                    "approve": approve,
                    "state": str(state),
                    "approvers": approvers,
                    "required": ap.required,
                },
            )
            return ap

        return await self._write(run)

    async def expire(self, approval_id: int, *, actor: str = "expiry") -> Approval | None:
        """pending -> expired with its step run, and the incident stops waiting; None if it was
        not pending any more."""

        async def run(conn: Conn) -> Approval | None:
            ap = await self._lock_approval(conn, approval_id)
            if ap.state != A.PENDING:
                return None
            ap = await self._move_approval(
                conn, Event.EXPIRE, ap, A.EXPIRED, decided_by=actor, decided_at=time.time()
            )
            await self._finish_run(
                conn, Event.EXPIRE, ap.step_run_id, StepResult(S.EXPIRED, "expired: nobody decided in time")
            )
            await self._move_incident(
                conn, Event.EXPIRE, ap.incident_id, I.DIAGNOSED, note=f"approval for {ap.step_id} expired"
            )
            await self._audit(
                conn,
                "approval.expired",
                incident_id=ap.incident_id,
                actor=actor,
                plan_hash=ap.plan_hash,
                detail={"approval_id": approval_id},
            )
            return ap

        return await self._write(run)

    async def cancel(
        self,
        approval_id: int,
        reason: str,
        *,
        incident_state: IncidentState | None,
        state: ApprovalState = A.CANCELLED,
        next_step: int | None = None,
        actor: str | None = None,
        target: str | None = None,
    ) -> Approval | None:
        """Close a pending or approved (not yet running) approval without executing it: its step run
        is cancelled and the incident moves to ``incident_state`` (None: stays). None if it was
        neither pending nor approved any more."""

        async def run(conn: Conn) -> Approval | None:
            ap = await self._lock_approval(conn, approval_id)
            if ap.state not in (A.PENDING, A.APPROVED):
                return None
            ap = await self._move_approval(
                conn, Event.CANCEL, ap, state, decided_at=time.time(), decided_by=ap.decided_by or actor
            )
            await self._finish_run(
                conn, Event.CANCEL, ap.step_run_id, StepResult(S.CANCELLED, f"not executed: {reason}")
            )
            note = None if incident_state in (None, I.RESOLVED, I.REMEDIATING) else f"not executed: {reason}"
            await self._move_incident(
                conn, Event.CANCEL, ap.incident_id, incident_state, note=note, next_step=next_step
            )
            await self._audit(
                conn,
                f"approval.{state}",
                incident_id=ap.incident_id,
                actor=actor,
                target=target,
                plan_hash=ap.plan_hash,
                detail={"approval_id": approval_id, "reason": reason},
            )
            return ap

        return await self._write(run)

    async def claim(
        self, approval_id: int, *, summary: str, actor: str, target: str | None, fence: Fence | None = None
    ) -> int | None:
        """approved -> executing, only while the incident's alert still fires: exactly one caller
        on any replica wins and gets the id of the action's new (running) step run; everyone else
        gets None. Records this process as the owner of the action."""

        async def run(conn: Conn) -> int | None:
            ap = await self._lock_approval(conn, approval_id)
            await check_fence(conn, ap.incident_id, fence)
            firing = await conn.fetchval("SELECT alert_status FROM incidents WHERE id = $1", ap.incident_id)
            if ap.state != A.APPROVED or firing != "firing":
                return None
            await self._move_approval(conn, Event.CLAIM, ap, A.EXECUTING, owner=self._owner())
            gate = await self._finish_run(
                conn,
                Event.CLAIM,
                ap.step_run_id,
                StepResult(S.APPROVED, summary, plan=ap.plan, plan_hash=ap.plan_hash),
            )
            await self._audit_step(conn, gate, target, actor)
            await self._move_incident(conn, Event.CLAIM, ap.incident_id, I.REMEDIATING)
            status = lifecycle.move("step", Event.STEP_STARTED, None, S.RUNNING)
            return int(
                await conn.fetchval(
                    "INSERT INTO step_runs (incident_id, step_index, step_id, step_type, mutating, status,"
                    " started_at, owner, plan, plan_hash) VALUES ($1,$2,$3,$4,TRUE,$5,$6,$7,$8,$9) RETURNING id",
                    ap.incident_id,
                    ap.step_index,
                    ap.step_id,
                    ap.step_type,
                    status,
                    time.time(),
                    self._owner(),
                    dumps(ap.plan),
                    ap.plan_hash,
                )
            )

        return await self._write(run)

    async def executed(
        self,
        approval_id: int,
        run_id: int,
        result: StepResult,
        *,
        ok: bool,
        incident_state: IncidentState,
        note: str | None,
        next_step: int,
        actor: str,
        target: str | None,
        detail: dict[str, Any],
        fence: Fence | None = None,
    ) -> StepRun:
        """The action returned (or failed, or was stopped): executing -> executed, its run finished,
        the incident moves on, and the ``action.executed`` record the breaker counts."""

        async def run(conn: Conn) -> StepRun:
            ap = await self._lock_approval(conn, approval_id)
            await check_fence(conn, ap.incident_id, fence)
            ap = await self._move_approval(conn, Event.EXECUTED, ap, A.EXECUTED)
            sr = await self._finish_run(conn, Event.EXECUTED, run_id, result)
            await self._audit_step(conn, sr, target, actor)
            await self._move_incident(
                conn, Event.EXECUTED, ap.incident_id, incident_state, note=note, next_step=next_step
            )
            await self._audit(
                conn,
                "action.executed",
                incident_id=ap.incident_id,
                actor=actor,
                target=target,
                plan_hash=ap.plan_hash,
                detail={**detail, "ok": ok, "approvers": ap.approvers},
            )
            return sr

        return await self._write(run)
