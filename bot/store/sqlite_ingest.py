"""Alert ingest with group commit: many notifications, one transaction, answered after COMMIT.

Besides opening and resolving incidents, ingest applies two grouping rules in the same transaction:
an alert of the same playbook on the same target as an open incident joins it (``merged``: one
diagnosis, one approval card, the count shown) instead of opening another, and an alert that
resolves cancels its incident's pending approval with its step run (the lifecycle's ``resolve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pydantic_core

from bot import lifecycle
from bot.errors import StoreError
from bot.incidents import ApprovalState, IncidentState, StepStatus
from bot.lifecycle import Event
from bot.store.records import IngestItem, IngestResult, settle_ingests, strings_json
from bot.store.sqlite_base import SQLiteBase
from bot.store.sqlite_checkpoint import finish as finish_checkpoint

# Multi-row inserts from one statement per size class (1, 2, 4, ... 256 rows, so SQLite's statement
# cache holds them all): rows are padded with NULLs up to the size class and the padding is filtered
# out. SQLite before 3.32 allows 999 parameters per statement, later versions 32766.
_MAX_ROWS = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 64


def _padded_insert(insert: str, width: int, n: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{insert} SELECT * FROM (VALUES {','.join([row] * n)}) WHERE column1 IS NOT NULL"  # noqa: S608 - constants


def _size_class(n: int) -> int:
    return 1 << (n - 1).bit_length()


_INSERT_FIRING = {
    n: _padded_insert(
        "INSERT OR IGNORE INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook,"
        " target, target_index, labels, annotations, note, source, created_at, updated_at, links)",
        15,
        n,
    )
    for n in (1 << i for i in range(_MAX_ROWS.bit_length()))
}
_INSERT_AUDIT = {
    n: _padded_insert("INSERT INTO audit (ts, kind, incident_id, actor, target, plan_hash, detail)", 7, n)
    for n in _INSERT_FIRING
}
# The rows created since ``before`` (the highest id before the INSERT: the transaction holds the
# write lock, so nobody else adds rows meanwhile). Not last_insert_rowid() - changes(): an ignored
# row still uses up an AUTOINCREMENT id, so the new ids can have gaps.
_CREATED = "SELECT json_group_array(json_array(id, fingerprint, starts_at)) FROM incidents WHERE id > ?"
_LAST_ID = "SELECT coalesce(max(id), 0) FROM incidents"


def _insert_rows(
    conn: sqlite3.Connection, statements: dict[int, str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT ``rows`` (all of one width, first column never NULL) in as few statements as possible."""
    size = _size_class(len(rows))
    values = [v for r in rows for v in r]
    values += [None] * ((size - len(rows)) * len(rows[0]))
    conn.execute(statements[size], values)


_NEW, _UNMATCHED, _MERGED = IncidentState.NEW.value, IncidentState.UNMATCHED.value, IncidentState.MERGED.value
_OPEN_SQL = "('new', 'diagnosing', 'awaiting_approval', 'remediating')"


def _resolved_state(current: str) -> str:
    """Unmatched and merged records keep their state: they never ran a playbook of their own."""
    return current if current in (_UNMATCHED, _MERGED) else IncidentState.RESOLVED.value


class IngestMixin(SQLiteBase):
    """Group commit of ingest calls: notifications waiting while the store thread is busy."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self._ingest_lock = threading.Lock()
        self._ingest_queue: list[tuple[Sequence[IngestItem], asyncio.Future[IngestResult]]] = []
        self._ingest_scheduled = False
        self.ingest_transactions = 0
        """Transactions that ingest used so far (fewer than calls when they were grouped)."""

    def _ingest_batches(
        self, conn: sqlite3.Connection, batches: Sequence[Sequence[IngestItem]], now: float
    ) -> list[IngestResult]:
        """Notifications' rows, in arrival order, inside the caller's transaction.

        Exactly as if each alert were applied on its own, in order: a firing alert opens an incident
        unless one exists for its (fingerprint, startsAt); a resolved one closes it. A run of firing
        alerts is one multi-row INSERT OR IGNORE (per 256 rows) and the audit trail one INSERT more,
        so a group costs six SQLite calls rather than two per alert: each call releases the GIL, and
        under load winning it back from the event loop can take a switch interval (5 ms).
        """
        results = [IngestResult() for _ in batches]
        audit: list[tuple[Any, ...]] = []
        run: list[tuple[int, IngestItem]] = []

        def flush_run() -> None:
            if not run:
                return
            ids = self._insert_firing(conn, [it for _, it in run], now, audit)
            merged = self._join_open(conn, run, ids, results)
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
                    flush_run()
                    inc_id, duplicate = self._resolve_alert(conn, it, now, results[b])
                    audit.append(self._received(it, inc_id, duplicate, now))
        flush_run()
        for i in range(0, len(audit), _MAX_ROWS):
            _insert_rows(conn, _INSERT_AUDIT, audit[i : i + _MAX_ROWS])
        return results

    @staticmethod
    def _received(
        it: IngestItem, inc_id: int | None, duplicate: bool, now: float, starts: str | None = None
    ) -> tuple[Any, ...]:
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
        return (
            now,
            "alert.received",
            inc_id,
            it.source,
            it.target,
            None,
            pydantic_core.to_json(detail).decode(),
        )

    def _insert_firing(
        self, conn: sqlite3.Connection, items: list[IngestItem], now: float, audit: list[tuple[Any, ...]]
    ) -> list[int | None]:
        """Open incidents for firing alerts: the new incident's id per alert, None for a known one."""
        starts = [it.alert.starts_key for it in items]
        rows = []
        for it, start in zip(items, starts, strict=True):
            a = it.alert
            rows.append(
                (
                    a.fingerprint,
                    start,
                    a.alertname,
                    "firing",
                    _NEW if it.playbook and it.target else _UNMATCHED,
                    it.playbook,
                    it.target,
                    it.target_index,
                    pydantic_core.to_json(a.labels).decode(),
                    pydantic_core.to_json(a.annotations).decode(),
                    it.note,
                    it.source,
                    now,
                    now,
                    strings_json(it.links) if it.links else "{}",
                )
            )
        ids: dict[tuple[str, str], int] = {}
        for i in range(0, len(rows), _MAX_ROWS):
            before = conn.execute(_LAST_ID).fetchone()[0]
            _insert_rows(conn, _INSERT_FIRING, rows[i : i + _MAX_ROWS])
            created = conn.execute(_CREATED, (before,)).fetchone()[0]
            ids.update({(fp, st): n for n, fp, st in json.loads(created)})
        # The first alert with a key got the row; later ones in the same run repeat it.
        out = [ids.pop((it.alert.fingerprint, start), None) for it, start in zip(items, starts, strict=True)]
        audit.extend(
            self._received(it, inc_id, inc_id is None, now, start)
            for it, inc_id, start in zip(items, out, starts, strict=True)
        )
        # A label that pointed a target outside its allowed addresses gets a record of its own:
        # it is either a misconfiguration or an attack, and both deserve to be found in the audit.
        audit.extend(
            (now, "target.refused", inc_id, it.source, None, None, strings_json({"reason": it.note}))
            for it, inc_id in zip(items, out, strict=True)
            if it.refused and inc_id is not None
        )
        return out

    @staticmethod
    def _join_open(
        conn: sqlite3.Connection,
        run: Sequence[tuple[int, IngestItem]],
        ids: Sequence[int | None],
        results: list[IngestResult],
    ) -> set[int]:
        """Alert storms: new incidents of a (playbook, target) that already has an open incident (or
        several new ones in this run) join the oldest as ``merged``; returns the ids that joined.

        One indexed look-up per distinct (playbook, target) in the run, not per alert, so a flood of
        one alert name costs what one alert costs. Dry runs never absorb real alerts.
        """
        groups: defaultdict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for (b, it), inc_id in zip(run, ids, strict=True):
            if inc_id is not None and it.playbook and it.target and not it.refused:
                groups[(it.playbook, it.target)].append((b, inc_id))
        joined: set[int] = set()
        for (playbook, target), new in groups.items():
            first = min(i for _, i in new)
            row = conn.execute(
                f"SELECT id FROM incidents WHERE target = ? AND playbook = ? AND state IN {_OPEN_SQL}"  # noqa: S608
                " AND dry_run = 0 AND id < ? ORDER BY id LIMIT 1",
                (target, playbook, first),
            ).fetchone()
            parent = int(row["id"]) if row is not None else first
            joiners = [(b, i) for b, i in new if i != parent]
            if not joiners:
                continue
            for _ in joiners:
                lifecycle.move("incident", Event.OPEN, None, _MERGED)
            marks = ",".join("?" * len(joiners))
            conn.execute(
                f"UPDATE incidents SET state = 'merged', merged_into = ?, note = ? WHERE id IN ({marks})",  # noqa: S608
                (parent, f"joined incident #{parent} (same playbook and target)", *(i for _, i in joiners)),
            )
            conn.execute(
                "UPDATE incidents SET alert_count = alert_count + ? WHERE id = ?", (len(joiners), parent)
            )
            for b, i in joiners:
                results[b].merged[parent] = results[b].merged.get(parent, 0) + 1
                joined.add(i)
        return joined

    def _cancel_pending(self, conn: sqlite3.Connection, incident_id: int, result: IngestResult) -> None:
        """The lifecycle's ``resolve`` for approvals: a pending one is cancelled with its step run."""
        for ap in conn.execute(
            "SELECT id, step_run_id, plan_hash, state FROM approvals WHERE incident_id = ? AND state = 'pending'",
            (incident_id,),
        ).fetchall():
            new = lifecycle.move("approval", Event.RESOLVE, ap["state"], ApprovalState.CANCELLED, ap["id"])
            conn.execute(
                "UPDATE approvals SET state = ?, decided_by = 'alert resolved', decided_at = ? WHERE id = ?",
                (new, time.time(), ap["id"]),
            )
            step = conn.execute("SELECT status FROM step_runs WHERE id = ?", (ap["step_run_id"],)).fetchone()
            status = lifecycle.move(
                "step", Event.RESOLVE, step["status"], StepStatus.CANCELLED, ap["step_run_id"]
            )
            conn.execute(
                "UPDATE step_runs SET status = ?, summary = 'cancelled: the alert resolved', finished_at = ?"
                " WHERE id = ?",
                (status, time.time(), ap["step_run_id"]),
            )
            self._audit(
                conn,
                "approval.cancelled",
                incident_id=incident_id,
                actor="alert resolved",
                plan_hash=ap["plan_hash"],
                detail={"approval_id": ap["id"], "reason": "the alert resolved"},
            )
            result.cancelled.append(int(ap["id"]))

    def _resolve_alert(
        self, conn: sqlite3.Connection, it: IngestItem, now: float, result: IngestResult
    ) -> tuple[int | None, bool]:
        """A resolved alert: close its incident (or record one that was never seen firing)."""
        a = it.alert
        ends = a.ends_at.isoformat() if a.ends_at else None
        row = conn.execute(
            "SELECT id, alert_status, state FROM incidents WHERE fingerprint = ? AND starts_at = ?",
            (a.fingerprint, a.starts_key),
        ).fetchone()
        duplicate = row is not None and row["alert_status"] == "resolved"
        if row is None:
            cur = conn.execute(
                "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook,"
                " target, target_index, labels, annotations, note, source, created_at, updated_at, ends_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    a.fingerprint,
                    a.starts_key,
                    a.alertname,
                    "resolved",
                    IncidentState.RESOLVED,
                    it.playbook,
                    it.target,
                    it.target_index,
                    strings_json(a.labels),
                    strings_json(a.annotations),
                    "resolved before the bot saw it firing",
                    it.source,
                    now,
                    now,
                    ends,
                ),
            )
            return cur.lastrowid, False
        if duplicate:
            result.duplicates += 1
            return int(row["id"]), True
        state = lifecycle.move(
            "incident", Event.RESOLVE, row["state"], _resolved_state(row["state"]), row["id"]
        )
        conn.execute(
            "UPDATE incidents SET alert_status = 'resolved', ends_at = ?, updated_at = ?, state = ? WHERE id = ?",
            (ends, now, state, row["id"]),
        )
        self._cancel_pending(conn, int(row["id"]), result)
        result.resolved.append(int(row["id"]))
        return int(row["id"]), False

    def _ingest(self, items: Sequence[IngestItem]) -> IngestResult:
        """One notification in a transaction of its own."""
        with self._tx() as conn:
            (result,) = self._ingest_batches(conn, [items], time.time())
        self.ingest_transactions += 1
        return result

    def _ingest_group(self) -> None:
        """Store thread: write every waiting notification in one transaction, then answer them all.

        A caller hears back only after COMMIT, so a 200 still means "on disk". Within the group the
        notifications are applied in arrival order on one connection, so a repeat of an alert is
        found by the unique index exactly as across transactions. If one notification fails, the
        group is rolled back and each is retried in a transaction of its own, so a bad one cannot
        fail the others; a failed BEGIN or COMMIT fails them all (the webhook answers 503 and
        Alertmanager retries).
        """
        with self._ingest_lock:
            group, self._ingest_queue = self._ingest_queue, []
        outcomes: list[IngestResult | BaseException]
        try:
            outcomes = self._ingest_many([items for items, _ in group])
        except BaseException as exc:
            outcomes = [exc] * len(group)
        finally:
            with self._ingest_lock:
                again = bool(self._ingest_queue)
                self._ingest_scheduled = again
            if again:
                # To the back of the store's queue: other store calls are not starved by a stream of alerts.
                try:
                    self._executor.submit(self._ingest_group)
                except RuntimeError:  # the store is closing: nothing more runs on its thread
                    with self._ingest_lock:
                        late, self._ingest_queue = self._ingest_queue, []
                        self._ingest_scheduled = False
                    self._answer(late, [StoreError(f"state store {self.path} is closed")] * len(late))
        self._answer(group, outcomes)
        if self._conn is not None:
            finish_checkpoint(self.checkpointer, self._conn)  # after the answers: they do not wait

    def _ingest_many(self, batches: list[Sequence[IngestItem]]) -> list[IngestResult | BaseException]:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [StoreError(f"state store {self.path}: {exc}")] * len(batches)
        try:
            results: list[IngestResult | BaseException] = list(
                self._ingest_batches(conn, batches, time.time())
            )
        except Exception as exc:
            conn.execute("ROLLBACK")
            if len(batches) == 1:
                return [
                    StoreError(f"state store {self.path}: {exc}") if isinstance(exc, sqlite3.Error) else exc
                ]
            return [self._ingest_alone(items) for items in batches]
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [StoreError(f"state store {self.path}: {exc}")] * len(batches)
        self.ingest_transactions += 1
        self._committed()
        return results

    def _ingest_alone(self, items: Sequence[IngestItem]) -> IngestResult | BaseException:
        try:
            return self._guard(self._ingest, items)
        except Exception as exc:
            return exc

    @staticmethod
    def _answer(
        group: list[tuple[Sequence[IngestItem], asyncio.Future[IngestResult]]],
        outcomes: Sequence[IngestResult | BaseException],
    ) -> None:
        """Hand each caller its outcome on its own event loop (one wake-up per loop)."""
        by_loop: defaultdict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IngestResult], Any]]]
        by_loop = defaultdict(list)
        for (_, fut), outcome in zip(group, outcomes, strict=True):
            by_loop[fut.get_loop()].append((fut, outcome))

        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle_ingests, pairs)

    async def ingest(self, items: Sequence[IngestItem]) -> IngestResult:
        """Persist a notification's alerts atomically; repeats of a known alert are no-ops.

        Returns once the alerts are committed. Calls that arrive while the store thread is busy are
        committed together in one transaction (group commit): under a burst of notifications the
        store does one COMMIT per group instead of one per notification.
        """
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        with self._ingest_lock:
            self._ingest_queue.append((items, fut))
            start = not self._ingest_scheduled
            self._ingest_scheduled = True
        if start:
            try:
                self._executor.submit(self._ingest_group)
            except RuntimeError:
                with self._ingest_lock:
                    self._ingest_queue.remove((items, fut))
                    self._ingest_scheduled = False
                raise StoreError(f"state store {self.path} is closed") from None
        return await fut
