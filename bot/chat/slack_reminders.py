"""Approval reminders: a timer per pending request, at half its lifetime, unless someone decided.

The reminder is a timer in this process: a restart re-arms the timers of requests still pending
(:meth:`Reminders.rearm`, called when the service starts); the short-lived CLI process sets none.
An acknowledgement ("I am on it", the card's Acknowledge button) stops the incident's reminders:
the timers are cancelled, and one that fires anyway finds the acknowledgement in the audit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from bot.incidents import Approval, ApprovalState, epoch

if TYPE_CHECKING:
    from bot.chat.slack import SlackNotifier

log = logging.getLogger(__name__)


class Reminders:
    """The reminder timers of one notifier, by approval id (``close`` cancels them)."""

    def __init__(self, notifier: SlackNotifier) -> None:
        self.notifier = notifier
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def arm(self, ap: Approval) -> None:
        """Remind at half the approval's lifetime, unless someone decided or acknowledged by then."""
        n = self.notifier
        if not n.config.remind or ap.id in self.tasks or ap.chat_ref.get("reminded"):
            return
        ttl = n.engine.config.approvals.ttl
        # requested_at is kept to the second; the configured lifetime gives the half exactly.
        requested = epoch(ap.requested_at) or ap.expires_ts - ttl
        lifetime = min(ttl, ap.expires_ts - requested + 1.0)
        if lifetime <= 0:
            return
        at = ap.expires_ts - lifetime / 2

        async def later() -> None:
            await asyncio.sleep(max(0.0, at - time.time()))
            fresh = await n.store.get_approval(ap.id)
            if fresh.state != ApprovalState.PENDING or fresh.chat_ref.get("reminded"):
                return
            acked, _ = await n.marks(ap.incident_id)
            if not acked:
                n.remind(ap.id)

        task = asyncio.create_task(later(), name=f"slack-reminder-{ap.id}")
        self.tasks[ap.id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self.tasks.get(ap.id) is t:
                del self.tasks[ap.id]
            if not t.cancelled() and t.exception() is not None:
                log.warning("slack: reminder for approval %s failed: %s", ap.id, t.exception())

        task.add_done_callback(done)

    def disarm(self, approval_id: int) -> None:
        task = self.tasks.get(approval_id)
        if task is not None and not task.done():
            task.cancel()

    async def stop_for(self, incident_id: int) -> None:
        """Someone acknowledged the incident: no more reminders for its requests."""
        for ap in await self.notifier.store.open_approvals(incident_id=incident_id):
            self.disarm(ap.id)

    async def rearm(self) -> int:
        """After a restart: arm the reminders of requests still pending and not reminded yet."""
        n = 0
        for ap in await self.notifier.store.open_approvals():
            if ap.state == ApprovalState.PENDING and ap.id not in self.tasks:
                self.arm(ap)
                n += ap.id in self.tasks
        return n

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
