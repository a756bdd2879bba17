"""The lifecycle of incidents, step runs and approvals, as data.

Every change of state in the bot is one of the events below, applied by the store in ONE
transaction that moves the incident, the step run and the approval together and appends the audit
record with them. The tables here are the only place that says which moves are allowed; the store
calls :func:`move` for every record it changes, so an illegal move raises
:class:`~bot.errors.IllegalTransition` instead of writing a state the machine does not know.

Incident::

    new -> diagnosing -> (awaiting_approval <-> remediating)* -> diagnosed | verified | failed | escalated
    any of those -> resolved (the alert resolved)

Approval::

    pending -> approved -> executing -> executed
    pending -> denied | expired | cancelled | superseded;  approved -> cancelled | superseded | interrupted;
    executing -> interrupted

Invariant the events keep: an incident is ``awaiting_approval`` iff exactly one of its approvals is
``pending``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from bot.errors import IllegalTransition
from bot.incidents import ApprovalState, IncidentState, StepStatus


class Event(StrEnum):
    OPEN = "open"
    BEGIN = "begin"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    REQUEST_APPROVAL = "request_approval"
    DECIDE = "decide"
    EXPIRE = "expire"
    CANCEL = "cancel"
    CLAIM = "claim"
    EXECUTED = "executed"
    INTERRUPT = "interrupt"
    RESOLVE = "resolve"
    ESCALATE = "escalate"
    FINISH = "finish"


class AlertStatus(StrEnum):
    """The alert's own state, as Alertmanager (or the health probe) reports it."""

    FIRING = "firing"
    RESOLVED = "resolved"


I = IncidentState  # noqa: E741 - short names keep the tables readable
A = ApprovalState
S = StepStatus

OPEN = frozenset({I.NEW, I.DIAGNOSING, I.AWAITING_APPROVAL, I.REMEDIATING})
ENDED = frozenset({I.DIAGNOSED, I.VERIFIED, I.FAILED, I.ESCALATED})
FINISHED_STEP = frozenset(
    {S.OK, S.WARNING, S.FAILED, S.ERROR, S.TIMEOUT, S.SKIPPED, S.PLANNED, S.ESCALATED, S.CANCELLED}
)

Table = Mapping[Event, Mapping[str | None, frozenset[str]]]


def _same(states: frozenset[IncidentState]) -> dict[str | None, frozenset[str]]:
    return {s: frozenset({s}) for s in states}


INCIDENT: Table = {
    Event.OPEN: {None: frozenset({I.NEW, I.UNMATCHED, I.RESOLVED, I.MERGED})},
    Event.BEGIN: {I.NEW: frozenset({I.DIAGNOSING})},
    # A step finishing may stop the playbook (on_failure: stop) or leave the incident where it is.
    Event.STEP_FINISHED: {
        I.DIAGNOSING: frozenset({I.DIAGNOSING, I.FAILED}),
        I.REMEDIATING: frozenset({I.REMEDIATING, I.FAILED}),
    },
    Event.REQUEST_APPROVAL: {
        I.DIAGNOSING: frozenset({I.AWAITING_APPROVAL}),
        I.REMEDIATING: frozenset({I.AWAITING_APPROVAL}),
    },
    # Approve with quorum -> remediating; a partial approval keeps waiting; a deny ends the playbook.
    Event.DECIDE: {I.AWAITING_APPROVAL: frozenset({I.AWAITING_APPROVAL, I.REMEDIATING, I.DIAGNOSED})},
    Event.EXPIRE: {I.AWAITING_APPROVAL: frozenset({I.DIAGNOSED})},
    # Cancelling a pending approval (alert resolved, refused) or an approved one that did not run
    # (re-check failed, plan drifted: then the incident stays remediating and asks again).
    Event.CANCEL: {
        I.AWAITING_APPROVAL: frozenset({I.DIAGNOSED, I.RESOLVED, I.ESCALATED}),
        I.REMEDIATING: frozenset({I.REMEDIATING, I.DIAGNOSED, I.RESOLVED, I.ESCALATED}),
        **_same(ENDED | {I.RESOLVED}),
    },
    Event.CLAIM: {I.REMEDIATING: frozenset({I.REMEDIATING})},
    Event.EXECUTED: {I.REMEDIATING: frozenset({I.REMEDIATING, I.FAILED}), **_same(frozenset({I.RESOLVED}))},
    Event.INTERRUPT: {s: frozenset({I.FAILED}) for s in OPEN},
    Event.RESOLVE: {
        **{s: frozenset({I.RESOLVED}) for s in OPEN | ENDED | {I.RESOLVED}},
        I.UNMATCHED: frozenset({I.UNMATCHED}),
        I.MERGED: frozenset({I.MERGED}),
    },
    Event.ESCALATE: {
        I.DIAGNOSING: frozenset({I.ESCALATED}),
        I.REMEDIATING: frozenset({I.ESCALATED}),
        I.AWAITING_APPROVAL: frozenset({I.ESCALATED}),
    },
    Event.FINISH: {
        I.NEW: frozenset({I.FAILED}),
        I.DIAGNOSING: frozenset({I.DIAGNOSED, I.VERIFIED, I.FAILED}),
        I.REMEDIATING: frozenset({I.DIAGNOSED, I.VERIFIED, I.FAILED}),
        **_same(frozenset({I.RESOLVED})),
    },
}

APPROVAL: Table = {
    Event.REQUEST_APPROVAL: {None: frozenset({A.PENDING}), A.PENDING: frozenset({A.SUPERSEDED})},
    Event.DECIDE: {A.PENDING: frozenset({A.PENDING, A.APPROVED, A.DENIED})},
    Event.EXPIRE: {A.PENDING: frozenset({A.EXPIRED})},
    Event.CANCEL: {
        A.PENDING: frozenset({A.CANCELLED, A.SUPERSEDED}),
        A.APPROVED: frozenset({A.CANCELLED, A.SUPERSEDED}),
    },
    Event.CLAIM: {A.APPROVED: frozenset({A.EXECUTING})},
    Event.EXECUTED: {A.EXECUTING: frozenset({A.EXECUTED})},
    Event.INTERRUPT: {A.APPROVED: frozenset({A.INTERRUPTED}), A.EXECUTING: frozenset({A.INTERRUPTED})},
    Event.RESOLVE: {A.PENDING: frozenset({A.CANCELLED})},
}

STEP: Table = {
    Event.STEP_STARTED: {None: frozenset({S.RUNNING})},
    Event.STEP_FINISHED: {S.RUNNING: FINISHED_STEP},
    Event.ESCALATE: {S.RUNNING: frozenset({S.ESCALATED})},
    Event.REQUEST_APPROVAL: {S.RUNNING: frozenset({S.AWAITING_APPROVAL})},
    Event.DECIDE: {S.AWAITING_APPROVAL: frozenset({S.AWAITING_APPROVAL, S.DENIED})},
    Event.EXPIRE: {S.AWAITING_APPROVAL: frozenset({S.EXPIRED})},
    Event.CANCEL: {S.AWAITING_APPROVAL: frozenset({S.CANCELLED}), S.APPROVED: frozenset({S.APPROVED})},
    Event.CLAIM: {S.AWAITING_APPROVAL: frozenset({S.APPROVED})},
    # The action's own run: started by the claim, finished when it returns (or is stopped).
    Event.EXECUTED: {S.RUNNING: FINISHED_STEP},
    Event.INTERRUPT: {S.RUNNING: frozenset({S.INTERRUPTED}), S.AWAITING_APPROVAL: frozenset({S.INTERRUPTED})},
    Event.RESOLVE: {S.AWAITING_APPROVAL: frozenset({S.CANCELLED})},
}


def _resolved_stays(table: Table, events: tuple[Event, ...]) -> Table:
    """Once the alert resolved the incident stays resolved, whatever a late step or decision says."""
    out = {e: dict(m) for e, m in table.items()}
    for e in events:
        out.setdefault(e, {})[I.RESOLVED] = frozenset({I.RESOLVED})
    return out


INCIDENT = _resolved_stays(
    INCIDENT,
    (Event.STEP_FINISHED, Event.DECIDE, Event.EXPIRE, Event.ESCALATE, Event.INTERRUPT, Event.CLAIM),
)

TABLES: Mapping[str, Table] = {"incident": INCIDENT, "approval": APPROVAL, "step": STEP}


def allowed(kind: str, event: Event, current: str | None) -> frozenset[str]:
    """The states a ``kind`` record in ``current`` may move to on ``event`` (empty: not allowed)."""
    return TABLES[kind].get(event, {}).get(current, frozenset())


def move(kind: str, event: Event, current: str | None, new: str, record: object = "") -> str:
    """Check one move and return ``new``; raise :class:`IllegalTransition` naming the record if the
    machine does not allow it. Stores call this for every state they write."""
    if new not in allowed(kind, event, current):
        what = f"{kind} {record}".strip()
        raise IllegalTransition(f"{what}: {event.value} cannot move it from {current or 'nothing'} to {new}")
    return new


def is_open(state: str) -> bool:
    return state in OPEN
