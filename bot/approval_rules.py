"""Who may decide an approval and what a decision does: pure functions, no I/O, no clock.

The engine (today :meth:`bot.store.Store.decide`) reads the approval and the incident's requester,
calls :func:`decide`, and writes the result in the same transaction. Keeping the rules here, apart
from SQL, makes them testable exhaustively and the same for every store backend.

The rules:

- an approval that is not pending cannot be decided (:class:`AlreadyDecided` names who decided);
- command-line identities: when ``approvals.cli_approvers`` lists OS accounts, only those may decide
  from the CLI; when it is empty, any local account may, but only on a one-approver step (a
  two-person step cannot tell two people apart on a machine that has no list of them);
- Slack identities were checked against the Slack allow-list and group by the chat layer;
- whoever asked for the action (``requested_by``) may not approve it, unless
  ``approvals.allow_self_approval``; they may still deny it (stopping is always safe);
- one identity (kind + id, never the display name) counts once towards the quorum;
- the approval is complete when the distinct approvers reach ``required``; a deny completes it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.errors import AlreadyDecided, ApprovalError, NotAllowed
from bot.identity import Actor
from bot.incidents import Approval, ApprovalState, Decision


class ApprovalPolicy(Protocol):
    """The part of the config the rules read (``bot.config.ApprovalConfig`` satisfies it)."""

    @property
    def cli_approvers(self) -> Sequence[str]: ...

    @property
    def allow_self_approval(self) -> bool: ...


@dataclass(frozen=True)
class DecisionResult:
    """What recording a decision leads to: the decisions to store, the new state, who is still needed."""

    decisions: tuple[Decision, ...]
    state: ApprovalState
    """``pending`` (more approvers needed), ``approved`` or ``denied``."""
    needed: int
    """How many more distinct approvers the step needs (0 once approved)."""

    @property
    def complete(self) -> bool:
        return self.state != ApprovalState.PENDING

    @property
    def approver_ids(self) -> list[str]:
        return list(dict.fromkeys(d.key for d in self.decisions if d.approve))

    @property
    def decided_by(self) -> str | None:
        """What the approval's ``decided_by`` shows: the approvers so far, or the person who denied."""
        if self.state == ApprovalState.DENIED:
            return self.decisions[-1].who
        return ", ".join(d.who for d in self.decisions if d.approve) or None


def check_allowed(
    actor: Actor,
    approve: bool,
    *,
    required: int,
    requested_by: str | None,
    policy: ApprovalPolicy,
) -> None:
    """Raise :class:`NotAllowed` with what to do when ``actor`` may not take this decision."""
    verb = "approve" if approve else "deny"
    if actor.kind == "cli":
        listed = list(policy.cli_approvers)
        if listed and actor.id not in listed:
            shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
            raise NotAllowed(
                f"the OS account {actor.id!r} is not in approvals.cli_approvers ({shown}); ask one of"
                f" them to {verb}, or add the account to the config"
            )
        if not listed and approve and required >= 2:
            raise NotAllowed(
                f"this step needs {required} different approvers, and approvals.cli_approvers is empty,"
                " so the command line cannot tell people apart; list the OS accounts that may approve"
                " in approvals.cli_approvers, or approve in Slack"
            )
    if approve and requested_by is not None and requested_by == actor.key and not policy.allow_self_approval:
        raise NotAllowed(
            f"{actor.key} asked for this action, so someone else must approve it; ask another"
            " approver (you may still deny it), or set approvals.allow_self_approval: true in the config"
        )


def decide(
    approval: Approval,
    actor: Actor,
    approve: bool,
    policy: ApprovalPolicy,
    *,
    requested_by: str | None,
    at: str,
) -> DecisionResult:
    """The effect of ``actor`` approving (or denying) ``approval`` at time ``at`` (ISO text).

    Returns the decisions to store and the new state; raises :class:`AlreadyDecided` when the
    approval is no longer pending, :class:`NotAllowed` when the actor may not decide, and
    :class:`ApprovalError` when the same identity approves twice. ``approval`` is not modified.
    """
    if approval.state != ApprovalState.PENDING:
        raise AlreadyDecided(str(approval.state), approval.decided_by, approval.decided_at)
    required = max(1, approval.required)
    check_allowed(actor, approve, required=required, requested_by=requested_by, policy=policy)
    if approve and actor.key in approval.approver_ids:
        also = " (a display name does not make another person)" if actor.display else ""
        raise ApprovalError(
            f"{actor.key} already approved{also}; this step needs {required} different approvers:"
            " ask someone else to approve"
        )
    decisions = (
        *approval.decisions,
        Decision(who=actor.label, at=at, approve=approve, identity=actor.key),
    )
    have = len(dict.fromkeys(d.key for d in decisions if d.approve))
    needed = max(0, required - have)
    if not approve:
        state = ApprovalState.DENIED
    elif needed == 0:
        state = ApprovalState.APPROVED
    else:
        state = ApprovalState.PENDING
    return DecisionResult(decisions, state, needed)
