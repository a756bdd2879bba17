"""Reading incidents, step runs and approvals (no state writes here: only a chart's picture)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from bot.errors import NotFound
from bot.incidents import Approval, Incident, StepRun
from bot.store.records import approval_of, incident_of, step_run_of
from bot.store.sqlite_base import OPEN_STATES_SQL, SQLiteBase


class ReadsMixin(SQLiteBase):
    def _incident(self, row: sqlite3.Row, steps: bool) -> Incident:
        inc = incident_of(row)
        if steps:
            inc.steps = self._steps(inc.id)
            pending = self._pending_approval(inc.id)
            if pending is not None:
                inc.pending_step = {
                    "approval_id": pending.id,
                    "id": pending.step_id,
                    "type": pending.step_type,
                    "plan": pending.plan,
                    "plan_hash": pending.plan_hash,
                    "required_approvals": pending.required,
                    "approved_by": pending.approvers,
                    "expires_at": pending.expires_at,
                }
        return inc

    def _steps(self, incident_id: int) -> list[StepRun]:
        rows = self.conn.execute(
            "SELECT * FROM step_runs WHERE incident_id = ? ORDER BY id", (incident_id,)
        ).fetchall()
        return [step_run_of(r) for r in rows]

    def _get_incident(self, incident_id: int, steps: bool = True) -> Incident:
        row = self.conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        return self._incident(row, steps)

    async def get_incident(self, incident_id: int, *, steps: bool = True) -> Incident:
        return await self._run(self._get_incident, incident_id, steps)

    async def list_incidents(
        self, *, limit: int = 50, open_only: bool = False, steps: bool = True
    ) -> list[Incident]:
        def run() -> list[Incident]:
            sql = "SELECT * FROM incidents"
            if open_only:
                sql += (
                    f" WHERE state IN {OPEN_STATES_SQL}"  # word for word the partial index incidents_lease's
                )
            rows = self.conn.execute(sql + " ORDER BY id DESC LIMIT ?", (limit,))
            return [self._incident(r, steps) for r in rows.fetchall()]

        return await self._run(run)

    async def firing_incident(
        self, target: str, alertname: str, *, source: str | None = None
    ) -> Incident | None:
        """The newest incident for ``alertname`` on ``target`` whose alert still fires (merged or
        unmatched ones excluded), optionally only one opened by ``source``. An indexed look-up: a
        RedisDown flood asks this once per alert."""

        def run() -> Incident | None:
            sql = (
                "SELECT * FROM incidents WHERE target = ? AND alertname = ? AND alert_status = 'firing'"
                " AND state NOT IN ('unmatched', 'merged')"
            )
            args: list[str] = [target, alertname]
            if source is not None:
                sql += " AND source = ?"
                args.append(source)
            row = self.conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
            return None if row is None else self._incident(row, False)

        return await self._run(run)

    async def incidents_to_resume(self) -> list[int]:
        """Firing incidents whose diagnostics had not finished when the bot last stopped."""

        def run() -> list[int]:
            rows = self.conn.execute(
                f"SELECT id FROM incidents WHERE state IN {OPEN_STATES_SQL} AND alert_status = 'firing'"  # noqa: S608
                " AND state IN ('new', 'diagnosing') ORDER BY id"
            ).fetchall()
            return [int(r["id"]) for r in rows]

        return await self._run(run)

    # -- approvals ------------------------------------------------------------------------------

    def _pending_approval(self, incident_id: int) -> Approval | None:
        row = self.conn.execute(
            "SELECT * FROM approvals WHERE incident_id = ? AND state = 'pending' ORDER BY id DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        return approval_of(row) if row else None

    def _get_approval(self, approval_id: int) -> Approval:
        row = self.conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise NotFound(f"no approval {approval_id}")
        return approval_of(row)

    async def latest_approval(self, incident_id: int) -> Approval | None:
        """The incident's most recent approval in any state (to tell a late clicker what happened)."""

        def run() -> Approval | None:
            row = self.conn.execute(
                "SELECT * FROM approvals WHERE incident_id = ? ORDER BY id DESC LIMIT 1", (incident_id,)
            ).fetchone()
            return approval_of(row) if row else None

        return await self._run(run)

    async def pending_approval(self, incident_id: int) -> Approval | None:
        return await self._run(self._pending_approval, incident_id)

    async def get_approval(self, approval_id: int) -> Approval:
        return await self._run(self._get_approval, approval_id)

    async def open_approvals(self, *, incident_id: int | None = None) -> list[Approval]:
        def run() -> list[Approval]:
            sql, args = "SELECT * FROM approvals WHERE state = 'pending'", []
            if incident_id is not None:
                sql += " AND incident_id = ?"
                args.append(incident_id)
            return [approval_of(r) for r in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

        return await self._run(run)

    async def get_step_run(self, run_id: int) -> StepRun:
        def run() -> StepRun:
            row = self.conn.execute("SELECT * FROM step_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no step run {run_id}")
            return step_run_of(row)

        return await self._run(run)

    async def save_chart(self, run_id: int, png: bytes) -> None:
        def run() -> None:
            with self._tx() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO charts (step_run_id, png, created_at) VALUES (?, ?, ?)",
                    (run_id, png, time.time()),
                )

        await self._run(run)

    async def charts(self, run_ids: Sequence[int]) -> dict[int, bytes]:
        def run() -> dict[int, bytes]:
            ids = list(dict.fromkeys(run_ids))
            marks = ", ".join("?" * len(ids))
            rows = self.conn.execute(
                f"SELECT step_run_id, png FROM charts WHERE step_run_id IN ({marks})",  # noqa: S608 (only ?s)
                ids,
            ).fetchall()
            return {int(r["step_run_id"]): bytes(r["png"]) for r in rows}

        return await self._run(run) if run_ids else {}
