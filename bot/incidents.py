"""Incidents, step runs, approvals and audit entries: the engine's records and their states.

An incident is one alert occurrence, identified by (fingerprint, startsAt): Alertmanager re-sends the
same notification (at-least-once delivery, ``repeat_interval``), and those repeats must be no-ops.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class IncidentState(StrEnum):
    """Where the bot is with an incident (the alert's own firing/resolved is ``alert_status``)."""

    NEW = "new"
    DIAGNOSING = "diagnosing"
    AWAITING_APPROVAL = "awaiting_approval"
    REMEDIATING = "remediating"
    DIAGNOSED = "diagnosed"
    VERIFIED = "verified"
    FAILED = "failed"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    UNMATCHED = "unmatched"
    MERGED = "merged"
    """Another alert of the same playbook on the same target joined an open incident (alert storms)."""


OPEN_STATES = frozenset(
    {IncidentState.NEW, IncidentState.DIAGNOSING, IncidentState.AWAITING_APPROVAL, IncidentState.REMEDIATING}
)


class StepStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    PLANNED = "planned"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    ESCALATED = "escalated"


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    INTERRUPTED = "interrupted"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StepRun(BaseModel):
    id: int
    incident_id: int | None
    step_index: int
    step_id: str
    step_type: str
    mutating: bool
    status: StepStatus
    summary: str = ""
    details: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    plan: dict[str, Any] | None = None
    plan_hash: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None


class Decision(BaseModel):
    """One person's approve or deny. ``who`` is how they are shown and audited; ``identity`` is
    who they are (``cli:alice``, ``slack:U123``), what the two-person rule counts. Records from before
    identities have no ``identity``; their ``who`` stands in for it."""

    who: str
    at: str
    approve: bool
    identity: str | None = None

    @property
    def key(self) -> str:
        return self.identity or self.who


class Approval(BaseModel):
    id: int
    incident_id: int
    step_run_id: int
    step_id: str
    step_index: int
    step_type: str
    plan: dict[str, Any]
    plan_hash: str
    state: ApprovalState
    required: int
    decisions: list[Decision] = Field(default_factory=list)
    requested_at: str | None = None
    expires_at: str | None = None
    expires_ts: float = 0.0
    decided_by: str | None = None
    decided_at: str | None = None
    chat_ref: dict[str, Any] = Field(default_factory=dict)
    requested_by: str | None = None

    @property
    def approvers(self) -> list[str]:
        """Who approved, as shown (``cli:alice (as "Alice")``)."""
        return [d.who for d in self.decisions if d.approve]

    @property
    def approver_ids(self) -> list[str]:
        """The distinct identities that approved, in order: what counts towards ``required``."""
        return list(dict.fromkeys(d.key for d in self.decisions if d.approve))


class Incident(BaseModel):
    id: int
    fingerprint: str
    starts_at: str
    alertname: str
    alert_status: str
    status: IncidentState
    playbook: str | None = None
    target: str | None = None
    target_index: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    note: str = ""
    next_step: int = 0
    source: str = "alertmanager"
    requested_by: str | None = None
    """The identity (``slack:U123``, ``cli:alice``) that asked for a hand-started incident; None for
    alerts. The requester may not approve its actions (``approvals.allow_self_approval``)."""
    dry_run: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    ends_at: str | None = None
    chat_ref: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters of a hand-started playbook (e.g. the pattern of ``/redis evict``)."""
    alert_count: int = 1
    """Alerts this incident stands for (alerts of the same playbook and target join an open one)."""
    merged_into: int | None = None
    links: dict[str, str] = Field(default_factory=dict)
    """Where people look at the alert, as it came: ``generator`` (the alert's Prometheus graph,
    ``generatorURL``) and ``alertmanager`` (the notification's ``externalURL``)."""
    steps: list[StepRun] = Field(default_factory=list)
    pending_step: dict[str, Any] | None = None

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or self.annotations.get("description") or self.alertname


class AuditEntry(BaseModel):
    id: int
    ts: str
    kind: str
    incident_id: int | None = None
    actor: str | None = None
    target: str | None = None
    plan_hash: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


def epoch(value: str | None) -> float | None:
    """Unix seconds of an ISO timestamp as stored (``...Z``), or None when missing or unreadable."""
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


EXECUTED = frozenset({StepStatus.OK, StepStatus.FAILED, StepStatus.ERROR, StepStatus.TIMEOUT})


def moments(inc: Incident) -> list[dict[str, Any]]:
    """When the alert fired and when each of the incident's actions ran, for charts to mark:
    ``{"at": unix seconds, "label": ..., "kind": "alert" | "action"}``."""
    out: list[dict[str, Any]] = []
    fired = epoch(inc.starts_at) if inc.source == "alertmanager" else epoch(inc.created_at)
    if fired is not None:
        label = f"{inc.alertname} fired" if inc.source == "alertmanager" else "incident opened"
        out.append({"at": fired, "label": label, "kind": "alert"})
    for run in inc.steps:
        at = epoch(run.started_at)
        if run.mutating and run.status in EXECUTED and at is not None and not inc.dry_run:
            out.append(
                {"at": at, "label": run.step_id, "kind": "action", "end": epoch(run.finished_at) or at}
            )
    return out
