"""Leases on PostgreSQL: which replica runs an incident, and which one leads the scheduler.

Same semantics as :mod:`bot.store.sqlite_leases`: a process works on an incident only while it holds
the incident's lease; each acquisition bumps a fencing token, and every write a runner makes under
the lease carries (owner, token) (:func:`~bot.store.postgres.moves.check_fence`), so a replica that
lost its lease (paused, partitioned, presumed dead) cannot write results for work another replica
took over. The scheduler's leader holds a named lease in ``leaders`` the same way.

Each acquisition is one conditional UPDATE (the row lock makes it a compare-and-set across replicas)
and lease times are the database's clock (:data:`~bot.store.postgres.moves.NOW`), so replicas whose
clocks disagree still agree on who holds what.
"""

from __future__ import annotations

import time

from bot.store.postgres.base import Conn
from bot.store.postgres.moves import NOW, MovesMixin
from bot.store.postgres.reads import OPEN_STATES
from bot.store.records import Fence

_LAPSED = (
    f"(lease_owner IS NOT NULL AND lease_until < {NOW})"
    " OR ($3::float8 > 0 AND lease_owner IS NULL AND state IN ('new', 'diagnosing') AND alert_status = 'firing'"
    f" AND updated_at < {NOW} - $3::float8)"
)
"""A lease that lapsed (database clock), or (with ``idle`` = $3 > 0) work accepted but never started."""


class LeasesMixin(MovesMixin):
    async def acquire(self, incident_id: int, owner: str, ttl: float) -> Fence | None:
        """Take the lease of an open incident when it is free, lapsed or already ours (a new
        fencing token each time); None when another owner holds a live lease."""

        async def run(conn: Conn) -> Fence | None:
            token = await conn.fetchval(
                f"UPDATE incidents SET lease_owner = $1, lease_until = {NOW} + $2, lease_token = lease_token + 1"  # noqa: S608 - constant
                " WHERE id = $3 AND state = ANY($4::text[])"
                f" AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < {NOW}) RETURNING lease_token",
                owner,
                ttl,
                incident_id,
                OPEN_STATES,
            )
            return None if token is None else Fence(owner, int(token))

        return await self._write(run)

    async def renew(self, incident_id: int, fence: Fence, ttl: float) -> bool:
        """Extend a held lease; False when it was lost (the holder must stop writing)."""

        async def run(conn: Conn) -> bool:
            return bool(
                await conn.fetchval(
                    f"UPDATE incidents SET lease_until = {NOW} + $1"  # noqa: S608 - constant
                    " WHERE id = $2 AND lease_owner = $3 AND lease_token = $4 RETURNING TRUE",
                    ttl,
                    incident_id,
                    fence.owner,
                    fence.token,
                )
            )

        return await self._write(run)

    async def release(self, incident_id: int, fence: Fence) -> None:
        """Give the lease up (the incident waits for a human, or ended): anyone may continue it."""

        async def run(conn: Conn) -> None:
            await conn.execute(
                "UPDATE incidents SET lease_owner = NULL, lease_until = 0"
                " WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
                incident_id,
                fence.owner,
                fence.token,
            )

        await self._write(run)

    async def lapsed(self, limit: int = 100, *, idle: float = 0.0) -> list[int]:
        """Open incidents whose runner's lease lapsed (its process died or hung), and with ``idle``
        those accepted but never started (no lease, untouched for ``idle`` seconds): to take over."""

        async def run(conn: Conn) -> list[int]:
            rows = await conn.fetch(
                f"SELECT id FROM incidents WHERE state = ANY($1::text[]) AND ({_LAPSED})"  # noqa: S608
                " ORDER BY id LIMIT $2",
                OPEN_STATES,
                limit,
                idle,
            )
            return [int(r["id"]) for r in rows]

        return await self._read(run)

    async def lead(self, name: str, owner: str, ttl: float) -> Fence | None:
        """Hold (or take over) the named leader lease; None while another owner holds it."""

        async def run(conn: Conn) -> Fence | None:
            row = await conn.fetchrow(
                f"INSERT INTO leaders (name, owner, until, token) VALUES ($1, $2, {NOW} + $3, 1)"  # noqa: S608
                " ON CONFLICT (name) DO NOTHING RETURNING token",
                name,
                owner,
                ttl,
            )
            if row is not None:
                await self._audit(conn, "leader.elected", actor=owner, detail={"name": name, "token": 1})
                return Fence(owner, 1)
            held = await conn.fetchrow(
                f"SELECT owner, until < {NOW} AS lapsed, token FROM leaders WHERE name = $1 FOR UPDATE",  # noqa: S608
                name,
            )
            if held is None:  # pragma: no cover - leader rows are never deleted
                return None
            if held["owner"] == owner:
                await conn.execute(f"UPDATE leaders SET until = {NOW} + $1 WHERE name = $2", ttl, name)  # noqa: S608
                return Fence(owner, int(held["token"]))
            if not held["lapsed"]:
                return None
            token = int(held["token"]) + 1
            await conn.execute(
                f"UPDATE leaders SET owner = $1, until = {NOW} + $2, token = $3 WHERE name = $4",  # noqa: S608
                owner,
                ttl,
                token,
                name,
            )
            await self._audit(
                conn,
                "leader.elected",
                actor=owner,
                detail={"name": name, "token": token, "after": held["owner"]},
            )
            return Fence(owner, token)

        return await self._write(run)

    async def take_over(self, incident_id: int, owner: str, ttl: float, *, idle: float = 0.0) -> Fence | None:
        """Take a lapsed incident over in one transaction: the lease with a new token, the dead
        runner's running step runs interrupted, and an action it had claimed or was running closed
        as interrupted (the incident fails: never re-run without a new approval). Read-only steps
        will run again; the audit says so. None when the lease is live again or already taken."""

        async def run(conn: Conn) -> Fence | None:
            row = await conn.fetchrow(
                "SELECT lease_owner, lease_token FROM incidents WHERE id = $1"  # noqa: S608
                f" AND state = ANY($2::text[]) AND ({_LAPSED}) FOR UPDATE",
                incident_id,
                OPEN_STATES,
                idle,
            )
            if row is None:
                return None
            token = int(row["lease_token"]) + 1
            await conn.execute(
                f"UPDATE incidents SET lease_owner = $1, lease_until = {NOW} + $2, lease_token = $3 WHERE id = $4",  # noqa: S608
                owner,
                ttl,
                token,
                incident_id,
            )
            interrupted = await self._interrupt_incident_work(
                conn, incident_id, row["lease_owner"], time.time()
            )
            await self._audit(
                conn,
                "incident.taken_over",
                incident_id=incident_id,
                actor=owner,
                detail={
                    "from": row["lease_owner"],
                    "token": token,
                    "interrupted_runs": interrupted,
                    "note": "read-only steps that were running will run again",
                },
            )
            return Fence(owner, token)

        return await self._write(run)
