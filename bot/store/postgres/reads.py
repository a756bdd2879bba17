"""Reading incidents, step runs and approvals on PostgreSQL (no state writes here: only a chart's picture).

The same queries and models as :mod:`bot.store.sqlite_reads`; rows are mapped by
:mod:`bot.store.records`, which reads an ``asyncpg.Record`` as it reads an ``sqlite3.Row``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bot.errors import NotFound
from bot.incidents import Approval, Incident, StepRun
from bot.lifecycle import OPEN
from bot.store.postgres.base import Conn, PGBase
from bot.store.records import Row, approval_of, incident_of, step_run_of

OPEN_STATES = sorted(OPEN)


class ReadsMixin(PGBase):
    async def _incident(self, conn: Conn, row: Row, steps: bool) -> Incident:
        inc = incident_of(row)
        if steps:
            inc.steps = [
                step_run_of(r)
                for r in await conn.fetch(
                    "SELECT * FROM step_runs WHERE incident_id = $1 ORDER BY id", inc.id
                )
            ]
            pending = await self._pending_approval(conn, inc.id)
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

    async def get_incident(self, incident_id: int, *, steps: bool = True) -> Incident:
        async def run(conn: Conn) -> Incident:
            row = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            return await self._incident(conn, row, steps)

        return await self._read(run)

    async def list_incidents(
        self, *, limit: int = 50, open_only: bool = False, steps: bool = True
    ) -> list[Incident]:
        async def run(conn: Conn) -> list[Incident]:
            if open_only:
                rows = await conn.fetch(
                    "SELECT * FROM incidents WHERE state = ANY($1::text[]) ORDER BY id DESC LIMIT $2",
                    OPEN_STATES,
                    limit,
                )
            else:
                rows = await conn.fetch("SELECT * FROM incidents ORDER BY id DESC LIMIT $1", limit)
            return [await self._incident(conn, r, steps) for r in rows]

        return await self._read(run)

    async def firing_incident(
        self, target: str, alertname: str, *, source: str | None = None
    ) -> Incident | None:
        """The newest incident for ``alertname`` on ``target`` whose alert still fires (merged or
        unmatched ones excluded), optionally only one opened by ``source``. An indexed look-up
        (``incidents_firing_by_target``): a RedisDown flood asks this once per alert."""

        async def run(conn: Conn) -> Incident | None:
            row = await conn.fetchrow(
                "SELECT * FROM incidents WHERE target = $1 AND alertname = $2 AND alert_status = 'firing'"
                " AND state NOT IN ('unmatched', 'merged') AND ($3::text IS NULL OR source = $3)"
                " ORDER BY id DESC LIMIT 1",
                target,
                alertname,
                source,
            )
            return None if row is None else await self._incident(conn, row, False)

        return await self._read(run)

    async def incidents_to_resume(self) -> list[int]:
        """Firing incidents whose diagnostics had not finished when the bot last stopped."""

        async def run(conn: Conn) -> list[int]:
            rows = await conn.fetch(
                "SELECT id FROM incidents WHERE alert_status = 'firing' AND state IN ('new', 'diagnosing')"
                " ORDER BY id"
            )
            return [int(r["id"]) for r in rows]

        return await self._read(run)

    # -- approvals ------------------------------------------------------------------------------

    @staticmethod
    async def _pending_approval(conn: Conn, incident_id: int) -> Approval | None:
        row = await conn.fetchrow(
            "SELECT * FROM approvals WHERE incident_id = $1 AND state = 'pending' ORDER BY id DESC LIMIT 1",
            incident_id,
        )
        return approval_of(row) if row else None

    async def latest_approval(self, incident_id: int) -> Approval | None:
        """The incident's most recent approval in any state (to tell a late clicker what happened)."""

        async def run(conn: Conn) -> Approval | None:
            row = await conn.fetchrow(
                "SELECT * FROM approvals WHERE incident_id = $1 ORDER BY id DESC LIMIT 1", incident_id
            )
            return approval_of(row) if row else None

        return await self._read(run)

    async def pending_approval(self, incident_id: int) -> Approval | None:
        return await self._read(lambda conn: self._pending_approval(conn, incident_id))

    async def get_approval(self, approval_id: int) -> Approval:
        async def run(conn: Conn) -> Approval:
            row = await conn.fetchrow("SELECT * FROM approvals WHERE id = $1", approval_id)
            if row is None:
                raise NotFound(f"no approval {approval_id}")
            return approval_of(row)

        return await self._read(run)

    async def open_approvals(self, *, incident_id: int | None = None) -> list[Approval]:
        async def run(conn: Conn) -> list[Approval]:
            rows = await conn.fetch(
                "SELECT * FROM approvals WHERE state = 'pending' AND ($1::bigint IS NULL OR incident_id = $1)"
                " ORDER BY id",
                incident_id,
            )
            return [approval_of(r) for r in rows]

        return await self._read(run)

    async def get_step_run(self, run_id: int) -> StepRun:
        async def run(conn: Conn) -> StepRun:
            row = await conn.fetchrow("SELECT * FROM step_runs WHERE id = $1", run_id)
            if row is None:
                raise NotFound(f"no step run {run_id}")
            return step_run_of(row)

        return await self._read(run)

    async def save_chart(self, run_id: int, png: bytes) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO charts (step_run_id, png, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (step_run_id) DO UPDATE SET png = excluded.png, created_at = excluded.created_at",
                run_id,
                png,
                time.time(),
            )

        await self._write(run)

    async def charts(self, run_ids: Sequence[int]) -> dict[int, bytes]:
        async def run(conn: Conn) -> dict[int, bytes]:
            rows = await conn.fetch(
                "SELECT step_run_id, png FROM charts WHERE step_run_id = ANY($1::bigint[])", list(run_ids)
            )
            return {int(r["step_run_id"]): bytes(r["png"]) for r in rows}

        return await self._read(run) if run_ids else {}
