"""The lifecycle's incident and step-run events on PostgreSQL: each one transaction with its audit.

Same semantics as :mod:`bot.store.sqlite_events`; the compare-and-sets (``begin`` only from
``new``, a checkpoint only while the run runs) hold across replicas because the row is locked
before its state is checked (:mod:`bot.store.postgres.moves`).
"""

from __future__ import annotations

import time
from typing import Any

from bot import lifecycle
from bot.incidents import ApprovalState, IncidentState, StepRun, StepStatus, iso
from bot.lifecycle import Event
from bot.store.postgres.base import Conn, one
from bot.store.postgres.moves import NOW, MovesMixin, check_fence
from bot.store.records import Fence, IngestItem, Row, StepResult, dumps, owner_alive, step_run_of

I, A, S = IncidentState, ApprovalState, StepStatus  # noqa: E741


class IncidentEventsMixin(MovesMixin):
    """Incident and step-run events: open, begin, steps, escalate, finish, interrupt."""

    async def open_incident(
        self,
        item: IngestItem,
        *,
        dry_run: bool = False,
        requested_by: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> int:
        """A hand-started incident (``run`` command, slash command)."""
        a = item.alert
        state = lifecycle.move("incident", Event.OPEN, None, I.NEW)

        async def run(conn: Conn) -> int:
            now = time.time()
            inc_id = int(
                await conn.fetchval(
                    "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook,"
                    " target, target_index, labels, annotations, note, source, dry_run, created_at, updated_at,"
                    " requested_by, params) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)"
                    " RETURNING id",
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
                    dry_run,
                    now,
                    now,
                    requested_by,
                    dumps(params or {}),
                )
            )
            await self._audit(
                conn,
                "incident.opened",
                incident_id=inc_id,
                target=item.target,
                actor=requested_by or item.source,
                detail={"playbook": item.playbook, "dry_run": dry_run},
            )
            return inc_id

        return await self._write(run)

    async def begin(self, incident_id: int, *, fence: Fence | None = None) -> bool:
        """new -> diagnosing; False when the incident is not new (another worker or replica began it)."""

        async def run(conn: Conn) -> bool:
            await check_fence(conn, incident_id, fence)
            state = await conn.fetchval("SELECT state FROM incidents WHERE id = $1 FOR UPDATE", incident_id)
            if state != I.NEW:
                return False
            await self._move_incident(conn, Event.BEGIN, incident_id, I.DIAGNOSING)
            return True

        return await self._write(run)

    async def fail(
        self, incident_id: int, note: str, *, target: str | None = None, fence: Fence | None = None
    ) -> None:
        """An incident that cannot run at all (playbook or target gone, target refused)."""

        async def run(conn: Conn) -> None:
            await check_fence(conn, incident_id, fence)
            await self._move_incident(conn, Event.FINISH, incident_id, I.FAILED, note=note)
            await self._audit(
                conn, "incident.failed", incident_id=incident_id, target=target, detail={"reason": note}
            )

        await self._write(run)

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
        status = lifecycle.move("step", Event.STEP_STARTED, None, S.RUNNING)

        async def run(conn: Conn) -> int:
            await check_fence(conn, incident_id, fence)
            return int(
                await conn.fetchval(
                    "INSERT INTO step_runs (incident_id, step_index, step_id, step_type, mutating, status,"
                    " started_at, owner) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                    incident_id,
                    step_index,
                    step_id,
                    step_type,
                    mutating,
                    status,
                    time.time(),
                    self._owner(),
                )
            )

        return await self._write(run)

    async def _incident_of_run(self, conn: Conn, run_id: int, fence: Fence | None) -> None:
        """Lock the run's incident before the run (the one lock order), checking the fence."""
        incident_id = await conn.fetchval("SELECT incident_id FROM step_runs WHERE id = $1", run_id)
        if incident_id is not None:
            await self._lock_incident(conn, int(incident_id))
            await check_fence(conn, int(incident_id), fence)

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

        async def run(conn: Conn) -> StepRun:
            await self._incident_of_run(conn, run_id, fence)
            sr = await self._finish_run(conn, Event.STEP_FINISHED, run_id, result)
            if sr.incident_id is not None and (next_step is not None or incident_state or note):
                await self._move_incident(
                    conn, Event.STEP_FINISHED, sr.incident_id, incident_state, note=note, next_step=next_step
                )
            await self._audit_step(conn, sr, target, actor)
            return sr

        return await self._write(run)

    async def checkpoint(self, run_id: int, data: dict[str, Any]) -> None:
        """Progress of a running action (e.g. keys deleted so far), kept if the process dies."""

        async def run(conn: Conn) -> None:
            await conn.execute(
                "UPDATE step_runs SET data = $1 WHERE id = $2 AND status = 'running'", dumps(data), run_id
            )

        await self._write(run)

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

        async def run(conn: Conn) -> StepRun | None:
            await self._lock_incident(conn, incident_id)
            await check_fence(conn, incident_id, fence)
            sr = None
            if run_id is not None and result is not None:
                sr = await self._finish_run(conn, Event.ESCALATE, run_id, result)
                await self._audit_step(conn, sr, target, None)
            await self._move_incident(
                conn, Event.ESCALATE, incident_id, I.ESCALATED, note=reason, next_step=next_step
            )
            await self._audit(
                conn, "incident.escalated", incident_id=incident_id, target=target, detail={"reason": reason}
            )
            return sr

        return await self._write(run)

    async def finish(
        self, incident_id: int, state: IncidentState, note: str, *, fence: Fence | None = None
    ) -> None:
        async def run(conn: Conn) -> None:
            await check_fence(conn, incident_id, fence)
            new = await self._move_incident(conn, Event.FINISH, incident_id, state, note=note)
            await self._audit(
                conn, "incident.finished", incident_id=incident_id, detail={"state": new, "note": note}
            )

        await self._write(run)

    # -- interrupted work ----------------------------------------------------------------------------

    @staticmethod
    async def _orphaned(conn: Conn, row: Row) -> bool:
        """Whether the work on a running step run or a claimed approval lost its process.

        A process of this host by its pid; another host's (a replica) by the incident's lease: it
        still works there while it holds the lease and the lease has not lapsed (database clock).
        """
        local = owner_alive(row["owner"])
        if local is not None or row["incident_id"] is None:
            return not local
        held = await conn.fetchval(
            f"SELECT lease_owner = $2 AND lease_until >= {NOW} FROM incidents WHERE id = $1",  # noqa: S608
            row["incident_id"],
            row["owner"],
        )
        return not held

    async def interrupt_orphans(self) -> list[int]:
        """At start-up: whatever was running when its process died is marked interrupted.

        A mutating step is never silently re-run: its approval is closed as interrupted and the
        incident goes to ``failed`` with a note, so a human must ask for it again. The keys the
        action had deleted (its last checkpoint) are recorded, and the interruption counts as a
        failed action for the circuit breaker. Returns the incidents whose action was interrupted.
        Each record is locked (incident first) and checked again before it is moved, so two
        replicas starting at once interrupt each orphan once.
        """

        async def run(conn: Conn) -> list[int]:
            now = time.time()
            affected: set[int] = set()
            runs = await conn.fetch(
                "SELECT id, incident_id FROM step_runs WHERE status = 'running' ORDER BY id"
            )
            for candidate in runs:
                if candidate["incident_id"] is not None:
                    await self._lock_incident(conn, int(candidate["incident_id"]))
                r = await conn.fetchrow(
                    "SELECT s.*, i.target AS target FROM step_runs s LEFT JOIN incidents i ON i.id = s.incident_id"
                    " WHERE s.id = $1 AND s.status = 'running' FOR UPDATE OF s",
                    candidate["id"],
                )
                if r is None or not await self._orphaned(conn, r):
                    continue  # finished meanwhile, or another live process (a CLI `approve`) runs it
                done = step_run_of(r).data
                sr = await self._finish_run(
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
                    await self._audit(
                        conn,
                        "step.interrupted",
                        incident_id=r["incident_id"],
                        target=r["target"],
                        detail={"step": sr.step_id, "type": sr.step_type, "mutating": False, "at": iso(now)},
                    )
                    continue
                affected.add(int(r["incident_id"]))
                await self._audit(
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
            claimed = await conn.fetch(
                "SELECT id FROM approvals WHERE state IN ('approved', 'executing') ORDER BY id"
            )
            for candidate in claimed:
                ap = await self._lock_approval(conn, int(candidate["id"]))
                row = await conn.fetchrow("SELECT * FROM approvals WHERE id = $1", ap.id)
                if ap.state not in (A.APPROVED, A.EXECUTING) or not await self._orphaned(conn, one(row)):
                    continue
                moved = await self._move_approval(conn, Event.INTERRUPT, ap, A.INTERRUPTED, decided_at=now)
                if ap.state == A.APPROVED:
                    # Never claimed: its gate step run still waits for a decision; it ends with it.
                    await self._finish_run(
                        conn,
                        Event.INTERRUPT,
                        moved.step_run_id,
                        StepResult(
                            S.INTERRUPTED,
                            "interrupted: the bot stopped after the approval, before the action ran",
                            plan=moved.plan,
                            plan_hash=moved.plan_hash,
                        ),
                    )
                affected.add(ap.incident_id)
            for inc_id in sorted(affected):
                state = await self._lock_incident(conn, inc_id)
                if lifecycle.is_open(state):
                    await self._move_incident(
                        conn,
                        Event.INTERRUPT,
                        inc_id,
                        I.FAILED,
                        note="a remediation was interrupted by a restart; it was not re-run",
                    )
                await self._audit(conn, "step.interrupted", incident_id=inc_id, detail={"at": iso(now)})
            return sorted(affected)

        return await self._write(run)

    # -- references to chat messages (no state) -----------------------------------------------------

    async def set_approval_chat_ref(self, approval_id: int, ref: dict[str, Any]) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute("UPDATE approvals SET chat_ref = $1 WHERE id = $2", dumps(ref), approval_id)

        await self._write(run)

    async def set_incident_chat_ref(self, incident_id: int, ref: dict[str, Any]) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute("UPDATE incidents SET chat_ref = $1 WHERE id = $2", dumps(ref), incident_id)

        await self._write(run)
