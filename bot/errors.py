"""One error hierarchy for the whole bot.

Every error the bot raises on purpose derives from :class:`BotError`, so callers at the edges
(CLI, webhook, Slack) can turn any of them into a clear message instead of a traceback.
``retryable`` tells whether trying again later can help (a network hiccup) or not (a bad config).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class BotError(Exception):
    """Root of every error the bot raises on purpose."""

    retryable: bool = False


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (file and field) and what is wrong."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


class ConfigError(BotError):
    """The config or a playbook is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} found:"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class StoreError(BotError):
    """The state store could not be read or written (disk full, locked, corrupt)."""

    retryable = True


@dataclass(frozen=True)
class RejectedAlert:
    """One alert of a webhook notification that can never be valid, and why; its siblings are stored.

    ``field`` is the alert's first invalid field (``startsAt``, ``labels``, ``(alert)`` when it is not
    an object at all): a short, bounded name for metrics. ``fingerprint`` is the sender's, if any.
    """

    index: int
    fingerprint: str | None
    field: str
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "fingerprint": self.fingerprint, "reason": self.reason}


class InvalidNotification(BotError):
    """A webhook notification that can never be valid: not JSON, a wrong envelope, or no valid alert.

    ``problems`` lists every problem with its field; ``rejected`` the invalid alerts one by one.
    """

    def __init__(
        self, reason: str, problems: Sequence[str] = (), rejected: Sequence[RejectedAlert] = ()
    ) -> None:
        self.reason = reason
        self.problems = list(problems)
        self.rejected = list(rejected)
        super().__init__(reason)


class LeaseLost(StoreError):
    """This process no longer holds the lease of the incident it was writing for: another process
    took the work over, so this one must stop (fencing)."""

    retryable = False


class TargetError(BotError):
    """No Redis target matches an alert, or a target URL cannot be built from its labels."""


class TargetRefused(TargetError):
    """An alert's labels resolve a templated target to an address outside its ``allowed_addresses``.

    Nothing connects there: credentials are only ever sent to an allowed address.
    """


class StepError(BotError):
    """A step failed; the message is meant for a human reading the incident thread."""


class StepTimeout(StepError):
    """A step ran past its timeout and was cancelled."""

    retryable = True


class RedisUnavailable(StepError):
    """Redis could not be reached or did not answer in time."""

    retryable = True


class CommandNotAllowed(StepError):
    """Redis refused a command (ACL, renamed command, or a managed service blocking CONFIG/DEBUG)."""


class PlanRefused(StepError):
    """A mutating action refused to build a plan because it would be unsafe (e.g. protected keys)."""


class OverCap(PlanRefused):
    """The plan is larger than a safety cap (keys or bytes per run): no approval is offered, a human
    must narrow the action or raise the cap. The message carries the numbers."""


class ActionStopped(StepError):
    """A running action stopped part-way (kill switch, breaker): ``done`` says how far it got."""

    def __init__(self, reason: str, done: dict[str, object] | None = None) -> None:
        self.reason = reason
        self.done = dict(done or {})
        super().__init__(f"stopped: {reason}")


class ApprovalError(BotError):
    """A decision on an approval could not be taken."""


class AlreadyDecided(ApprovalError):
    """Someone else decided first; tells who and what, so the second clicker knows."""

    def __init__(self, state: str, decided_by: str | None, decided_at: str | None) -> None:
        self.state = state
        self.decided_by = decided_by
        self.decided_at = decided_at
        who = decided_by or "the bot"
        when = f" at {decided_at}" if decided_at else ""
        super().__init__(f"already {state} by {who}{when}")


class DecisionConflict(ApprovalError):
    """Another decision landed between reading an approval and writing this one: read it again."""


class DecisionRefused(ApprovalError):
    """A decision that cannot be taken now (kill switch, breaker): the approval stays pending."""


class NotAllowed(ApprovalError):
    """The person deciding is not an allowed approver for this step."""


class IdentityError(BotError):
    """Who is acting cannot be established, or a display name could pass for someone else."""


class IllegalTransition(BotError):
    """A lifecycle event does not apply to a record in its current state (see :mod:`bot.lifecycle`)."""


class NotFound(BotError):
    """An incident or approval with that id does not exist."""
