"""The Notifier protocol: how the engine tells people what is happening.

The engine only knows this protocol; chat backends (console, Slack) implement it. Notifications are
best effort: :class:`SafeNotifier` gives every call a timeout and swallows failures after logging
them, so a slow or broken chat service never blocks the runner or loses an incident (the store has
the truth; messages are a view of it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal, Protocol

from bot.incidents import Approval, Incident, StepRun

log = logging.getLogger(__name__)

NoticeLevel = Literal["info", "warning"]
"""``info``: a digest or a recovery; ``warning``: something a human should look at (stale backups)."""


class Notifier(Protocol):
    async def incident_opened(self, incident: Incident) -> None: ...

    async def incident_updated(self, incident: Incident) -> None: ...

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None: ...

    async def step_finished(self, incident: Incident, run: StepRun) -> None: ...

    async def approval_requested(self, incident: Incident, approval: Approval) -> None: ...

    async def approval_closed(self, incident: Incident, approval: Approval) -> None: ...

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        """A message that belongs to no incident (daily digest, backup warnings), for the channel."""
        ...

    async def close(self) -> None: ...


class NullNotifier:
    """Says nothing (tests, and CLI commands whose output is JSON)."""

    async def incident_opened(self, incident: Incident) -> None:
        return None

    async def incident_updated(self, incident: Incident) -> None:
        return None

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        return None

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        return None

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        return None

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        return None

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        return None

    async def close(self) -> None:
        return None


class SafeNotifier:
    """Wraps a notifier: every call gets a timeout, and failures are logged, never raised.

    ``on_failure`` (if set) is called with the method name after each failure (the bot's metrics).
    """

    def __init__(
        self, inner: Notifier, timeout: float = 10.0, on_failure: Callable[[str], None] | None = None
    ) -> None:
        self.inner = inner
        self.timeout = timeout
        self.failures = 0
        self.on_failure = on_failure

    async def _call(self, name: str, *args: object) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await getattr(self.inner, name)(*args)
        except Exception as exc:  # a notifier must never break the runner
            self.failures += 1
            log.warning("notifier %s failed: %s: %s", name, type(exc).__name__, exc)
            if self.on_failure is not None:
                self.on_failure(name)

    async def incident_opened(self, incident: Incident) -> None:
        await self._call("incident_opened", incident)

    async def incident_updated(self, incident: Incident) -> None:
        await self._call("incident_updated", incident)

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        await self._call("step_progress", incident, step_id, message)

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        await self._call("step_finished", incident, run)

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        await self._call("approval_requested", incident, approval)

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        await self._call("approval_closed", incident, approval)

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        await self._call("notice", text, level)

    async def close(self) -> None:
        await self._call("close")


class FanoutNotifier:
    """Tells several notifiers the same thing (e.g. the console and Slack for a CLI decision);
    each is called on its own, so one failing does not silence the others."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = [SafeNotifier(n) for n in notifiers]

    async def _all(self, name: str, *args: object) -> None:
        await asyncio.gather(*(getattr(n, name)(*args) for n in self.notifiers))

    async def incident_opened(self, incident: Incident) -> None:
        await self._all("incident_opened", incident)

    async def incident_updated(self, incident: Incident) -> None:
        await self._all("incident_updated", incident)

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        await self._all("step_progress", incident, step_id, message)

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        await self._all("step_finished", incident, run)

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        await self._all("approval_requested", incident, approval)

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        await self._all("approval_closed", incident, approval)

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        await self._all("notice", text, level)

    async def close(self) -> None:
        await self._all("close")
