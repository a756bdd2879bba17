"""The lifecycle's events on SQLite: each one transaction over incident, step run, approval and audit.

Every state written here goes through :func:`bot.lifecycle.move`, which raises on a move the machine
does not allow, so a bug shows up as an error instead of a record in a state nobody can leave. The
rules that decide *which* event applies (quorum, expiry, breaker) live in the engine; these methods
only apply an event atomically, with compare-and-set where two processes may race.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from bot import lifecycle
from bot.errors import AlreadyDecided, DecisionConflict, NotFound
from bot.incidents import Approval, ApprovalState, Decision, IncidentState, StepRun, StepStatus, iso
from bot.lifecycle import Event
from bot.store.records import (
    IngestItem,
    StepResult,
    approval_of,
    dumps,
    owner_alive,
    process_owner,
    step_run_of,
)
from bot.store.sqlite_reads import ReadsMixin

I, A, S = IncidentState, ApprovalState, StepStatus  # noqa: E741


class EventsMixin(ReadsMixin):
    # -- helpers inside a transaction --------------------------------------------------------------

    def _move_incident(
        self,
        conn: sqlite3.Connection,
        event: Event,
        incident_id: int,
        new: str | None,
        *,
        note: str | None = None,
        next_step: int | None = None,
    ) -> str:
        """Move an incident (``new`` None: keep the state, only note/next_step change)."""
        row = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        current = row["state"]
        if new is None:
            new = current
        if current == I.RESOLVED and new != I.RESOLVED and event != Event.RESOLVE:
            new = I.RESOLVED  # the alert resolved meanwhile: whatever a late runner says, it stays resolved
        state = lifecycle.move("incident", event, current, new, incident_id)
        sets, args = ["state = ?", "updated_at = ?"], [state, time.time()]
        if note is not None:
            sets.append("note = ?")
            args.append(note)
        if next_step is not None:
            sets.append("next_step = ?")
            args.append(next_step)
        conn.execute(f"UPDATE incidents SET {', '.join(sets)} WHERE id = ?", (*args, incident_id))  # noqa: S608
        return state

    @staticmethod
    def _finish_run(
        conn: sqlite3.Connection, event: Event, run_id: int, result: StepResult, *, finished: bool = True
    ) -> StepRun:
        row = conn.execute("SELECT status FROM step_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no step run {run_id}")
        status = lifecycle.move("step", event, row["status"], result.status, run_id)
        conn.execute(
            "UPDATE step_runs SET status = ?, summary = ?, details = ?, data = ?, error = ?,"
            " plan = coalesce(?, plan), plan_hash = coalesce(?, plan_hash), finished_at = ? WHERE id = ?",
            (
                status,
                result.summary,
                result.details,
                dumps(result.data),
                result.error,
                dumps(result.plan) if result.plan is not None else None,
                result.plan_hash,
                time.time() if finished else None,
                run_id,
            ),
        )
        return step_run_of(conn.execute("SELECT * FROM step_runs WHERE id = ?", (run_id,)).fetchone())

    def _audit_step(
        self, conn: sqlite3.Connection, run: StepRun, target: str | None, actor: str | None
    ) -> None:
        self._audit(
            conn,
            "step.finished",
            incident_id=run.incident_id,
            target=target,
            actor=actor,
            plan_hash=run.plan_hash,
            detail={
                "step": run.step_id,
                "type": run.step_type,
                "status": str(run.status),
                "mutating": run.mutating,
                "duration_s": run.duration_s,
                "summary": run.summary[:500],
                "error": run.error,
            },
        )

    def _move_approval(
        self, conn: sqlite3.Connection, event: Event, approval_id: int, new: ApprovalState, **sets: Any
    ) -> Approval:
        ap = self._approval_row(conn, approval_id)
        state = lifecycle.move("approval", event, ap.state, new, approval_id)
        cols = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(
            f"UPDATE approvals SET state = ?{', ' + cols if cols else ''} WHERE id = ?",  # noqa: S608
            (state, *sets.values(), approval_id),
        )
        return self._approval_row(conn, approval_id)

    @staticmethod
    def _approval_row(conn: sqlite3.Connection, approval_id: int) -> Approval:
        row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise NotFound(f"no approval {approval_id}")
        return approval_of(row)

    # -- open, begin, steps --------------------------------------------------------------------

    async def open_incident(
        self, item: IngestItem, *, dry_run: bool = False, requested_by: str | None = None
    ) -> int:
        """A hand-started incident (``run`` command, slash command)."""

        def run() -> int:
            now = time.time()
            a = item.alert
            state = lifecycle.move("incident", Event.OPEN, None, I.NEW)
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook, target,"
                    " target_index, labels, annotations, note, source, dry_run, created_at, updated_at, requested_by)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        a.fingerprint,
                        a.starts_key,
                        a.alertname,
                        a.status,
                        state,
                        item.playbook,
                        item.target,
                        item.target_index,
                        dumps(a.labels),
                        dumps(a.annotations),
                        item.note,
                        item.source,
                        int(dry_run),
                        now,
                        now,
                        requested_by,
                    ),
                )
                inc_id = int(cur.lastrowid or 0)
                self._audit(
                    conn,
                    "incident.opened",
                    incident_id=inc_id,
                    target=item.target,
                    actor=requested_by or item.source,
                    detail={"playbook": item.playbook, "dry_run": dry_run},
                )
            return inc_id

        return await self._run(run)

    async def begin(self, incident_id: int) -> bool:
        """new -> diagnosing; False when the incident is not new (another worker began it)."""

        def run() -> bool:
            with self._tx() as conn:
                row = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident_id,)).fetchone()
                if row is None or row["state"] != I.NEW:
                    return False
                self._move_incident(conn, Event.BEGIN, incident_id, I.DIAGNOSING)
                return True

        return await self._run(run)

    async def fail(self, incident_id: int, note: str, *, target: str | None = None) -> None:
        """An incident that cannot run at all (playbook or target gone, target refused)."""

        def run() -> None:
            with self._tx() as conn:
                self._move_incident(conn, Event.FINISH, incident_id, I.FAILED, note=note)
                self._audit(
                    conn, "incident.failed", incident_id=incident_id, target=target, detail={"reason": note}
                )

        await self._run(run)

    async def start_step(
        self, incident_id: int | None, step_index: int, step_id: str, step_type: str, mutating: bool
    ) -> int:
        def run() -> int:
            status = lifecycle.move("step", Event.STEP_STARTED, None, S.RUNNING)
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO step_runs (incident_id, step_index, step_id, step_type, mutating, status, started_at,"
                    " owner) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        incident_id,
                        step_index,
                        step_id,
                        step_type,
                        int(mutating),
                        status,
                        time.time(),
                        process_owner(),
                    ),
                )
                return int(cur.lastrowid or 0)

        return await self._run(run)

    async def finish_step(
        self,
        run_id: int,
        result: StepResult,
        *,
        next_step: int | None = None,
        incident_state: IncidentState | None = None,
        note: str | None = None,
        target: str | None = None,
        actor: str | None = None,
    ) -> StepRun:
        """A step run ended; the incident advances to ``next_step`` (and stops when told)."""

        def run() -> StepRun:
            with self._tx() as conn:
                sr = self._finish_run(conn, Event.STEP_FINISHED, run_id, result)
                if sr.incident_id is not None and (next_step is not None or incident_state or note):
                    self._move_incident(
                        conn,
                        Event.STEP_FINISHED,
                        sr.incident_id,
                        incident_state,
                        note=note,
                        next_step=next_step,
                    )
                self._audit_step(conn, sr, target, actor)
            return sr

        return await self._run(run)

    async def checkpoint(self, run_id: int, data: dict[str, Any]) -> None:
        """Progress of a running action (e.g. keys deleted so far), kept if the process dies."""

        def run() -> None:
            with self._tx() as conn:
                conn.execute(
                    "UPDATE step_runs SET data = ? WHERE id = ? AND status = 'running'", (dumps(data), run_id)
                )

        await self._run(run)

    async def escalate(
        self,
        incident_id: int,
        run_id: int | None,
        result: StepResult | None,
        reason: str,
        *,
        next_step: int | None,
        target: str | None,
    ) -> StepRun | None:
        """No approval is offered (breaker, kill switch, a plan over a cap): a human must look."""

        def run() -> StepRun | None:
            with self._tx() as conn:
                sr = None
                if run_id is not None and result is not None:
                    sr = self._finish_run(conn, Event.ESCALATE, run_id, result)
                    self._audit_step(conn, sr, target, None)
                self._move_incident(
                    conn, Event.ESCALATE, incident_id, I.ESCALATED, note=reason, next_step=next_step
                )
                self._audit(
                    conn,
                    "incident.escalated",
                    incident_id=incident_id,
                    target=target,
                    detail={"reason": reason},
                )
            return sr

        return await self._run(run)

    async def finish(self, incident_id: int, state: IncidentState, note: str) -> None:
        def run() -> None:
            with self._tx() as conn:
                new = self._move_incident(conn, Event.FINISH, incident_id, state, note=note)
                self._audit(
                    conn, "incident.finished", incident_id=incident_id, detail={"state": new, "note": note}
                )

        await self._run(run)

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
    ) -> Approval:
        """Ask for a decision on a plan: the step run waits, the incident waits, older pending
        approvals of the incident are superseded, all in one transaction."""

        def run() -> Approval:
            now = time.time()
            with self._tx() as conn:
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

    async def claim(self, approval_id: int, *, summary: str, actor: str, target: str | None) -> int | None:
        """approved -> executing, only while the incident's alert still fires: exactly one caller
        wins and gets the id of the action's new (running) step run; everyone else gets None.

        Records this process as the owner, so a restart of another process does not mistake the
        running action for an interrupted one.
        """

        def run() -> int | None:
            with self._tx() as conn:
                ap = self._approval_row(conn, approval_id)
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
    ) -> StepRun:
        """The action returned (or failed, or was stopped): executing -> executed, its run finished,
        the incident moves on, and the ``action.executed`` record the breaker counts."""

        def run() -> StepRun:
            with self._tx() as conn:
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

    async def interrupt_orphans(self) -> list[int]:
        """At start-up: whatever was running when its process died is marked interrupted.

        A mutating step is never silently re-run: its approval is closed as interrupted and the
        incident goes to ``failed`` with a note, so a human must ask for it again. The keys the
        action had deleted (its last checkpoint) are recorded, and the interruption counts as a
        failed action for the circuit breaker. Returns the incidents whose action was interrupted.
        """

        def run() -> list[int]:
            now = time.time()
            affected: set[int] = set()
            with self._tx() as conn:
                for r in conn.execute(
                    "SELECT s.*, i.target AS target FROM step_runs s LEFT JOIN incidents i ON i.id = s.incident_id"
                    " WHERE s.status = 'running'"
                ).fetchall():
                    if owner_alive(r["owner"]):
                        continue  # another live process (a CLI `approve`) is running it
                    done = step_run_of(r).data
                    sr = self._finish_run(
                        conn,
                        Event.INTERRUPT,
                        r["id"],
                        StepResult(
                            S.INTERRUPTED,
                            "interrupted: the bot stopped while this step ran",
                            data=done,
                            error="the bot stopped while this step was running",
                        ),
                    )
                    if not r["mutating"] or r["incident_id"] is None:
                        continue
                    affected.add(int(r["incident_id"]))
                    self._audit(
                        conn,
                        "action.executed",
                        incident_id=r["incident_id"],
                        target=r["target"],
                        plan_hash=sr.plan_hash,
                        detail={
                            "step": sr.step_id,
                            "type": sr.step_type,
                            "ok": False,
                            "interrupted": True,
                            "keys_affected": done.get("deleted"),
                        },
                    )
                for r in conn.execute(
                    "SELECT id, incident_id, owner, state FROM approvals WHERE state IN ('approved', 'executing')"
                ).fetchall():
                    if owner_alive(r["owner"]):
                        continue
                    self._move_approval(conn, Event.INTERRUPT, r["id"], A.INTERRUPTED, decided_at=now)
                    affected.add(int(r["incident_id"]))
                for inc_id in sorted(affected):
                    state = conn.execute("SELECT state FROM incidents WHERE id = ?", (inc_id,)).fetchone()[
                        "state"
                    ]
                    if lifecycle.is_open(state):
                        self._move_incident(
                            conn,
                            Event.INTERRUPT,
                            inc_id,
                            I.FAILED,
                            note="a remediation was interrupted by a restart; it was not re-run",
                        )
                    self._audit(conn, "step.interrupted", incident_id=inc_id, detail={"at": iso(now)})
            return sorted(affected)

        return await self._run(run)

    # -- references to chat messages (no state) -----------------------------------------------------

    async def set_approval_chat_ref(self, approval_id: int, ref: dict[str, Any]) -> None:
        def run() -> None:
            with self._tx() as conn:
                conn.execute("UPDATE approvals SET chat_ref = ? WHERE id = ?", (dumps(ref), approval_id))

        await self._run(run)

    async def set_incident_chat_ref(self, incident_id: int, ref: dict[str, Any]) -> None:
        def run() -> None:
            with self._tx() as conn:
                conn.execute("UPDATE incidents SET chat_ref = ? WHERE id = ?", (dumps(ref), incident_id))

        await self._run(run)
