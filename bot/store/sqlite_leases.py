"""Leases on SQLite: which process runs an incident, and which one leads the scheduler.

A process works on an incident only while it holds the incident's lease; each acquisition bumps a
fencing token, and every write a runner makes under the lease carries (owner, token), so a process
that lost its lease (paused, partitioned, presumed dead) cannot write results for work another
process took over. The scheduler's leader holds a named lease the same way.
"""

from __future__ import annotations

import time

from bot.store.records import Fence
from bot.store.sqlite_moves import MovesMixin

_OPEN_SQL = "('new', 'diagnosing', 'awaiting_approval', 'remediating')"
_LAPSED = (
    "(lease_owner IS NOT NULL AND lease_until < ?)"
    " OR (? > 0 AND lease_owner IS NULL AND state IN ('new', 'diagnosing') AND alert_status = 'firing'"
    " AND updated_at < ?)"
)
"""A lease that lapsed, or (with ``idle`` > 0) work accepted but never started. Parameters: now, idle,
now - idle."""


class LeasesMixin(MovesMixin):
    async def acquire(self, incident_id: int, owner: str, ttl: float) -> Fence | None:
        """Take the lease of an open incident when it is free, lapsed or already ours (a new
        fencing token each time); None when another owner holds a live lease."""

        def run() -> Fence | None:
            now = time.time()
            with self._tx() as conn:
                cur = conn.execute(
                    "UPDATE incidents SET lease_owner = ?, lease_until = ?, lease_token = lease_token + 1"  # noqa: S608
                    f" WHERE id = ? AND state IN {_OPEN_SQL}"
                    " AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                    (owner, now + ttl, incident_id, owner, now),
                )
                if cur.rowcount != 1:
                    return None
                token = conn.execute(
                    "SELECT lease_token FROM incidents WHERE id = ?", (incident_id,)
                ).fetchone()
                return Fence(owner, int(token[0]))

        return await self._run(run)

    async def renew(self, incident_id: int, fence: Fence, ttl: float) -> bool:
        """Extend a held lease; False when it was lost (the holder must stop writing)."""

        def run() -> bool:
            with self._tx() as conn:
                cur = conn.execute(
                    "UPDATE incidents SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                    (time.time() + ttl, incident_id, fence.owner, fence.token),
                )
                return cur.rowcount == 1

        return await self._run(run)

    async def release(self, incident_id: int, fence: Fence) -> None:
        """Give the lease up (the incident waits for a human, or ended): anyone may continue it."""

        def run() -> None:
            with self._tx() as conn:
                conn.execute(
                    "UPDATE incidents SET lease_owner = NULL, lease_until = 0"
                    " WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                    (incident_id, fence.owner, fence.token),
                )

        await self._run(run)

    async def lapsed(self, limit: int = 100, *, idle: float = 0.0) -> list[int]:
        """Open incidents whose runner's lease lapsed (its process died or hung), and with ``idle``
        those accepted but never started (no lease, untouched for ``idle`` seconds: the process
        that queued them died, or could not reach the store): to take over."""

        def run() -> list[int]:
            now = time.time()
            rows = self.conn.execute(
                f"SELECT id FROM incidents WHERE state IN {_OPEN_SQL} AND ({_LAPSED})"  # noqa: S608
                " ORDER BY id LIMIT ?",
                (now, idle, now - idle, limit),
            ).fetchall()
            return [int(r["id"]) for r in rows]

        return await self._run(run)

    async def lead(self, name: str, owner: str, ttl: float) -> Fence | None:
        """Hold (or take over) the named leader lease; None while another owner holds it."""

        def run() -> Fence | None:
            now = time.time()
            with self._tx() as conn:
                row = conn.execute(
                    "SELECT owner, until, token FROM leaders WHERE name = ?", (name,)
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO leaders (name, owner, until, token) VALUES (?, ?, ?, 1)",
                        (name, owner, now + ttl),
                    )
                    self._audit(conn, "leader.elected", actor=owner, detail={"name": name, "token": 1})
                    return Fence(owner, 1)
                if row["owner"] == owner:
                    conn.execute("UPDATE leaders SET until = ? WHERE name = ?", (now + ttl, name))
                    return Fence(owner, int(row["token"]))
                if row["until"] >= now:
                    return None
                token = int(row["token"]) + 1
                conn.execute(
                    "UPDATE leaders SET owner = ?, until = ?, token = ? WHERE name = ?",
                    (owner, now + ttl, token, name),
                )
                self._audit(
                    conn,
                    "leader.elected",
                    actor=owner,
                    detail={"name": name, "token": token, "after": row["owner"]},
                )
                return Fence(owner, token)

        return await self._run(run)

    async def take_over(self, incident_id: int, owner: str, ttl: float, *, idle: float = 0.0) -> Fence | None:
        """Take a lapsed incident over in one transaction: the lease with a new token, the dead
        runner's running step runs interrupted, and an action it had claimed or was running closed
        as interrupted (the incident fails: never re-run without a new approval). Read-only steps
        will run again; the audit says so. None when the lease is live again or already taken."""

        def run() -> Fence | None:
            now = time.time()
            with self._tx() as conn:
                row = conn.execute(
                    "SELECT state, lease_owner, lease_until, lease_token FROM incidents WHERE id = ?"  # noqa: S608
                    f" AND state IN {_OPEN_SQL} AND ({_LAPSED})",
                    (incident_id, now, idle, now - idle),
                ).fetchone()
                if row is None:
                    return None
                token = int(row["lease_token"]) + 1
                conn.execute(
                    "UPDATE incidents SET lease_owner = ?, lease_until = ?, lease_token = ? WHERE id = ?",
                    (owner, now + ttl, token, incident_id),
                )
                interrupted = self._interrupt_incident_work(conn, incident_id, row["lease_owner"], now)
                self._audit(
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

        return await self._run(run)
