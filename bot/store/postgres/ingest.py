"""Alert ingest on PostgreSQL with group commit: notifications that wait together share one
transaction, each answered after its COMMIT.

Same rules as :mod:`bot.store.sqlite_ingest`, for any number of replicas at once:

- One incident per (fingerprint, startsAt): the unique key ``incidents_alert_once`` and
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING``. A re-delivery that reaches another replica while
  the first is still in its transaction waits for it on the key, then finds the row and is a no-op.
- A notification's firing alerts are ONE ``INSERT ... SELECT FROM unnest(...)`` and its audit
  records one more, whatever the number of alerts: round trips, not rows, cost time here.
- Alert storms: a new alert of the same playbook on the same target as an open incident joins it
  (``merged``, the parent's ``alert_count`` grows). Two replicas ingesting such alerts at once would
  each miss the other's uncommitted incident and open two, so the transaction first takes an
  advisory lock per (playbook, target) it may join (sorted, so two notifications cannot deadlock):
  the second waits, then sees the first's incident and joins it.
- A resolved alert closes its incident and cancels its pending approval in the same transaction.

Group commit, as on SQLite: a notification that arrives while :data:`GROUPS_IN_FLIGHT` ingest
transactions are already running waits, and every notification waiting when one of them ends goes
into the next transaction (up to :data:`MAX_GROUP`). A transaction costs four round trips and one
WAL flush however many notifications it holds, so under load the cost per notification falls
instead of the queue for the pool growing; a notification alone is written at once, as before.
Within a group the notifications are applied in arrival order, exactly as if each had its own
transaction (a repeat in a later one is a duplicate; the unique key still decides across
replicas). If the server refuses a statement of the group (not a deadlock, which is retried
whole), each notification is tried again in a transaction of its own, so a bad one cannot fail the
others; if the database is unreachable, they all fail at once (503, and Alertmanager retries).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
import pydantic_core

from bot import lifecycle
from bot.errors import StoreError
from bot.incidents import ApprovalState, IncidentState, StepStatus
from bot.lifecycle import Event
from bot.store.postgres.base import Conn, lock_key, storable
from bot.store.postgres.moves import MovesMixin
from bot.store.postgres.reads import OPEN_STATES
from bot.store.records import IngestItem, IngestResult, approval_of, settle_ingests, strings_json

_NEW, _UNMATCHED, _MERGED = IncidentState.NEW.value, IncidentState.UNMATCHED.value, IncidentState.MERGED.value

# The new rows, and per row the oldest OPEN incident of its (playbook, target) that existed before
# this statement (all parts of a statement share one snapshot: the lookup never sees the rows being
# inserted), so a notification's firing alerts cost one round trip, storm or not.
_INSERT_FIRING = (
    "WITH ins AS (INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook,"
    " target, target_index, labels, annotations, note, source, created_at, updated_at, links)"
    " SELECT f, s, a, 'firing', st, p, t, ti, l, an, n, src, $12, $12, lk"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],"
    " $8::text[], $9::text[], $10::text[], $11::text[], $14::text[])"
    " WITH ORDINALITY AS u(f, s, a, st, p, t, ti, l, an, n, src, lk, o)"
    " ORDER BY o ON CONFLICT ON CONSTRAINT incidents_alert_once DO NOTHING"
    " RETURNING id, fingerprint, starts_at, playbook, target)"
    " SELECT ins.id, ins.fingerprint, ins.starts_at, (SELECT min(i.id) FROM incidents AS i"
    " WHERE i.target = ins.target AND i.playbook = ins.playbook AND i.state = ANY($13::text[])"
    " AND NOT i.dry_run) AS parent FROM ins"
)
_INSERT_AUDIT = (
    "INSERT INTO audit (ts, kind, incident_id, actor, target, plan_hash, detail)"
    " SELECT $1, k, i, a, t, p, d FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],"
    " $7::text[]) WITH ORDINALITY AS u(k, i, a, t, p, d, o) ORDER BY o"
)

GROUPS_IN_FLIGHT = 2
"""Ingest transactions one store runs at once (the rest of the pool stays free for the runner)."""
MAX_GROUP = 64
"""Notifications in one ingest transaction at most."""

Waiting = tuple[Sequence[IngestItem], "asyncio.Future[IngestResult]"]

Audit = tuple[str, int | None, str | None, str | None, str | None, str]
"""An audit row of the notification: kind, incident, actor, target, plan hash, detail (JSON)."""


def _resolved_state(current: str) -> str:
    """Unmatched and merged records keep their state: they never ran a playbook of their own."""
    return current if current in (_UNMATCHED, _MERGED) else IncidentState.RESOLVED.value


def _retry_alone(exc: BaseException) -> bool:
    """Whether a failed group is worth trying again one notification at a time: a statement the
    server refused (what one notification carried may be at fault), not the database unreachable,
    shutting down, out of resources or too slow (every notification would fail again, each after a
    timeout of its own, and the webhook's 503s would come late)."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    unreachable = (
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, query cancelled
        asyncpg.exceptions.InsufficientResourcesError,
    )
    if isinstance(cause, unreachable):
        return False
    return isinstance(cause, asyncpg.PostgresError) or not isinstance(exc, StoreError)


def _joins(it: IngestItem) -> bool:
    return it.alert.status == "firing" and bool(it.playbook and it.target) and not it.refused


def _received(it: IngestItem, inc_id: int | None, duplicate: bool, starts: str | None = None) -> Audit:
    a = it.alert
    detail = {
        "alertname": a.alertname,
        "status": a.status,
        "fingerprint": a.fingerprint,
        "starts_at": starts or a.starts_key,
        "duplicate": duplicate,
    }
    if it.refused:
        detail["refused"] = it.note
    return ("alert.received", inc_id, it.source, it.target, None, pydantic_core.to_json(detail).decode())


class IngestMixin(MovesMixin):
    def __init__(
        self, url: str, *, ingest_groups: int = GROUPS_IN_FLIGHT, ingest_max_group: int = MAX_GROUP, **kw: Any
    ) -> None:
        super().__init__(url, **kw)
        self.ingest_groups = ingest_groups
        self.ingest_max_group = ingest_max_group
        """``ingest_max_group=1`` with ``ingest_groups`` = the pool's size: one transaction per
        notification, as before group commit (the benchmark's baseline)."""
        self._ingest_queue: list[Waiting] = []
        self._ingest_running = 0
        self._ingest_tasks: set[asyncio.Task[None]] = set()

    async def ingest(self, items: Sequence[IngestItem]) -> IngestResult:
        """Persist a notification's alerts atomically; repeats of a known alert are no-ops.

        Returns once the alerts are committed (with the notifications that waited with it: group
        commit); raises :class:`~bot.errors.StoreError` when they could not be (the webhook answers
        503 and Alertmanager sends them again). A caller that goes away does not stop the write.
        """
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._ingest_queue.append((items, fut))
        self._start_groups()
        return await fut

    def _start_groups(self) -> None:
        while self._ingest_queue and self._ingest_running < self.ingest_groups:
            group = self._ingest_queue[: self.ingest_max_group]
            del self._ingest_queue[: self.ingest_max_group]
            self._ingest_running += 1
            task = asyncio.create_task(self._ingest_group(group))
            self._ingest_tasks.add(task)
            task.add_done_callback(self._ingest_tasks.discard)

    async def _ingest_group(self, group: list[Waiting]) -> None:
        try:
            outcomes = await self._ingest_many([items for items, _ in group])
        except asyncio.CancelledError:  # the store's loop is going away: so are its callers
            for _, fut in group:
                fut.cancel()
            raise
        finally:
            self._ingest_running -= 1
            self._start_groups()
        settle_ingests((fut, outcome) for (_, fut), outcome in zip(group, outcomes, strict=True))

    async def _ingest_many(self, batches: list[Sequence[IngestItem]]) -> list[IngestResult | BaseException]:
        """One transaction for every notification of the group; if it fails and there were several,
        one transaction each (whose errors are theirs alone)."""
        try:
            results: list[IngestResult | BaseException] = list(await self._ingest_tx(batches))
            return results
        except Exception as exc:
            if len(batches) == 1 or not _retry_alone(exc):
                return [exc] * len(batches)
        out: list[IngestResult | BaseException] = []
        for items in batches:
            try:
                out.extend(await self._ingest_tx([items]))
            except Exception as exc:
                out.append(exc)
        return out

    async def _ingest_tx(self, batches: Sequence[Sequence[IngestItem]]) -> list[IngestResult]:
        locks = {lock_key(f"{it.playbook}\n{it.target}") for items in batches for it in items if _joins(it)}

        async def run(conn: Conn) -> list[IngestResult]:
            return await self._ingest_items(conn, batches, time.time())

        results = await self._write(run, locks=sorted(locks))
        self.ingest_transactions += 1
        return results

    async def _ingest_items(
        self, conn: Conn, batches: Sequence[Sequence[IngestItem]], now: float
    ) -> list[IngestResult]:
        """Exactly as if each alert were applied on its own, in order: a firing alert opens an
        incident unless one exists for its (fingerprint, startsAt); a resolved one closes it. A run
        of firing alerts (across notifications) is one INSERT, the audit trail one more."""
        results = [IngestResult() for _ in batches]
        audit: list[Audit] = []
        run: list[tuple[int, IngestItem]] = []

        async def flush_run() -> None:
            if not run:
                return
            ids, parents = await self._insert_firing(conn, [it for _, it in run], now, audit)
            merged = await self._join_open(conn, run, ids, parents, results)
            for (b, it), inc_id in zip(run, ids, strict=True):
                if inc_id is None:
                    results[b].duplicates += 1
                elif it.refused:
                    results[b].refused.append(inc_id)
                elif inc_id not in merged and it.playbook and it.target:
                    results[b].new.append(inc_id)
                    results[b].targets[inc_id] = it.target
            run.clear()

        for b, items in enumerate(batches):
            for it in items:
                if it.alert.status == "firing":
                    run.append((b, it))
                else:
                    await flush_run()
                    inc_id, duplicate = await self._resolve_alert(conn, it, now, results[b])
                    audit.append(_received(it, inc_id, duplicate))
        await flush_run()
        if audit:
            columns = list(zip(*audit, strict=True))
            await conn.execute(_INSERT_AUDIT, now, *(list(c) for c in columns))
        return results

    @staticmethod
    async def _insert_firing(
        conn: Conn, items: list[IngestItem], now: float, audit: list[Audit]
    ) -> tuple[list[int | None], dict[int, int]]:
        """Open incidents for firing alerts: the new incident's id per alert (None for a known one),
        and new id -> the open incident of its (playbook, target) that existed before, if any."""
        starts = [it.alert.starts_key for it in items]
        rows = await conn.fetch(
            _INSERT_FIRING,
            [it.alert.fingerprint for it in items],
            starts,
            [it.alert.alertname for it in items],
            [_NEW if it.playbook and it.target else _UNMATCHED for it in items],
            [it.playbook for it in items],
            [it.target for it in items],
            [it.target_index for it in items],
            [strings_json(it.alert.labels) for it in items],
            [strings_json(it.alert.annotations) for it in items],
            [it.note for it in items],
            [it.source for it in items],
            now,
            OPEN_STATES,
            [strings_json(it.links) if it.links else "{}" for it in items],
        )
        parents = {int(r["id"]): int(r["parent"]) for r in rows if r["parent"] is not None}
        ids: dict[tuple[str, str], int] = {(r["fingerprint"], r["starts_at"]): int(r["id"]) for r in rows}
        # The first alert with a key got the row; later ones in the same notification repeat it.
        out = [
            ids.pop((storable(it.alert.fingerprint), s), None) for it, s in zip(items, starts, strict=True)
        ]
        audit.extend(
            _received(it, inc_id, inc_id is None, s) for it, inc_id, s in zip(items, out, starts, strict=True)
        )
        # A label that pointed a target outside its allowed addresses gets a record of its own:
        # it is either a misconfiguration or an attack, and both deserve to be found in the audit.
        audit.extend(
            ("target.refused", inc_id, it.source, None, None, strings_json({"reason": it.note}))
            for it, inc_id in zip(items, out, strict=True)
            if it.refused and inc_id is not None
        )
        return out, parents

    @staticmethod
    async def _join_open(
        conn: Conn,
        run: Sequence[tuple[int, IngestItem]],
        ids: Sequence[int | None],
        parents: dict[int, int],
        results: list[IngestResult],
    ) -> set[int]:
        """Alert storms: new incidents of a (playbook, target) that already has an open incident (or
        several new ones in this run) join the oldest as ``merged``; returns the ids that joined.

        The open incident was looked up by the INSERT, under the pair's advisory lock (taken at the
        start of the transaction). Its count is raised only if it is STILL open (the UPDATE locks the
        row and re-checks its state): a runner that finished it meanwhile wins, and the new alerts
        form an incident of their own. Dry runs never absorb real alerts.
        """
        groups: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        batch: dict[int, int] = {}
        for (b, it), inc_id in zip(run, ids, strict=True):
            if inc_id is not None and it.playbook and it.target and not it.refused:
                groups[(it.playbook, it.target)].append(inc_id)
                batch[inc_id] = b
        joined: set[int] = set()
        for new in groups.values():
            parent = parents.get(new[0])
            if parent is not None and not await conn.fetchval(
                "UPDATE incidents SET alert_count = alert_count + $1 WHERE id = $2"
                " AND state = ANY($3::text[]) RETURNING id",
                len(new),
                parent,
                OPEN_STATES,
            ):
                parent = None  # finished meanwhile
            if parent is None:
                parent = min(new)
                if len(new) > 1:
                    await conn.execute(
                        "UPDATE incidents SET alert_count = alert_count + $1 WHERE id = $2",
                        len(new) - 1,
                        parent,
                    )
            joiners = [i for i in new if i != parent]
            if not joiners:
                continue
            for _ in joiners:
                lifecycle.move("incident", Event.OPEN, None, _MERGED)
            await conn.execute(
                "UPDATE incidents SET state = 'merged', merged_into = $1, note = $2 WHERE id = ANY($3::bigint[])",
                parent,
                f"joined incident #{parent} (same playbook and target)",
                joiners,
            )
            for i in joiners:
                merged = results[batch[i]].merged
                merged[parent] = merged.get(parent, 0) + 1
            joined.update(joiners)
        return joined

    async def _cancel_pending(self, conn: Conn, incident_id: int, result: IngestResult) -> None:
        """The lifecycle's ``resolve`` for approvals: a pending one is cancelled with its step run."""
        for row in await conn.fetch(
            "SELECT * FROM approvals WHERE incident_id = $1 AND state = 'pending' ORDER BY id FOR UPDATE",
            incident_id,
        ):
            ap = approval_of(row)
            now = time.time()
            await self._move_approval(
                conn, Event.RESOLVE, ap, ApprovalState.CANCELLED, decided_by="alert resolved", decided_at=now
            )
            step = await conn.fetchval(
                "SELECT status FROM step_runs WHERE id = $1 FOR UPDATE", ap.step_run_id
            )
            status = lifecycle.move("step", Event.RESOLVE, step, StepStatus.CANCELLED, ap.step_run_id)
            await conn.execute(
                "UPDATE step_runs SET status = $1, summary = 'cancelled: the alert resolved', finished_at = $2"
                " WHERE id = $3",
                status,
                now,
                ap.step_run_id,
            )
            await self._audit(
                conn,
                "approval.cancelled",
                incident_id=incident_id,
                actor="alert resolved",
                plan_hash=ap.plan_hash,
                detail={"approval_id": ap.id, "reason": "the alert resolved"},
            )
            result.cancelled.append(ap.id)

    async def _resolve_alert(
        self, conn: Conn, it: IngestItem, now: float, result: IngestResult
    ) -> tuple[int | None, bool]:
        """A resolved alert: close its incident (or record one that was never seen firing)."""
        a = it.alert
        ends = a.ends_at.isoformat() if a.ends_at else None
        find = "SELECT id, alert_status, state FROM incidents WHERE fingerprint = $1 AND starts_at = $2 FOR UPDATE"
        row: Any = await conn.fetchrow(find, a.fingerprint, a.starts_key)
        if row is None:
            inc_id = await conn.fetchval(
                "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook,"
                " target, target_index, labels, annotations, note, source, created_at, updated_at, ends_at)"
                " VALUES ($1,$2,$3,'resolved',$4,$5,$6,$7,$8,$9,'resolved before the bot saw it firing',$10,$11,$11,$12)"
                " ON CONFLICT ON CONSTRAINT incidents_alert_once DO NOTHING RETURNING id",
                a.fingerprint,
                a.starts_key,
                a.alertname,
                IncidentState.RESOLVED.value,
                it.playbook,
                it.target,
                it.target_index,
                strings_json(a.labels),
                strings_json(a.annotations),
                it.source,
                now,
                ends,
            )
            if inc_id is not None:
                return int(inc_id), False
            # Another replica stored this alert firing meanwhile (we waited for it on the key).
            row = await conn.fetchrow(find, a.fingerprint, a.starts_key)
        if row["alert_status"] == "resolved":
            result.duplicates += 1
            return int(row["id"]), True
        state = lifecycle.move(
            "incident", Event.RESOLVE, row["state"], _resolved_state(row["state"]), row["id"]
        )
        await conn.execute(
            "UPDATE incidents SET alert_status = 'resolved', ends_at = $1, updated_at = $2, state = $3 WHERE id = $4",
            ends,
            now,
            state,
            row["id"],
        )
        await self._cancel_pending(conn, int(row["id"]), result)
        result.resolved.append(int(row["id"]))
        return int(row["id"]), False
