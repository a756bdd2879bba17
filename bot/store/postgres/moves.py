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
from bot.errors import LeaseLost, NotFound
from bot.incidents import Approval, ApprovalState, IncidentState, StepRun, StepStatus
from bot.lifecycle import Event
from bot.store.postgres.base import Conn, one
from bot.store.postgres.reads import ReadsMixin
from bot.store.records import Fence, StepResult, approval_of, dumps, step_run_of

I = IncidentState  # noqa: E741

NOW = "extract(epoch FROM clock_timestamp())::float8"
"""The database's clock, for leases: replicas on several hosts compare one clock, not theirs."""


async def check_fence(conn: Conn, incident_id: int | None, fence: Fence | None) -> None:
    """Lock the incident and raise :class:`LeaseLost` unless ``fence`` still holds its lease (None:
    no lease needed, e.g. a decision, which is a compare-and-set of its own). The row stays locked
    to the end of the transaction, so the lease cannot change hands before the write commits."""
    if fence is None or incident_id is None:
        return
    row = await conn.fetchrow(
        "SELECT lease_owner, lease_token FROM incidents WHERE id = $1 FOR UPDATE", incident_id
    )
    if row is None or row["lease_owner"] != fence.owner or row["lease_token"] != fence.token:
        held = f"{row['lease_owner']} (token {row['lease_token']})" if row is not None else "nobody"
        raise LeaseLost(f"incident {incident_id}: lease lost to {held}; not writing for token {fence.token}")


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

    async def _interrupt_incident_work(
        self, conn: Conn, incident_id: int, owner: str | None, now: float
    ) -> int:
        """Inside a transaction holding the incident's lock: close what a dead process left running.

        Its running step runs become ``interrupted`` (an action's run keeps the keys it had recorded
        as deleted, and counts as a failed action for the breaker); an approval it had claimed or was
        about to run is ``interrupted``; if an action was involved the incident fails, so nothing
        mutating ever runs again without a new approval. Returns the runs closed.
        """
        acted = False
        closed = 0
        target = await conn.fetchval("SELECT target FROM incidents WHERE id = $1", incident_id)
        for r in await conn.fetch(
            "SELECT * FROM step_runs WHERE incident_id = $1 AND status = 'running' ORDER BY id FOR UPDATE",
            incident_id,
        ):
            done = step_run_of(r).data
            sr = await self._finish_run(
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
                await self._audit(
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
        for r in await conn.fetch(
            "SELECT * FROM approvals WHERE incident_id = $1 AND state IN ('approved', 'executing')"
            " ORDER BY id FOR UPDATE",
            incident_id,
        ):
            before = approval_of(r)
            ap = await self._move_approval(
                conn, Event.INTERRUPT, before, ApprovalState.INTERRUPTED, decided_at=now
            )
            if before.state == ApprovalState.APPROVED:  # never claimed: its gate still waits; it ends with it
                await self._finish_run(
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
        state = await self._lock_incident(conn, incident_id)
        if acted and lifecycle.is_open(state):
            await self._move_incident(
                conn,
                Event.INTERRUPT,
                incident_id,
                I.FAILED,
                note="a remediation was interrupted when its process stopped; it was not re-run",
            )
            await self._audit(conn, "step.interrupted", incident_id=incident_id, detail={"owner": owner})
        return closed
