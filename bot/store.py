"""The embedded default store: one SQLite file in WAL mode.

Why SQLite: the bot must answer Alertmanager only after an alert is on disk, survive restarts with
pending approvals intact, and let the CLI (another process) decide approvals with a compare-and-set.
SQLite does all three without a service to run. All calls go through one worker thread, which keeps
the event loop free and serialises writes within the process; ``BEGIN IMMEDIATE`` serialises them
across processes. The audit table is append-only, enforced by triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pydantic_core

from bot import approval_rules
from bot.alerts import Alert
from bot.approval_rules import ApprovalPolicy
from bot.config import ApprovalConfig
from bot.errors import AlreadyDecided, ApprovalError, NotFound, StoreError
from bot.identity import Actor
from bot.incidents import (
    OPEN_STATES,
    Approval,
    ApprovalState,
    AuditEntry,
    Decision,
    Incident,
    IncidentState,
    StepRun,
    StepStatus,
    iso,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    alertname TEXT NOT NULL,
    alert_status TEXT NOT NULL,
    state TEXT NOT NULL,
    playbook TEXT,
    target TEXT,
    target_index INTEGER,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    next_step INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'alertmanager',
    dry_run INTEGER NOT NULL DEFAULT 0,
    chat_ref TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ends_at TEXT,
    requested_by TEXT,
    UNIQUE (fingerprint, starts_at)
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state);
CREATE TABLE IF NOT EXISTS step_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER REFERENCES incidents (id),
    step_index INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    step_type TEXT NOT NULL,
    mutating INTEGER NOT NULL,
    status TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    plan TEXT,
    plan_hash TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS step_runs_incident ON step_runs (incident_id);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    step_run_id INTEGER NOT NULL REFERENCES step_runs (id),
    step_id TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    step_type TEXT NOT NULL,
    plan TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    required INTEGER NOT NULL,
    decisions TEXT NOT NULL DEFAULT '[]',
    requested_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    chat_ref TEXT NOT NULL DEFAULT '{}',
    owner TEXT
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    incident_id INTEGER,
    actor TEXT,
    target TEXT,
    plan_hash TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, kind, ts);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class IngestItem:
    """An alert with what the matcher decided for it, ready to persist."""

    alert: Alert
    playbook: str | None
    target: str | None
    target_index: int | None
    note: str = ""
    source: str = "alertmanager"


@dataclass
class IngestResult:
    new: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    duplicates: int = 0

    @property
    def accepted(self) -> int:
        return len(self.new) + len(self.resolved) + self.duplicates


@dataclass(frozen=True)
class DecisionOutcome:
    """What a decision did: ``complete`` is True for exactly one caller, the one who may execute."""

    approval: Approval
    complete: bool
    needed: int


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


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
        " target, target_index, labels, annotations, note, source, created_at, updated_at)",
        14,
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


_NEW, _UNMATCHED = IncidentState.NEW.value, IncidentState.UNMATCHED.value


def _strings_json(value: dict[str, str]) -> str:
    """Compact JSON of a string map (labels, annotations), encoded in Rust by pydantic-core."""
    return pydantic_core.to_json(value).decode()


def process_owner() -> str:
    """``host:pid`` of this process, recorded on work it starts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that started some work still runs (only knowable on this host)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _j(value: Any) -> str:
    """Compact JSON (one encoder for all calls: ``json.dumps`` with options builds one per call)."""
    return _ENCODER.encode(value)


class Store:
    """Async facade over a SQLite file. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None
        # Group commit of ingest calls: notifications waiting while the store thread is busy.
        self._ingest_lock = threading.Lock()
        self._ingest_queue: list[tuple[Sequence[IngestItem], asyncio.Future[IngestResult]]] = []
        self._ingest_scheduled = False
        self.ingest_transactions = 0
        """Transactions that ingest used so far (fewer than calls when they were grouped)."""

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._guard, fn, *args, **kwargs))

    def _guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(SCHEMA)
        # identity: state files from before requesters were recorded gain the column.
        if "requested_by" not in {r["name"] for r in conn.execute("PRAGMA table_info(incidents)")}:
            try:
                conn.execute("ALTER TABLE incidents ADD COLUMN requested_by TEXT")
            except sqlite3.OperationalError as exc:  # another process added it a moment ago
                if "duplicate column" not in str(exc):
                    raise
        self._conn = conn

    async def open(self) -> Store:
        await self._run(self._open)
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self.conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the store answers a trivial query (readiness)."""
        await self._run(lambda: self.conn.execute("SELECT 1").fetchone())

    # -- audit ----------------------------------------------------------------------------------

    def _audit(
        self,
        conn: sqlite3.Connection,
        kind: str,
        *,
        incident_id: int | None = None,
        actor: str | None = None,
        target: str | None = None,
        plan_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (ts, kind, incident_id, actor, target, plan_hash, detail) VALUES (?,?,?,?,?,?,?)",
            (time.time(), kind, incident_id, actor, target, plan_hash, _j(detail or {})),
        )

    async def audit(self, kind: str, **kw: Any) -> None:
        def run() -> None:
            with self._tx() as conn:
                self._audit(conn, kind, **kw)

        await self._run(run)

    async def list_audit(self, *, limit: int = 200, incident_id: int | None = None) -> list[AuditEntry]:
        def run() -> list[AuditEntry]:
            sql, args = "SELECT * FROM audit", []
            if incident_id is not None:
                sql += " WHERE incident_id = ?"
                args.append(incident_id)
            sql += " ORDER BY id DESC LIMIT ?"
            rows = self.conn.execute(sql, (*args, limit)).fetchall()
            return [
                AuditEntry(
                    id=r["id"],
                    ts=iso(r["ts"]) or "",
                    kind=r["kind"],
                    incident_id=r["incident_id"],
                    actor=r["actor"],
                    target=r["target"],
                    plan_hash=r["plan_hash"],
                    detail=json.loads(r["detail"]),
                )
                for r in reversed(rows)
            ]

        return await self._run(run)

    # -- incidents ------------------------------------------------------------------------------

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
            for (b, it), inc_id in zip(run, ids, strict=True):
                if inc_id is None:
                    results[b].duplicates += 1
                elif it.playbook and it.target:
                    results[b].new.append(inc_id)
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
        return out

    def _resolve_alert(
        self, conn: sqlite3.Connection, it: IngestItem, now: float, result: IngestResult
    ) -> tuple[int | None, bool]:
        """A resolved alert: close its incident (or record one that was never seen firing)."""
        a = it.alert
        ends = a.ends_at.isoformat() if a.ends_at else None
        row = conn.execute(
            "SELECT id, alert_status FROM incidents WHERE fingerprint = ? AND starts_at = ?",
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
                    _strings_json(a.labels),
                    _strings_json(a.annotations),
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
        conn.execute(
            "UPDATE incidents SET alert_status = 'resolved', ends_at = ?, updated_at = ?,"
            " state = CASE WHEN state = 'unmatched' THEN state ELSE 'resolved' END WHERE id = ?",
            (ends, now, row["id"]),
        )
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

        def settle(pairs: list[tuple[asyncio.Future[IngestResult], Any]]) -> None:
            for fut, outcome in pairs:
                if fut.done():  # the caller went away (cancelled); its alerts are stored all the same
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, pairs)

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

    def _incident(self, row: sqlite3.Row, steps: bool) -> Incident:
        inc = Incident(
            id=row["id"],
            fingerprint=row["fingerprint"],
            starts_at=row["starts_at"],
            alertname=row["alertname"],
            alert_status=row["alert_status"],
            status=IncidentState(row["state"]),
            playbook=row["playbook"],
            target=row["target"],
            target_index=row["target_index"],
            labels=json.loads(row["labels"]),
            annotations=json.loads(row["annotations"]),
            note=row["note"],
            next_step=row["next_step"],
            source=row["source"],
            requested_by=row["requested_by"],
            dry_run=bool(row["dry_run"]),
            chat_ref=json.loads(row["chat_ref"]),
            created_at=iso(row["created_at"]),
            updated_at=iso(row["updated_at"]),
            ends_at=row["ends_at"],
        )
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
        return [self._step_run(r) for r in rows]

    @staticmethod
    def _step_run(r: sqlite3.Row) -> StepRun:
        fin = r["finished_at"]
        return StepRun(
            id=r["id"],
            incident_id=r["incident_id"],
            step_index=r["step_index"],
            step_id=r["step_id"],
            step_type=r["step_type"],
            mutating=bool(r["mutating"]),
            status=StepStatus(r["status"]),
            summary=r["summary"],
            details=r["details"],
            data=json.loads(r["data"]),
            error=r["error"],
            plan=json.loads(r["plan"]) if r["plan"] else None,
            plan_hash=r["plan_hash"],
            started_at=iso(r["started_at"]),
            finished_at=iso(fin),
            duration_s=round(fin - r["started_at"], 3) if fin else None,
        )

    async def get_incident(self, incident_id: int, *, steps: bool = True) -> Incident:
        def run() -> Incident:
            row = self.conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            return self._incident(row, steps)

        return await self._run(run)

    async def list_incidents(
        self, *, limit: int = 50, open_only: bool = False, steps: bool = True
    ) -> list[Incident]:
        def run() -> list[Incident]:
            sql = "SELECT * FROM incidents"
            if open_only:
                sql += f" WHERE state IN ({','.join('?' * len(OPEN_STATES))})"
            rows = self.conn.execute(
                sql + " ORDER BY id DESC LIMIT ?", (*(sorted(OPEN_STATES) if open_only else []), limit)
            ).fetchall()
            return [self._incident(r, steps) for r in rows]

        return await self._run(run)

    async def create_incident(
        self, item: IngestItem, *, dry_run: bool = False, requested_by: str | None = None
    ) -> int:
        """A hand-started incident (``run`` command, slash command, health probe).

        ``requested_by`` is the identity key of who asked (``slack:U123``, ``cli:alice``), None for
        the bot's own (health probe): the approval rules keep the requester from approving alone.
        """

        def run() -> int:
            now = time.time()
            a = item.alert
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO incidents (fingerprint, starts_at, alertname, alert_status, state, playbook, target,"
                    " target_index, labels, annotations, note, source, dry_run, created_at, updated_at,"
                    " requested_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        a.fingerprint,
                        a.starts_key,
                        a.alertname,
                        a.status,
                        IncidentState.NEW,
                        item.playbook,
                        item.target,
                        item.target_index,
                        _j(a.labels),
                        _j(a.annotations),
                        item.note,
                        item.source,
                        int(dry_run),
                        now,
                        now,
                        requested_by,
                    ),
                )
                inc_id = int(cur.lastrowid or 0)
                self._audit(
                    conn,
                    "incident.opened",
                    incident_id=inc_id,
                    target=item.target,
                    actor=requested_by or item.source,
                    detail={"playbook": item.playbook, "dry_run": dry_run, "source": item.source},
                )
            return inc_id

        return await self._run(run)

    async def update_incident(self, incident_id: int, **fields: Any) -> None:
        allowed = {"state", "next_step", "note", "chat_ref", "target", "playbook"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")

        def run() -> None:
            vals = {
                k: (_j(v) if k == "chat_ref" else str(v) if k == "state" else v) for k, v in fields.items()
            }
            # Once the alert resolved, the incident stays resolved whatever a runner finishing late says.
            sets = ", ".join(
                "state = CASE WHEN state = 'resolved' THEN state ELSE ? END" if k == "state" else f"{k} = ?"
                for k in vals
            )
            with self._tx() as conn:
                conn.execute(
                    f"UPDATE incidents SET {sets}, updated_at = ? WHERE id = ?",  # noqa: S608 - keys are allow-listed
                    (*vals.values(), time.time(), incident_id),
                )

        await self._run(run)

    async def claim_state(self, incident_id: int, expected: Sequence[str], new: str) -> bool:
        """Compare-and-set of an incident's state; True only for the caller that made the change."""

        def run() -> bool:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE incidents SET state = ?, updated_at = ? WHERE id = ? AND state IN"  # noqa: S608
                    f" ({','.join('?' * len(expected))})",
                    (new, time.time(), incident_id, *expected),
                )
                return cur.rowcount == 1

        return await self._run(run)

    async def incidents_to_resume(self) -> list[int]:
        """Firing incidents whose diagnostics had not finished when the bot last stopped."""

        def run() -> list[int]:
            rows = self.conn.execute(
                "SELECT id FROM incidents WHERE alert_status = 'firing' AND state IN ('new', 'diagnosing') ORDER BY id"
            ).fetchall()
            return [int(r["id"]) for r in rows]

        return await self._run(run)

    async def mark_interrupted(self) -> list[int]:
        """At start-up: whatever was running when the process died is marked interrupted.

        A mutating step is never silently re-run: its approval is closed as interrupted and the incident
        goes to ``failed`` with a note, so a human must ask for it again. Returns affected incident ids.
        """

        def run() -> list[int]:
            now = time.time()
            affected: set[int] = set()
            with self._tx() as conn:
                for r in conn.execute(
                    "SELECT id, incident_id, mutating, owner FROM step_runs WHERE status = 'running'"
                ).fetchall():
                    if owner_alive(r["owner"]):
                        continue  # another live process (a CLI `approve`, a second replica) is running it
                    conn.execute(
                        "UPDATE step_runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ?",
                        (now, "the bot stopped while this step was running", r["id"]),
                    )
                    if r["mutating"] and r["incident_id"] is not None:
                        affected.add(int(r["incident_id"]))
                        conn.execute(
                            "UPDATE incidents SET state = 'failed', updated_at = ?, note = ? WHERE id = ?",
                            (
                                now,
                                "a remediation was interrupted by a restart; it was not re-run",
                                r["incident_id"],
                            ),
                        )
                        self._audit(
                            conn,
                            "step.interrupted",
                            incident_id=r["incident_id"],
                            detail={"step_run_id": r["id"]},
                        )
                for r in conn.execute(
                    "SELECT id, incident_id, owner FROM approvals WHERE state IN ('approved', 'executing')"
                ).fetchall():
                    if not owner_alive(r["owner"]):
                        conn.execute("UPDATE approvals SET state = 'interrupted' WHERE id = ?", (r["id"],))
                        # Decided but never finished: the incident must not stay "remediating" forever.
                        conn.execute(
                            "UPDATE incidents SET state = 'failed', updated_at = ?, note = ? WHERE id = ?"
                            " AND state IN ('awaiting_approval', 'remediating')",
                            (
                                now,
                                "an approved action was interrupted by a restart; it was not re-run",
                                r["incident_id"],
                            ),
                        )
                        affected.add(int(r["incident_id"]))
            return sorted(affected)

        return await self._run(run)

    # -- step runs ------------------------------------------------------------------------------

    async def start_step(
        self, incident_id: int | None, step_index: int, step_id: str, step_type: str, mutating: bool
    ) -> int:
        def run() -> int:
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO step_runs (incident_id, step_index, step_id, step_type, mutating, status, started_at,"
                    " owner) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        incident_id,
                        step_index,
                        step_id,
                        step_type,
                        int(mutating),
                        StepStatus.RUNNING,
                        time.time(),
                        process_owner(),
                    ),
                )
                return int(cur.lastrowid or 0)

        return await self._run(run)

    async def finish_step(
        self,
        run_id: int,
        status: StepStatus,
        *,
        summary: str = "",
        details: str = "",
        data: dict[str, Any] | None = None,
        error: str | None = None,
        plan: dict[str, Any] | None = None,
        plan_hash: str | None = None,
        audit_target: str | None = None,
        actor: str | None = None,
    ) -> StepRun:
        def run() -> StepRun:
            now = time.time()
            with self._tx() as conn:
                conn.execute(
                    "UPDATE step_runs SET status = ?, summary = ?, details = ?, data = ?, error = ?, plan = ?,"
                    " plan_hash = ?, finished_at = ? WHERE id = ?",
                    (
                        status,
                        summary,
                        details,
                        _j(data or {}),
                        error,
                        _j(plan) if plan is not None else None,
                        plan_hash,
                        now,
                        run_id,
                    ),
                )
                row = conn.execute("SELECT * FROM step_runs WHERE id = ?", (run_id,)).fetchone()
                sr = self._step_run(row)
                self._audit(
                    conn,
                    "step.finished",
                    incident_id=sr.incident_id,
                    target=audit_target,
                    actor=actor,
                    plan_hash=plan_hash,
                    detail={
                        "step": sr.step_id,
                        "type": sr.step_type,
                        "status": str(status),
                        "mutating": sr.mutating,
                        "duration_s": sr.duration_s,
                        "summary": summary[:500],
                        "error": error,
                    },
                )
            return sr

        return await self._run(run)

    # -- approvals ------------------------------------------------------------------------------

    @staticmethod
    def _approval(r: sqlite3.Row) -> Approval:
        return Approval(
            id=r["id"],
            incident_id=r["incident_id"],
            step_run_id=r["step_run_id"],
            step_id=r["step_id"],
            step_index=r["step_index"],
            step_type=r["step_type"],
            plan=json.loads(r["plan"]),
            plan_hash=r["plan_hash"],
            state=ApprovalState(r["state"]),
            required=r["required"],
            decisions=[Decision(**d) for d in json.loads(r["decisions"])],
            requested_at=iso(r["requested_at"]),
            expires_at=iso(r["expires_at"]),
            expires_ts=r["expires_at"],
            decided_by=r["decided_by"],
            decided_at=iso(r["decided_at"]),
            chat_ref=json.loads(r["chat_ref"]),
        )

    def _pending_approval(self, incident_id: int) -> Approval | None:
        row = self.conn.execute(
            "SELECT * FROM approvals WHERE incident_id = ? AND state = 'pending' ORDER BY id DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        return self._approval(row) if row else None

    async def latest_approval(self, incident_id: int) -> Approval | None:
        """The incident's most recent approval in any state (to tell a late clicker what happened)."""

        def run() -> Approval | None:
            row = self.conn.execute(
                "SELECT * FROM approvals WHERE incident_id = ? ORDER BY id DESC LIMIT 1", (incident_id,)
            ).fetchone()
            return self._approval(row) if row else None

        return await self._run(run)

    async def pending_approval(self, incident_id: int) -> Approval | None:
        return await self._run(self._pending_approval, incident_id)

    async def get_approval(self, approval_id: int) -> Approval:
        def run() -> Approval:
            row = self.conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            if row is None:
                raise NotFound(f"no approval {approval_id}")
            return self._approval(row)

        return await self._run(run)

    async def create_approval(
        self,
        *,
        incident_id: int,
        step_run_id: int,
        step_id: str,
        step_index: int,
        step_type: str,
        plan: dict[str, Any],
        plan_hash: str,
        required: int,
        ttl: float,
        target: str | None,
    ) -> Approval:
        """Open an approval for a plan; any older pending approval of the incident is superseded."""

        def run() -> Approval:
            now = time.time()
            with self._tx() as conn:
                conn.execute(
                    "UPDATE approvals SET state = 'superseded', decided_at = ? WHERE incident_id = ? AND state = 'pending'",
                    (now, incident_id),
                )
                cur = conn.execute(
                    "INSERT INTO approvals (incident_id, step_run_id, step_id, step_index, step_type, plan, plan_hash,"
                    " state, required, requested_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        incident_id,
                        step_run_id,
                        step_id,
                        step_index,
                        step_type,
                        _j(plan),
                        plan_hash,
                        ApprovalState.PENDING,
                        required,
                        now,
                        now + ttl,
                    ),
                )
                self._audit(
                    conn,
                    "approval.requested",
                    incident_id=incident_id,
                    target=target,
                    plan_hash=plan_hash,
                    detail={
                        "approval_id": cur.lastrowid,
                        "step": step_id,
                        "type": step_type,
                        "required": required,
                        "expires_in_s": ttl,
                    },
                )
                row = conn.execute("SELECT * FROM approvals WHERE id = ?", (cur.lastrowid,)).fetchone()
            return self._approval(row)

        return await self._run(run)

    async def decide(
        self,
        approval_id: int,
        who: Actor,
        approve: bool,
        *,
        policy: ApprovalPolicy | None = None,
        target: str | None = None,
    ) -> DecisionOutcome:
        """Record a decision as a compare-and-set, by the rules of :mod:`bot.approval_rules`.

        Exactly one caller sees ``complete=True`` for an approval (the one whose approval reached the
        quorum, or who denied it); everyone after that gets :class:`AlreadyDecided` naming who decided.
        The same identity cannot count twice towards a two-person rule, and the incident's requester
        cannot approve it (unless ``policy.allow_self_approval``). A refused decision raises
        :class:`NotAllowed` or :class:`ApprovalError` and is audited as ``approval.refused``.
        """
        rules_policy: ApprovalPolicy = policy if policy is not None else ApprovalConfig()

        def run() -> DecisionOutcome:
            now = time.time()
            expired: AlreadyDecided | None = None
            with self._tx() as conn:
                row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no approval {approval_id}")
                ap = self._approval(row)
                if ap.state != ApprovalState.PENDING:
                    raise AlreadyDecided(str(ap.state), ap.decided_by, ap.decided_at)
                if now >= ap.expires_ts:
                    conn.execute(
                        "UPDATE approvals SET state = 'expired', decided_at = ?, decided_by = 'expiry' WHERE id = ?",
                        (now, approval_id),
                    )
                    self._audit(
                        conn,
                        "approval.expired",
                        incident_id=ap.incident_id,
                        target=target,
                        plan_hash=ap.plan_hash,
                        detail={"approval_id": approval_id},
                    )
                    # Raised after the commit below, so the expiry and its audit entry are kept.
                    expired = AlreadyDecided("expired", "expiry", iso(ap.expires_ts))
            if expired is not None:
                raise expired
            try:
                with self._tx() as conn:
                    row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
                    ap = self._approval(row)
                    inc = conn.execute(
                        "SELECT requested_by FROM incidents WHERE id = ?", (ap.incident_id,)
                    ).fetchone()
                    result = approval_rules.decide(
                        ap,
                        who,
                        approve,
                        rules_policy,
                        requested_by=inc["requested_by"] if inc else None,
                        at=iso(now) or "",
                    )
                    conn.execute(
                        "UPDATE approvals SET decisions = ?, state = ?, decided_by = ?, decided_at = ?, owner = ?"
                        " WHERE id = ?",
                        (
                            _j([d.model_dump() for d in result.decisions]),
                            result.state,
                            result.decided_by,
                            now if result.complete else None,
                            process_owner(),
                            approval_id,
                        ),
                    )
                    self._audit(
                        conn,
                        "approval.decided",
                        incident_id=ap.incident_id,
                        actor=who.label,
                        target=target,
                        plan_hash=ap.plan_hash,
                        detail={
                            "approval_id": approval_id,
                            "approve": approve,
                            "state": str(result.state),
                            "approvers": result.approver_ids,
                            "required": ap.required,
                        },
                    )
                    row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
            except ApprovalError as exc:
                if not isinstance(exc, AlreadyDecided):
                    with self._tx() as conn:
                        self._audit(
                            conn,
                            "approval.refused",
                            incident_id=ap.incident_id,
                            actor=who.label,
                            target=target,
                            plan_hash=ap.plan_hash,
                            detail={"approval_id": approval_id, "approve": approve, "reason": str(exc)},
                        )
                raise
            return DecisionOutcome(self._approval(row), result.complete, result.needed)

        return await self._run(run)

    async def claim_execution(self, approval_id: int) -> bool:
        """approved -> executing, only while the incident's alert still fires: exactly one caller wins.

        Records this process as the owner, so a restart of another process does not mistake the
        running action for an interrupted one.
        """

        def run() -> bool:
            with self._tx() as conn:
                cur = conn.execute(
                    "UPDATE approvals SET state = 'executing', owner = ? WHERE id = ? AND state = 'approved'"
                    " AND (SELECT alert_status FROM incidents WHERE incidents.id = approvals.incident_id) = 'firing'",
                    (process_owner(), approval_id),
                )
                return cur.rowcount == 1

        return await self._run(run)

    async def set_approval_state(
        self,
        approval_id: int,
        expected: Sequence[str],
        new: ApprovalState,
        *,
        audit_kind: str | None = None,
        actor: str | None = None,
        target: str | None = None,
    ) -> bool:
        """Compare-and-set of an approval's state (e.g. approved -> executed)."""

        def run() -> bool:
            now = time.time()
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE approvals SET state = ?, decided_at = COALESCE(decided_at, ?),"  # noqa: S608
                    f" decided_by = COALESCE(decided_by, ?) WHERE id = ? AND state IN ({','.join('?' * len(expected))})",
                    (new, now, actor, approval_id, *expected),
                )
                if cur.rowcount == 1 and audit_kind:
                    row = conn.execute(
                        "SELECT incident_id, plan_hash FROM approvals WHERE id = ?", (approval_id,)
                    ).fetchone()
                    self._audit(
                        conn,
                        audit_kind,
                        incident_id=row["incident_id"],
                        actor=actor,
                        target=target,
                        plan_hash=row["plan_hash"],
                        detail={"approval_id": approval_id},
                    )
                return cur.rowcount == 1

        return await self._run(run)

    async def open_approvals(self, *, incident_id: int | None = None) -> list[Approval]:
        def run() -> list[Approval]:
            sql, args = "SELECT * FROM approvals WHERE state = 'pending'", []
            if incident_id is not None:
                sql += " AND incident_id = ?"
                args.append(incident_id)
            return [self._approval(r) for r in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

        return await self._run(run)

    async def set_approval_chat_ref(self, approval_id: int, ref: dict[str, Any]) -> None:
        def run() -> None:
            with self._tx() as conn:
                conn.execute("UPDATE approvals SET chat_ref = ? WHERE id = ?", (_j(ref), approval_id))

        await self._run(run)

    # -- guardrails -----------------------------------------------------------------------------

    async def action_history(self, target: str, since: float) -> tuple[int, int]:
        """(actions executed on ``target`` since ``since``, consecutive failures at the end of its history)."""

        def run() -> tuple[int, int]:
            count = self.conn.execute(
                "SELECT COUNT(*) FROM audit WHERE target = ? AND kind = 'action.executed' AND ts >= ?",
                (target, since),
            ).fetchone()[0]
            failures = 0
            for r in self.conn.execute(
                "SELECT detail FROM audit WHERE target = ? AND kind IN ('action.executed', 'breaker.reset')"
                " ORDER BY id DESC LIMIT 50",
                (target,),
            ):
                d = json.loads(r["detail"])
                if d.get("ok") is False:
                    failures += 1
                else:
                    break
            return int(count), failures

        return await self._run(run)

    async def get_setting(self, key: str) -> str | None:
        def run() -> str | None:
            row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row["value"])

        return await self._run(run)

    async def set_setting(self, key: str, value: str | None, *, actor: str | None = None) -> None:
        def run() -> None:
            with self._tx() as conn:
                if value is None:
                    conn.execute("DELETE FROM settings WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))
                self._audit(conn, "setting.changed", actor=actor, detail={"key": key, "value": value})

        await self._run(run)
