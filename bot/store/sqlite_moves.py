"""Moving records inside a transaction: every state written goes through :func:`bot.lifecycle.move`."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from bot import lifecycle
from bot.errors import LeaseLost, NotFound
from bot.incidents import Approval, ApprovalState, IncidentState, StepRun, StepStatus
from bot.lifecycle import Event
from bot.store.records import Fence, StepResult, approval_of, dumps, owner_alive, step_run_of
from bot.store.sqlite_reads import ReadsMixin

I = IncidentState  # noqa: E741


def check_fence(conn: sqlite3.Connection, incident_id: int | None, fence: Fence | None) -> None:
    """Raise :class:`LeaseLost` unless ``fence`` still holds the incident's lease (None: no lease
    needed, e.g. a decision, which is a compare-and-set of its own)."""
    if fence is None or incident_id is None:
        return
    row = conn.execute(
        "SELECT lease_owner, lease_token FROM incidents WHERE id = ?", (incident_id,)
    ).fetchone()
    if row is None or row["lease_owner"] != fence.owner or row["lease_token"] != fence.token:
        held = f"{row['lease_owner']} (token {row['lease_token']})" if row is not None else "nobody"
        raise LeaseLost(f"incident {incident_id}: lease lost to {held}; not writing for token {fence.token}")


class MovesMixin(ReadsMixin):
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

    @staticmethod
    def _alive(conn: sqlite3.Connection, owner: str | None, incident_id: int | None, now: float) -> bool:
        """Whether ``owner`` still works on ``incident_id``: a process of this host by its pid,
        another host's by the incident's lease (held by it and not lapsed)."""
        local = owner_alive(owner)
        if local is not None or incident_id is None:
            return bool(local)
        row = conn.execute(
            "SELECT lease_owner, lease_until FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        return row is not None and row["lease_owner"] == owner and row["lease_until"] >= now

    def _interrupt_incident_work(
        self, conn: sqlite3.Connection, incident_id: int, owner: str | None, now: float
    ) -> int:
        """Inside a transaction: close what a dead process left running on one incident.

        Its running step runs become ``interrupted`` (an action's run keeps the keys it had
        recorded as deleted, and counts as a failed action for the breaker); an approval it had
        claimed or was about to run is ``interrupted``; if an action was involved the incident
        fails, so nothing mutating ever runs again without a new approval. Returns the runs closed.
        """
        acted = False
        closed = 0
        target = conn.execute("SELECT target FROM incidents WHERE id = ?", (incident_id,)).fetchone()[
            "target"
        ]
        for r in conn.execute(
            "SELECT * FROM step_runs WHERE incident_id = ? AND status = 'running'", (incident_id,)
        ).fetchall():
            done = step_run_of(r).data
            sr = self._finish_run(
                conn,
                Event.INTERRUPT,
                r["id"],
                StepResult(
                    StepStatus.INTERRUPTED,
                    "interrupted: the process running this step stopped",
                    data=done,
                    error=f"{owner or 'its process'} stopped while this step was running",
                ),
            )
            closed += 1
            if r["mutating"]:
                acted = True
                self._audit(
                    conn,
                    "action.executed",
                    incident_id=incident_id,
                    target=target,
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
            "SELECT id, state FROM approvals WHERE incident_id = ? AND state IN ('approved', 'executing')",
            (incident_id,),
        ).fetchall():
            ap = self._move_approval(
                conn, Event.INTERRUPT, r["id"], ApprovalState.INTERRUPTED, decided_at=now
            )
            if r["state"] == ApprovalState.APPROVED:  # never claimed: its gate still waits; it ends with it
                self._finish_run(
                    conn,
                    Event.INTERRUPT,
                    ap.step_run_id,
                    StepResult(
                        StepStatus.INTERRUPTED,
                        "interrupted: the process stopped after the approval, before the action ran",
                        plan=ap.plan,
                        plan_hash=ap.plan_hash,
                    ),
                )
            acted = True
        state = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident_id,)).fetchone()["state"]
        if acted and lifecycle.is_open(state):
            self._move_incident(
                conn,
                Event.INTERRUPT,
                incident_id,
                I.FAILED,
                note="a remediation was interrupted when its process stopped; it was not re-run",
            )
            self._audit(conn, "step.interrupted", incident_id=incident_id, detail={"owner": owner})
        return closed
