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
from bot.incidents import ApprovalState, IncidentState, StepRun, StepStatus, iso
from bot.lifecycle import Event
from bot.store.records import (
    Fence,
    IngestItem,
    StepResult,
    dumps,
    process_owner,
    step_run_of,
)
from bot.store.sqlite_moves import MovesMixin, check_fence

I, A, S = IncidentState, ApprovalState, StepStatus  # noqa: E741


class IncidentEventsMixin(MovesMixin):
    """Incident and step-run events: open, begin, steps, escalate, finish, interrupt."""

    # -- open, begin, steps --------------------------------------------------------------------

    async def open_incident(
        self,
        item: IngestItem,
        *,
        dry_run: bool = False,
        requested_by: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> int:
        """A hand-started incident (``run`` command, slash command)."""

        def run() -> int:
            now = time.time()
            a = item.alert
            state = lifecycle.move("incident", Event.OPEN, None, I.NEW)
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook, target,"
                    " target_index, labels, annotations, note, source, dry_run, created_at, updated_at, requested_by,"
                    " params) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                        dumps(params or {}),
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

    async def begin(self, incident_id: int, *, fence: Fence | None = None) -> bool:
        """new -> diagnosing; False when the incident is not new (another worker began it)."""

        def run() -> bool:
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
                row = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident_id,)).fetchone()
                if row is None or row["state"] != I.NEW:
                    return False
                self._move_incident(conn, Event.BEGIN, incident_id, I.DIAGNOSING)
                return True

        return await self._run(run)

    async def fail(
        self, incident_id: int, note: str, *, target: str | None = None, fence: Fence | None = None
    ) -> None:
        """An incident that cannot run at all (playbook or target gone, target refused)."""

        def run() -> None:
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
                self._move_incident(conn, Event.FINISH, incident_id, I.FAILED, note=note)
                self._audit(
                    conn, "incident.failed", incident_id=incident_id, target=target, detail={"reason": note}
                )

        await self._run(run)

    async def start_step(
        self,
        incident_id: int | None,
        step_index: int,
        step_id: str,
        step_type: str,
        mutating: bool,
        *,
        fence: Fence | None = None,
    ) -> int:
        def run() -> int:
            status = lifecycle.move("step", Event.STEP_STARTED, None, S.RUNNING)
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
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
        fence: Fence | None = None,
    ) -> StepRun:
        """A step run ended; the incident advances to ``next_step`` (and stops when told)."""

        def run() -> StepRun:
            with self._tx() as conn:
                row = conn.execute("SELECT incident_id FROM step_runs WHERE id = ?", (run_id,)).fetchone()
                check_fence(conn, row["incident_id"] if row else None, fence)
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
        fence: Fence | None = None,
    ) -> StepRun | None:
        """No approval is offered (breaker, kill switch, a plan over a cap): a human must look."""

        def run() -> StepRun | None:
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
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

    async def finish(
        self, incident_id: int, state: IncidentState, note: str, *, fence: Fence | None = None
    ) -> None:
        def run() -> None:
            with self._tx() as conn:
                check_fence(conn, incident_id, fence)
                new = self._move_incident(conn, Event.FINISH, incident_id, state, note=note)
                self._audit(
                    conn, "incident.finished", incident_id=incident_id, detail={"state": new, "note": note}
                )

        await self._run(run)

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
                    if self._alive(conn, r["owner"], r["incident_id"], now):
                        continue  # another live process (a CLI `approve`, a replica) is running it
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
                        # A diagnostic: safe to run again (the incident resumes), but on record.
                        self._audit(
                            conn,
                            "step.interrupted",
                            incident_id=r["incident_id"],
                            target=r["target"],
                            detail={
                                "step": sr.step_id,
                                "type": sr.step_type,
                                "mutating": False,
                                "at": iso(now),
                            },
                        )
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
                    if self._alive(conn, r["owner"], r["incident_id"], now):
                        continue
                    ap = self._move_approval(conn, Event.INTERRUPT, r["id"], A.INTERRUPTED, decided_at=now)
                    if r["state"] == A.APPROVED:
                        # Never claimed: its gate step run still waits for a decision; it ends with it.
                        self._finish_run(
                            conn,
                            Event.INTERRUPT,
                            ap.step_run_id,
                            StepResult(
                                S.INTERRUPTED,
                                "interrupted: the bot stopped after the approval, before the action ran",
                                plan=ap.plan,
                                plan_hash=ap.plan_hash,
                            ),
                        )
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
