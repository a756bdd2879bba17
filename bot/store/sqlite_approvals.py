"""The lifecycle's events on SQLite: each one transaction over incident, step run, approval and audit.

Every state written here goes through :func:`bot.lifecycle.move`, which raises on a move the machine
does not allow, so a bug shows up as an error instead of a record in a state nobody can leave. The
rules that decide *which* event applies (quorum, expiry, breaker) live in the engine; these methods
only apply an event atomically, with compare-and-set where two processes may race.
"""

from __future__ import annotations

import time
from typing import Any

from bot import lifecycle
from bot.errors import AlreadyDecided, DecisionConflict
from bot.incidents import Approval, ApprovalState, Decision, IncidentState, StepRun, StepStatus
from bot.lifecycle import Event
from bot.store.records import (
    Fence,
    StepResult,
    dumps,
    process_owner,
)
from bot.store.sqlite_moves import MovesMixin, check_fence

I, A, S = IncidentState, ApprovalState, StepStatus  # noqa: E741


class ApprovalEventsMixin(MovesMixin):
    """Approval events: request, decide, expire, cancel, claim, executed."""

    # -- approvals -------------------------------------------------------------------------------

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

        def run() -> Approval:
            now = time.time()
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
                for old in conn.execute(
                    "SELECT id FROM approvals WHERE incident_id = ? AND state = 'pending'", (incident_id,)
                ).fetchall():
                    self._move_approval(conn, Event.REQUEST_APPROVAL, old["id"], A.SUPERSEDED, decided_at=now)
                self._finish_run(
                    conn,
                    Event.REQUEST_APPROVAL,
                    run_id,
                    StepResult(
                        S.AWAITING_APPROVAL,
                        f"waiting for approval: {summary}",
                        plan=plan,
                        plan_hash=plan_hash,
                    ),
                    finished=False,
                )
                state = lifecycle.move("approval", Event.REQUEST_APPROVAL, None, A.PENDING)
                cur = conn.execute(
                    "INSERT INTO approvals (incident_id, step_run_id, step_id, step_index, step_type, plan, plan_hash,"
                    " state, required, requested_at, expires_at, requested_by, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
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
                        process_owner(),
                    ),
                )
                self._move_incident(
                    conn, Event.REQUEST_APPROVAL, incident_id, I.AWAITING_APPROVAL, next_step=step_index
                )
                self._audit(
                    conn,
                    "approval.requested",
                    incident_id=incident_id,
                    target=target,
                    plan_hash=plan_hash,
                    detail={
                        "approval_id": cur.lastrowid,
                        "step": step_id,
                        "type": step_type,
                        "required": required,
                        "expires_in_s": ttl,
                        "plan": plan,
                    },
                )
                return self._approval_row(conn, int(cur.lastrowid or 0))

        return await self._run(run)

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

        ``seen`` is how many decisions the engine saw: if another landed meanwhile this raises
        :class:`DecisionConflict` (the engine reads again and re-applies its rules); if the approval is no
        longer pending it raises :class:`AlreadyDecided` naming who decided.
        """

        def run() -> Approval:
            now = time.time()
            with self._tx() as conn:
                ap = self._approval_row(conn, approval_id)
                if ap.state != A.PENDING:
                    raise AlreadyDecided(str(ap.state), ap.decided_by, ap.decided_at)
                if len(ap.decisions) != seen:
                    raise DecisionConflict("another decision arrived meanwhile")
                final = state != A.PENDING
                ap = self._move_approval(
                    conn,
                    Event.DECIDE,
                    approval_id,
                    state,
                    decisions=dumps([d.model_dump() for d in decisions]),
                    decided_by=decided_by if final else None,
                    decided_at=now if final else None,
                    owner=process_owner(),
                )
                if state == A.DENIED:
                    self._finish_run(
                        conn, Event.DECIDE, ap.step_run_id, StepResult(S.DENIED, f"denied by {who}")
                    )
                    self._move_incident(conn, Event.DECIDE, ap.incident_id, I.DIAGNOSED, note=note)
                elif state == A.APPROVED:
                    self._move_incident(conn, Event.DECIDE, ap.incident_id, I.REMEDIATING)
                self._audit(
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

        return await self._run(run)

    async def expire(self, approval_id: int, *, actor: str = "expiry") -> Approval | None:
        """pending -> expired with its step run, and the incident stops waiting; None if it was
        not pending any more."""

        def run() -> Approval | None:
            with self._tx() as conn:
                ap = self._approval_row(conn, approval_id)
                if ap.state != A.PENDING:
                    return None
                ap = self._move_approval(
                    conn, Event.EXPIRE, approval_id, A.EXPIRED, decided_by=actor, decided_at=time.time()
                )
                self._finish_run(
                    conn,
                    Event.EXPIRE,
                    ap.step_run_id,
                    StepResult(S.EXPIRED, "expired: nobody decided in time"),
                )
                self._move_incident(
                    conn, Event.EXPIRE, ap.incident_id, I.DIAGNOSED, note=f"approval for {ap.step_id} expired"
                )
                self._audit(
                    conn,
                    "approval.expired",
                    incident_id=ap.incident_id,
                    actor=actor,
                    plan_hash=ap.plan_hash,
                    detail={"approval_id": approval_id},
                )
                return ap

        return await self._run(run)

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

        def run() -> Approval | None:
            with self._tx() as conn:
                ap = self._approval_row(conn, approval_id)
                if ap.state not in (A.PENDING, A.APPROVED):
                    return None
                ap = self._move_approval(
                    conn,
                    Event.CANCEL,
                    approval_id,
                    state,
                    decided_at=time.time(),
                    decided_by=ap.decided_by or actor,
                )
                self._finish_run(
                    conn, Event.CANCEL, ap.step_run_id, StepResult(S.CANCELLED, f"not executed: {reason}")
                )
                note = (
                    None if incident_state in (None, I.RESOLVED, I.REMEDIATING) else f"not executed: {reason}"
                )
                self._move_incident(
                    conn, Event.CANCEL, ap.incident_id, incident_state, note=note, next_step=next_step
                )
                self._audit(
                    conn,
                    f"approval.{state}",
                    incident_id=ap.incident_id,
                    actor=actor,
                    target=target,
                    plan_hash=ap.plan_hash,
                    detail={"approval_id": approval_id, "reason": reason},
                )
                return ap

        return await self._run(run)

    async def claim(
        self, approval_id: int, *, summary: str, actor: str, target: str | None, fence: Fence | None = None
    ) -> int | None:
        """approved -> executing, only while the incident's alert still fires: exactly one caller
        wins and gets the id of the action's new (running) step run; everyone else gets None.

        Records this process as the owner, so a restart of another process does not mistake the
        running action for an interrupted one.
        """

        def run() -> int | None:
            with self._tx() as conn:
                ap = self._approval_row(conn, approval_id)
                check_fence(conn, ap.incident_id, fence)
                firing = conn.execute(
                    "SELECT alert_status FROM incidents WHERE id = ?", (ap.incident_id,)
                ).fetchone()["alert_status"]
                if ap.state != A.APPROVED or firing != "firing":
                    return None
                self._move_approval(conn, Event.CLAIM, approval_id, A.EXECUTING, owner=process_owner())
                gate = self._finish_run(
                    conn,
                    Event.CLAIM,
                    ap.step_run_id,
                    StepResult(S.APPROVED, summary, plan=ap.plan, plan_hash=ap.plan_hash),
                )
                self._audit_step(conn, gate, target, actor)
                self._move_incident(conn, Event.CLAIM, ap.incident_id, I.REMEDIATING)
                status = lifecycle.move("step", Event.STEP_STARTED, None, S.RUNNING)
                cur = conn.execute(
                    "INSERT INTO step_runs (incident_id, step_index, step_id, step_type, mutating, status, started_at,"
                    " owner, plan, plan_hash) VALUES (?,?,?,?,1,?,?,?,?,?)",
                    (
                        ap.incident_id,
                        ap.step_index,
                        ap.step_id,
                        ap.step_type,
                        status,
                        time.time(),
                        process_owner(),
                        dumps(ap.plan),
                        ap.plan_hash,
                    ),
                )
                return int(cur.lastrowid or 0)

        return await self._run(run)

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

        def run() -> StepRun:
            with self._tx() as conn:
                check_fence(conn, self._approval_row(conn, approval_id).incident_id, fence)
                ap = self._move_approval(conn, Event.EXECUTED, approval_id, A.EXECUTED)
                sr = self._finish_run(conn, Event.EXECUTED, run_id, result)
                self._audit_step(conn, sr, target, actor)
                self._move_incident(
                    conn, Event.EXECUTED, ap.incident_id, incident_state, note=note, next_step=next_step
                )
                self._audit(
                    conn,
                    "action.executed",
                    incident_id=ap.incident_id,
                    actor=actor,
                    target=target,
                    plan_hash=ap.plan_hash,
                    detail={**detail, "ok": ok, "approvers": ap.approvers},
                )
            return sr

        return await self._run(run)
