"""The seam between the engine and a state backend.

The engine, the chat backends and the CLI talk to this protocol, never to a concrete store, so a
second backend (PostgreSQL, for several replicas) implements these methods and nothing else changes.
Every method that changes a state is one lifecycle event (:mod:`bot.lifecycle`) applied in ONE
transaction with its audit record; reads never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bot.incidents import Approval, ApprovalState, AuditEntry, Decision, Incident, IncidentState, StepRun
from bot.store.records import Fence, IngestItem, IngestResult, StepResult


class Store(Protocol):
    ingest_transactions: int

    async def open(self) -> Any: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # reads
    async def get_incident(self, incident_id: int, *, steps: bool = True) -> Incident: ...
    async def list_incidents(
        self, *, limit: int = 50, open_only: bool = False, steps: bool = True
    ) -> list[Incident]: ...
    async def firing_incident(
        self, target: str, alertname: str, *, source: str | None = None
    ) -> Incident | None: ...
    async def incidents_to_resume(self) -> list[int]: ...
    async def get_approval(self, approval_id: int) -> Approval: ...
    async def pending_approval(self, incident_id: int) -> Approval | None: ...
    async def latest_approval(self, incident_id: int) -> Approval | None: ...
    async def open_approvals(self, *, incident_id: int | None = None) -> list[Approval]: ...
    async def get_step_run(self, run_id: int) -> StepRun: ...
    async def charts(self, run_ids: Sequence[int]) -> dict[int, bytes]: ...
    async def list_audit(self, *, limit: int = 200, incident_id: int | None = None) -> list[AuditEntry]: ...
    async def action_history(self, target: str, since: float) -> tuple[int, int]: ...
    async def get_setting(self, key: str) -> str | None: ...

    # events (each one transaction with its audit record)
    async def ingest(self, items: Sequence[IngestItem]) -> IngestResult: ...
    async def open_incident(
        self,
        item: IngestItem,
        *,
        dry_run: bool = False,
        requested_by: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> int: ...
    async def begin(self, incident_id: int, *, fence: Fence | None = None) -> bool: ...
    async def fail(
        self, incident_id: int, note: str, *, target: str | None = None, fence: Fence | None = None
    ) -> None: ...
    async def start_step(
        self,
        incident_id: int | None,
        step_index: int,
        step_id: str,
        step_type: str,
        mutating: bool,
        *,
        fence: Fence | None = None,
    ) -> int: ...
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
    ) -> StepRun: ...
    async def checkpoint(self, run_id: int, data: dict[str, Any]) -> None: ...
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
    ) -> StepRun | None: ...
    async def finish(
        self, incident_id: int, state: IncidentState, note: str, *, fence: Fence | None = None
    ) -> None: ...
    async def request_approval(
        self,
        incident_id: int,
        run_id: int,
        *,
        step_id: str,
        step_index: int,
        step_type: str,
        plan: dict[str, Any],
        plan_hash: str,
        summary: str,
        required: int,
        ttl: float,
        target: str | None,
        requested_by: str | None = None,
        fence: Fence | None = None,
    ) -> Approval: ...
    async def decide(
        self,
        approval_id: int,
        *,
        who: str,
        approve: bool,
        seen: int,
        decisions: list[Decision],
        state: ApprovalState,
        decided_by: str | None,
        approvers: list[str],
        target: str | None,
        note: str | None = None,
    ) -> Approval: ...
    async def expire(self, approval_id: int, *, actor: str = "expiry") -> Approval | None: ...
    async def cancel(
        self,
        approval_id: int,
        reason: str,
        *,
        incident_state: IncidentState | None,
        state: ApprovalState = ApprovalState.CANCELLED,
        next_step: int | None = None,
        actor: str | None = None,
        target: str | None = None,
    ) -> Approval | None: ...
    async def claim(
        self, approval_id: int, *, summary: str, actor: str, target: str | None, fence: Fence | None = None
    ) -> int | None: ...
    async def executed(
        self,
        approval_id: int,
        run_id: int,
        result: StepResult,
        *,
        ok: bool,
        incident_state: IncidentState,
        note: str | None,
        next_step: int,
        actor: str,
        target: str | None,
        detail: dict[str, Any],
        fence: Fence | None = None,
    ) -> StepRun: ...
    async def interrupt_orphans(self) -> list[int]: ...

    # leases: which process runs an incident (fencing tokens), which one leads the scheduler
    async def acquire(self, incident_id: int, owner: str, ttl: float) -> Fence | None: ...
    async def renew(self, incident_id: int, fence: Fence, ttl: float) -> bool: ...
    async def release(self, incident_id: int, fence: Fence) -> None: ...
    async def lapsed(self, limit: int = 100, *, idle: float = 0.0) -> list[int]: ...
    async def take_over(
        self, incident_id: int, owner: str, ttl: float, *, idle: float = 0.0
    ) -> Fence | None: ...
    async def lead(self, name: str, owner: str, ttl: float) -> Fence | None: ...

    # records that carry no state
    async def audit(self, kind: str, **kw: Any) -> None: ...
    async def set_setting(self, key: str, value: str | None, *, actor: str | None = None) -> None: ...
    async def setting_default(self, key: str, value: str, *, actor: str | None = None) -> str: ...
    async def set_approval_chat_ref(self, approval_id: int, ref: dict[str, Any]) -> None: ...
    async def set_incident_chat_ref(self, incident_id: int, ref: dict[str, Any]) -> None: ...
    async def save_chart(self, run_id: int, png: bytes) -> None:
        """Keep the PNG a chart step drew with its step run (not a state: no audit record). The
        store, not the disk, so that any replica's incident page shows it; the file stays for the
        console and the Slack upload of the replica that drew it."""
        ...
