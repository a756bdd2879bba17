"""Moving records inside a transaction: every state written goes through :func:`bot.lifecycle.move`.

Each move first locks the record it reads (``FOR UPDATE``), so the state it checks is the state it
changes: another replica's event on the same record waits for this transaction and then sees its
result. Records are locked in one order everywhere (incident, then approval, then step run), so two
events never wait on each other. The UPDATEs of state live here and nowhere else: a fencing check
for replicas (``AND lease_token = $n``) is one more predicate in these statements.
"""

from __future__ import annotations

import time
from typing import Any

from bot import lifecycle
from bot.errors import NotFound
from bot.incidents import Approval, ApprovalState, IncidentState, StepRun
from bot.lifecycle import Event
from bot.store.postgres.base import Conn, one
from bot.store.postgres.reads import ReadsMixin
from bot.store.records import StepResult, approval_of, dumps, step_run_of

I = IncidentState  # noqa: E741


class MovesMixin(ReadsMixin):
    @staticmethod
    async def _lock_incident(conn: Conn, incident_id: int) -> str:
        """Lock the incident row; returns its state."""
        state = await conn.fetchval("SELECT state FROM incidents WHERE id = $1 FOR UPDATE", incident_id)
        if state is None:
            raise NotFound(f"no incident {incident_id}")
        return str(state)

    async def _move_incident(
        self,
        conn: Conn,
        event: Event,
        incident_id: int,
        new: str | None,
        *,
        note: str | None = None,
        next_step: int | None = None,
    ) -> str:
        """Move an incident (``new`` None: keep the state, only note/next_step change)."""
        current = await self._lock_incident(conn, incident_id)
        if new is None:
            new = current
        if current == I.RESOLVED and new != I.RESOLVED and event != Event.RESOLVE:
            new = I.RESOLVED  # the alert resolved meanwhile: whatever a late runner says, it stays resolved
        state = lifecycle.move("incident", event, current, new, incident_id)
        await conn.execute(
            "UPDATE incidents SET state = $1, updated_at = $2, note = coalesce($3, note),"
            " next_step = coalesce($4, next_step) WHERE id = $5",
            state,
            time.time(),
            note,
            next_step,
            incident_id,
        )
        return state

    @staticmethod
    async def _finish_run(
        conn: Conn, event: Event, run_id: int, result: StepResult, *, finished: bool = True
    ) -> StepRun:
        status = await conn.fetchval("SELECT status FROM step_runs WHERE id = $1 FOR UPDATE", run_id)
        if status is None:
            raise NotFound(f"no step run {run_id}")
        new = lifecycle.move("step", event, status, result.status, run_id)
        row = await conn.fetchrow(
            "UPDATE step_runs SET status = $1, summary = $2, details = $3, data = $4, error = $5,"
            " plan = coalesce($6, plan), plan_hash = coalesce($7, plan_hash), finished_at = $8"
            " WHERE id = $9 RETURNING *",
            new,
            result.summary,
            result.details,
            dumps(result.data),
            result.error,
            dumps(result.plan) if result.plan is not None else None,
            result.plan_hash,
            time.time() if finished else None,
            run_id,
        )
        return step_run_of(one(row))

    async def _audit_step(self, conn: Conn, run: StepRun, target: str | None, actor: str | None) -> None:
        await self._audit(
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

    async def _lock_approval(self, conn: Conn, approval_id: int) -> Approval:
        """Lock the approval's incident, then the approval (the one lock order); returns it."""
        incident_id = await conn.fetchval("SELECT incident_id FROM approvals WHERE id = $1", approval_id)
        if incident_id is None:
            raise NotFound(f"no approval {approval_id}")
        await self._lock_incident(conn, int(incident_id))
        row = await conn.fetchrow("SELECT * FROM approvals WHERE id = $1 FOR UPDATE", approval_id)
        if row is None:
            raise NotFound(f"no approval {approval_id}")
        return approval_of(one(row))

    @staticmethod
    async def _move_approval(
        conn: Conn, event: Event, ap: Approval, new: ApprovalState, **sets: Any
    ) -> Approval:
        """Move a locked approval (read by :meth:`_lock_approval` in this transaction)."""
        state = lifecycle.move("approval", event, ap.state, new, ap.id)
        cols = "".join(f", {k} = ${i}" for i, k in enumerate(sets, start=3))
        row = await conn.fetchrow(
            f"UPDATE approvals SET state = $2{cols} WHERE id = $1 RETURNING *",  # noqa: S608 - column names are code
            ap.id,
            state,
            *sets.values(),
        )
        return approval_of(one(row))
