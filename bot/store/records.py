"""What goes into and comes out of a store: ingest items and results, and row -> model mapping."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic_core

from bot.alerts import Alert
from bot.incidents import Approval, ApprovalState, Decision, Incident, IncidentState, StepRun, StepStatus, iso


@dataclass(frozen=True)
class IngestItem:
    """An alert with what the matcher decided for it, ready to persist."""

    alert: Alert
    playbook: str | None
    target: str | None
    target_index: int | None
    note: str = ""
    source: str = "alertmanager"
    refused: bool = False
    """The alert's labels pointed a templated target outside its allowed addresses."""
    links: dict[str, str] = field(default_factory=dict)
    """Where people can look at the alert: ``generator`` (its Prometheus graph), ``alertmanager``."""


@dataclass
class IngestResult:
    new: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    duplicates: int = 0
    merged: dict[int, int] = field(default_factory=dict)
    """Open incident id -> how many new alerts joined it (alert storms: one diagnosis, one card)."""
    cancelled: list[int] = field(default_factory=list)
    """Approvals cancelled because their incident's alert resolved."""
    targets: dict[int, str] = field(default_factory=dict)
    """New incident id -> its target (the run queue is fair across targets)."""
    refused: list[int] = field(default_factory=list)
    """Incidents stored without a target because a label pointed outside the allowed addresses."""

    @property
    def accepted(self) -> int:
        return len(self.new) + len(self.resolved) + self.duplicates + sum(self.merged.values())


@dataclass(frozen=True)
class DecisionOutcome:
    """What a decision did: ``complete`` is True for exactly one caller, the one who may execute."""

    approval: Approval
    complete: bool
    needed: int


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def settle_ingests(
    pairs: Iterable[tuple[asyncio.Future[IngestResult], IngestResult | BaseException]],
) -> None:
    """Hand each caller of a group commit its own outcome (both backends). A caller that went away
    (cancelled) is skipped: its alerts are stored all the same."""
    for fut, outcome in pairs:
        if fut.done():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


def dumps(value: Any) -> str:
    """Compact JSON (one encoder for all calls: ``json.dumps`` with options builds one per call)."""
    return _ENCODER.encode(value)


def strings_json(value: dict[str, str]) -> str:
    """Compact JSON of a string map (labels, annotations), encoded in Rust by pydantic-core."""
    return pydantic_core.to_json(value).decode()


def process_owner() -> str:
    """``host:pid`` of this process, recorded on work it starts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the process that started some work still runs: True or False for a process of
    this host, None for another host's (unknowable from here: its lease answers that)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return None
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Row(Protocol):
    """A database row by column name: ``sqlite3.Row`` and ``asyncpg.Record`` both are one."""

    def __getitem__(self, key: str, /) -> Any: ...
    def keys(self) -> Iterable[str]: ...


def incident_of(row: Row) -> Incident:
    keys = set(row.keys())
    return Incident(
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
        dry_run=bool(row["dry_run"]),
        chat_ref=json.loads(row["chat_ref"]),
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
        ends_at=row["ends_at"],
        requested_by=row["requested_by"] if "requested_by" in keys else None,
        alert_count=row["alert_count"] if "alert_count" in keys else 1,
        params=json.loads(row["params"]) if "params" in keys else {},
        merged_into=row["merged_into"] if "merged_into" in keys else None,
        links=json.loads(row["links"]) if "links" in keys else {},
    )


def step_run_of(r: Row) -> StepRun:
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


def approval_of(r: Row) -> Approval:
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
        requested_by=r["requested_by"],
    )


@dataclass(frozen=True)
class Fence:
    """Who holds a lease and its fencing token: writes under a lease carry it, and are refused
    once another process took the lease over."""

    owner: str
    token: int


@dataclass(frozen=True)
class StepResult:
    """How a step run ended: what the store writes when the run finishes."""

    status: StepStatus
    summary: str = ""
    details: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    plan: dict[str, Any] | None = None
    plan_hash: str | None = None
