"""The Slack notifier: one message per incident in the configured channel, everything else in its thread.

The parent message is the incident's dashboard and is edited (``chat.update``) as the incident
moves; step results are thread replies; an approval request is a thread reply (also shown in the
channel) with Approve/Deny buttons, edited again once someone decided, it expired or the alert
resolved, so no stale button is left to click.

Where each message lives (channel and ``ts``) is kept in the store (the incident's and the
approval's ``chat_ref``), so a restarted bot edits the same messages. Slack is best effort: the
runner wraps this notifier in :class:`bot.notifier.SafeNotifier`, and a parent that could not be
posted (Slack down) is posted by the next notification that gets through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.slack_blocks import (
    Block,
    approval_message,
    incident_message,
    notice_message,
    progress_message,
    step_message,
)
from bot.config import SlackConfig
from bot.engine import Engine
from bot.incidents import Approval, ApprovalState, Incident, StepRun
from bot.notifier import NoticeLevel
from bot.store import Store

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 3.0
"""Seconds between two edits of a step's progress message (Slack rate-limits chat.update)."""


class SlackNotifier:
    """Implements :class:`bot.notifier.Notifier` with the Slack Web API.

    It reaches the store through the engine (started before any message is sent).
    """

    def __init__(
        self,
        client: AsyncWebClient,
        config: SlackConfig,
        engine: Engine,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        if not config.channel:
            raise ValueError("slack.channel is required to post incidents")
        self.client = client
        self.channel = config.channel
        self.engine = engine
        self.progress_interval = progress_interval
        self._parents: dict[int, dict[str, Any]] = {}
        self._progress: dict[tuple[int, str], tuple[str, str, float]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._replaced: set[int] = set()

    @property
    def store(self) -> Store:
        return self.engine.store

    # -- plumbing -------------------------------------------------------------------------------

    async def _post(
        self, text: str, blocks: list[Block], *, thread_ts: str | None = None, broadcast: bool = False
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
            if broadcast:
                kwargs["reply_broadcast"] = True
        resp = await self.client.chat_postMessage(
            channel=self.channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False, **kwargs
        )
        return {"channel": str(resp["channel"]), "ts": str(resp["ts"])}

    async def _update(self, ref: dict[str, Any], text: str, blocks: list[Block]) -> None:
        await self.client.chat_update(channel=ref["channel"], ts=ref["ts"], text=text, blocks=blocks)

    async def _parent(self, inc: Incident) -> tuple[dict[str, Any], bool]:
        """The incident's parent message, posting it now if nobody could yet; (ref, just posted)."""
        ref = self._parents.get(inc.id) or (inc.chat_ref if inc.chat_ref.get("ts") else None)
        if ref:
            self._parents[inc.id] = ref
            return ref, False
        async with self._locks[f"incident:{inc.id}"]:
            fresh = await self.store.get_incident(inc.id)
            if fresh.chat_ref.get("ts"):
                self._parents[inc.id] = fresh.chat_ref
                return fresh.chat_ref, False
            text, blocks = incident_message(fresh)
            ref = await self._post(text, blocks)
            await self.store.set_incident_chat_ref(inc.id, ref)
            self._parents[inc.id] = ref
            return ref, True

    # -- the Notifier protocol ------------------------------------------------------------------

    async def incident_opened(self, incident: Incident) -> None:
        await self._parent(incident)

    async def incident_updated(self, incident: Incident) -> None:
        ref, posted = await self._parent(incident)
        if not posted:
            text, blocks = incident_message(incident)
            await self._update(ref, text, blocks)

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        key = (incident.id, step_id)
        last = self._progress.get(key)
        now = time.monotonic()
        if last is not None and now - last[2] < self.progress_interval:
            return
        ref, _ = await self._parent(incident)
        text, blocks = progress_message(incident, step_id, message)
        if last is None:
            msg = await self._post(text, blocks, thread_ts=ref["ts"])
            self._progress[key] = (msg["channel"], msg["ts"], now)
        else:
            await self._update({"channel": last[0], "ts": last[1]}, text, blocks)
            self._progress[key] = (last[0], last[1], now)

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        ref, _ = await self._parent(incident)
        text, blocks = step_message(incident, run)
        progress = self._progress.pop((incident.id, run.step_id), None)
        if progress is not None:
            await self._update({"channel": progress[0], "ts": progress[1]}, text, blocks)
        else:
            await self._post(text, blocks, thread_ts=ref["ts"])

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        """Post the request with its buttons, or edit it (a first approval of a two-person step)."""
        ref, _ = await self._parent(incident)
        async with self._locks[f"approval:{approval.id}"]:
            fresh = await self.store.get_approval(approval.id)
            text, blocks = approval_message(incident, fresh)
            if fresh.chat_ref.get("ts"):
                await self._update(fresh.chat_ref, text, blocks)
                return
            msg = await self._post(text, blocks, thread_ts=ref["ts"], broadcast=True)
            await self.store.set_approval_chat_ref(approval.id, msg)
        await self._close_replaced(incident, approval.id)

    async def _close_replaced(self, incident: Incident, newest: int) -> None:
        """Older requests of the incident replaced by a new plan lose their buttons too."""
        for entry in await self.store.list_audit(incident_id=incident.id, limit=500):
            old_id = entry.detail.get("approval_id")
            if entry.kind != "approval.requested" or not isinstance(old_id, int) or old_id >= newest:
                continue
            if old_id in self._replaced:
                continue
            old = await self.store.get_approval(old_id)
            if old.state == ApprovalState.SUPERSEDED and old.chat_ref.get("ts"):
                text, blocks = approval_message(incident, old)
                await self._update(old.chat_ref, text, blocks)
            if old.state != ApprovalState.PENDING:
                self._replaced.add(old_id)

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        """Replace the buttons with who decided what and when (or why it closed)."""
        ref, _ = await self._parent(incident)
        async with self._locks[f"approval:{approval.id}"]:
            fresh = await self.store.get_approval(approval.id)
            text, blocks = approval_message(incident, fresh)
            if fresh.chat_ref.get("ts"):
                await self._update(fresh.chat_ref, text, blocks)
            else:  # the request never reached Slack: still leave a record in the thread
                msg = await self._post(text, blocks, thread_ts=ref["ts"])
                await self.store.set_approval_chat_ref(approval.id, msg)

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        """A channel message that belongs to no incident (digest, stale backups)."""
        text_, blocks = notice_message(text, level)
        await self._post(text_, blocks)

    async def close(self) -> None:
        return None
