"""The Notifier protocol: how the engine tells people what is happening.

The engine only knows this protocol; chat backends (console, Slack) implement it. Notifications are
best effort: :class:`SafeNotifier` gives every call a timeout and swallows failures after logging
them, so a slow or broken chat service never blocks the runner or loses an incident (the store has
the truth; messages are a view of it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from bot.incidents import Approval, Incident, StepRun

log = logging.getLogger(__name__)


class Notifier(Protocol):
    async def incident_opened(self, incident: Incident) -> None: ...

    async def incident_updated(self, incident: Incident) -> None: ...

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None: ...

    async def step_finished(self, incident: Incident, run: StepRun) -> None: ...

    async def approval_requested(self, incident: Incident, approval: Approval) -> None: ...

    async def approval_closed(self, incident: Incident, approval: Approval) -> None: ...

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

    async def close(self) -> None:
        return None


class SafeNotifier:
    """Wraps a notifier: every call gets a timeout, and failures are logged, never raised."""

    def __init__(self, inner: Notifier, timeout: float = 10.0) -> None:
        self.inner = inner
        self.timeout = timeout
        self.failures = 0

    async def _call(self, name: str, *args: object) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await getattr(self.inner, name)(*args)
        except Exception as exc:  # a notifier must never break the runner
            self.failures += 1
            log.warning("notifier %s failed: %s: %s", name, type(exc).__name__, exc)

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

    async def close(self) -> None:
        await self._call("close")
