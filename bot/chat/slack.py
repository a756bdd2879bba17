"""The Slack notifier: one live card per incident in the channel, a short thread under it.

The card (the root message) is edited in place (``chat.update``) as the incident moves. Its thread
holds only what a person reads or acts on, about four messages for a whole playbook:

1. the **diagnosis digest**, every step in a line, problems first, edited as steps finish;
2. the **details file** (``files.getUploadURLExternal`` + ``files.completeUploadExternal``) with the
   full output, when ``slack.details: file`` (else ``remediation-bot incidents ID`` has it);
3. the **approval request** with its buttons, mentioning the approvers once; edited once decided;
4. each **action's result**, edited with its verification.

A reminder (half the approval's lifetime, nobody decided) and an escalation call the approvers
again. Skipped and passing steps are lines of the digest, never messages of their own.

Every write goes through :class:`bot.chat.slack_outbox.Outbox` (paced per channel, coalesced,
429-aware) and is rendered when it is sent, from the store: the latest state wins, and a restarted
bot edits the same messages (their ``ts`` are in the incident's and the approval's ``chat_ref``).
The notifier's methods only queue work, so the runner never waits for Slack.

The reminder is a timer in this process: a restart re-arms the timers of pending requests
(:meth:`SlackNotifier.rearm_reminders`, called when the service starts); the short-lived CLI
process sets none.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.chat import incident_view as view
from bot.chat.slack_approvals import Called, Mentions
from bot.chat.slack_blocks import Block, approval_message, notice_message, thread_link
from bot.chat.slack_card import (
    CardContext,
    digest_message,
    escalation_message,
    incident_message,
    outcome_message,
    reminder_message,
)
from bot.chat.slack_files import FileUploads
from bot.chat.slack_outbox import Outbox, content_digest, keep
from bot.chat.slack_reminders import Reminders
from bot.config import SlackConfig
from bot.engine import Engine
from bot.incidents import OPEN_STATES, Approval, ApprovalState, Incident, IncidentState, StepRun, StepStatus
from bot.notifier import NoticeLevel
from bot.store import Store
from bot.web.links import PageLinks

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 3.0
"""Seconds between two progress renders of one step (each is an edit; the outbox coalesces more)."""
SILENCE_BUTTONS = ("1h", "4h")
"""The card's Silence buttons (``/redis silence`` takes any duration)."""
CLOSE_TIMEOUT = 8.0
"""Seconds :meth:`SlackNotifier.close` waits for queued messages (the CLI exits after it)."""


class SlackNotifier:
    """Implements :class:`bot.notifier.Notifier` with the Slack Web API (see the module docstring)."""

    def __init__(
        self,
        client: AsyncWebClient,
        config: SlackConfig,
        engine: Engine,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        mentions: Mentions | None = None,
    ) -> None:
        if not config.channel:
            raise ValueError("slack.channel is required to post incidents")
        self.client = client
        self.config = config
        self.channel = config.channel
        self.engine = engine
        self.progress_interval = progress_interval
        self.mentions = mentions or Mentions(config, client)
        self.outbox = Outbox(config.min_interval, on_error=self._failed)
        self._reminders = Reminders(self)
        self._refs: dict[int, dict[str, Any]] = {}
        self._progress: dict[int, dict[str, str]] = {}
        self._progress_at: dict[tuple[int, str], float] = {}
        self._shown: dict[tuple[str, str], str] = {}
        self._replaced: set[int] = set()
        self._files = config.details == "file"
        self.files = FileUploads(client, self.outbox)
        self.page_links: PageLinks | None = PageLinks(engine.config, lambda: engine.store)
        """Signed links to the incident page on the card (the service hands in its own)."""
        self._notices = itertools.count()

    @property
    def store(self) -> Store:
        return self.engine.store

    def _failed(self) -> None:
        self.engine.metrics.call_error("slack")

    # -- plumbing -------------------------------------------------------------------------------

    def _queue(self, key: Hashable, job: Callable[[], Awaitable[None]], channel: str | None = None) -> None:
        self.outbox.submit(channel or self.channel, key, job)

    async def _post(
        self, channel: str, text: str, blocks: list[Block], *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
        resp = await self.outbox.call(
            channel,
            lambda: self.client.chat_postMessage(
                channel=channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False, **kwargs
            ),
        )
        ref = {"channel": str(resp["channel"]), "ts": str(resp["ts"])}
        keep(self._shown, (ref["channel"], ref["ts"]), content_digest(text, blocks))
        return ref

    async def _update(self, ref: dict[str, Any], text: str, blocks: list[Block]) -> None:
        """Edit a message, unless it already shows exactly this (a coalesced job often does)."""
        key, digest = (str(ref["channel"]), str(ref["ts"])), content_digest(text, blocks)
        if self._shown.get(key) == digest:
            return
        await self.outbox.call(
            key[0], lambda: self.client.chat_update(channel=key[0], ts=key[1], text=text, blocks=blocks)
        )
        keep(self._shown, key, digest)

    async def _fresh(self, incident_id: int) -> tuple[Incident, dict[str, Any]]:
        """The incident as stored now, and where its messages are (the store's record merged with
        what this process posted and may not have saved yet)."""
        inc = await self.store.get_incident(incident_id)
        ref = {**self._refs.get(incident_id, {}), **inc.chat_ref}
        keep(self._refs, incident_id, ref)
        return inc, ref

    async def _save(self, incident_id: int, ref: dict[str, Any]) -> None:
        keep(self._refs, incident_id, ref)
        await self.store.set_incident_chat_ref(incident_id, ref)

    async def _card_context(self, inc: Incident, *, first: bool) -> CardContext:
        called = await self.mentions.tokens() if inc.pending_step else Called()
        decision = None
        if not inc.pending_step:
            latest = await self.store.latest_approval(inc.id)
            decision = latest if latest is not None and latest.state != ApprovalState.PENDING else None
        pb = self.engine.playbooks.get(inc.playbook or "", inc.params) if inc.playbook else None
        acked, silences = await self.marks(inc.id)
        live = inc.status in OPEN_STATES or inc.alert_status == "firing"
        silencing = self.engine.config.alertmanager is not None and inc.source == "alertmanager"
        return CardContext(
            waiting_for=called.quiet if first else called.rich,
            decision=decision,
            runbook=pb.runbook if pb is not None else "",
            incident_url=self.config.incident_url or await self.page_link(inc.id),
            acknowledged=tuple(acked),
            silences=tuple(silences),
            ack_button=live and not acked,
            silence_buttons=SILENCE_BUTTONS
            if silencing and inc.alert_status == "firing" and not silences
            else (),
        )

    async def page_link(self, incident_id: int) -> str | None:
        """The incident page's signed link; None (no link on the card) if the key cannot be read."""
        if self.page_links is None:
            return None
        try:
            return await self.page_links.incident(incident_id)
        except Exception as exc:  # a link is a nicety: the card goes out without it
            log.warning("slack: no incident page link for #%s: %s", incident_id, exc)
            return None

    async def _card(self, inc: Incident, ref: dict[str, Any]) -> dict[str, Any]:
        """Post the card if it is missing (never with a mention), else edit it to the latest state."""
        if ref.get("ts"):
            text, blocks = incident_message(inc, await self._card_context(inc, first=False))
            await self._update(ref, text, blocks)
            return ref
        text, blocks = incident_message(inc, await self._card_context(inc, first=True))
        ref.update(await self._post(self.channel, text, blocks))
        await self._save(inc.id, ref)
        return ref

    async def _thread(
        self, inc: Incident, ref: dict[str, Any], name: str, text: str, blocks: list[Block]
    ) -> None:
        """Post or edit the thread message stored under ``name`` in the incident's ``chat_ref``."""
        ref = await self._card(inc, ref) if not ref.get("ts") else ref
        if ref.get(name):
            await self._update({"channel": ref["channel"], "ts": ref[name]}, text, blocks)
            return
        msg = await self._post(ref["channel"], text, blocks, thread_ts=ref["ts"])
        ref[name] = msg["ts"]
        await self._save(inc.id, ref)

    # -- jobs: each renders the latest state when it runs ------------------------------------------

    def _card_job(self, incident_id: int) -> None:
        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            await self._card(inc, ref)

        self._queue(("card", incident_id), job)

    def _digest_job(self, incident_id: int) -> None:
        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            progress = {
                k: v
                for k, v in self._progress.get(incident_id, {}).items()
                if not any(s.step_id == k and s.mutating for s in inc.steps)
            }
            if not inc.steps and not progress:
                return
            text, blocks = digest_message(inc, progress, details_file=bool(ref.get("details")))
            await self._thread(inc, ref, "digest_ts", text, blocks)

        self._queue(("digest", incident_id), job)

    def _action_job(self, incident_id: int, step_id: str) -> None:
        """An action's message: its progress while it runs, then its result and verification."""

        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            runs = [s for s in inc.steps if s.mutating and s.step_id == step_id]
            runs = [
                s
                for s in runs
                if s.status in view.RAN or s.status in (StepStatus.RUNNING, StepStatus.PLANNED)
            ]
            if not runs:
                return
            action = runs[-1]
            progress = None
            if action.status == StepStatus.RUNNING:
                progress = self._progress.get(incident_id, {}).get(step_id)
                if progress is None:
                    return
            text, blocks = outcome_message(inc, action, view.checks_after(inc, action), progress)
            key = f"outcome_{action.id}"
            await self._thread(inc, ref, key, text, blocks)

        self._queue(("action", incident_id, step_id), job)

    def _details_job(self, incident_id: int) -> None:
        """The full output as a file in the thread (once): what the digest leaves out."""

        async def job() -> None:
            if not self._files:
                return
            inc, ref = await self._fresh(incident_id)
            if ref.get("details") or not view.has_details(inc):
                return
            ref = await self._card(inc, ref) if not ref.get("ts") else ref
            file_id = await self.files.upload(
                str(ref["channel"]),
                str(ref["ts"]),
                filename=f"incident-{inc.id}-details.txt",
                title=f"Incident #{inc.id}: full output of every step",
                content=view.details_text(inc),
                snippet_type="text",
                initial_comment=f"Full output of every step of incident #{inc.id} so far.",
            )
            if file_id is None:
                return
            ref["details"] = file_id
            await self._save(inc.id, ref)
            self._digest_job(incident_id)  # the digest now points at the file

        self._queue(("details", incident_id), job)

    def _chart_job(self, incident_id: int, run: StepRun, path: str) -> None:
        """A chart step's PNG as an image in the thread (once per step run)."""

        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            key = f"chart_{run.id}"
            if ref.get(key) or not self.files.enabled:
                return
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
            except OSError as exc:
                log.warning("slack: chart of incident %s is gone: %s", incident_id, exc)
                return
            ref = await self._card(inc, ref) if not ref.get("ts") else ref
            title = str(run.data.get("title") or run.step_id)
            file_id = await self.files.upload(
                str(ref["channel"]),
                str(ref["ts"]),
                file=data,
                filename=Path(path).name,
                title=f"Incident #{inc.id}: {title}",
                alt_txt=view.one_line(f"Chart: {run.summary}", 1000),
                initial_comment=f"📈 {view.one_line(run.summary)}",
            )
            if file_id is not None:
                ref[key] = file_id
                await self._save(inc.id, ref)

        self._queue(("chart", incident_id, run.id), job)

    def _escalation_job(self, incident_id: int) -> None:
        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            if ref.get("escalated") or inc.status != IncidentState.ESCALATED:
                return
            called = await self.mentions.tokens()
            text, blocks = escalation_message(inc, called.ping, inc.note or "the bot stopped before acting")
            await self._thread(inc, ref, "escalated", text, blocks)

        self._queue(("escalation", incident_id), job)

    def _approval_job(self, approval_id: int) -> None:
        async def job() -> None:
            ap = await self.store.get_approval(approval_id)
            inc, ref = await self._fresh(ap.incident_id)
            ref = await self._card(inc, ref) if not ref.get("ts") else ref
            called = await self.mentions.tokens() if ap.state == ApprovalState.PENDING else Called()
            if ap.chat_ref.get("ts"):
                text, blocks = approval_message(inc, ap, called.rich)
                await self._update(ap.chat_ref, text, blocks)
            else:
                text, blocks = approval_message(inc, ap, called.ping)
                msg = await self._post(ref["channel"], text, blocks, thread_ts=ref["ts"])
                await self.store.set_approval_chat_ref(approval_id, {**ap.chat_ref, **msg})
            await self._close_replaced(inc, approval_id)

        self._queue(("approval", approval_id), job)

    def _reminder_job(self, approval_id: int) -> None:
        async def job() -> None:
            ap = await self.store.get_approval(approval_id)
            if ap.state != ApprovalState.PENDING or ap.chat_ref.get("reminded"):
                return
            inc, ref = await self._fresh(ap.incident_id)
            called = await self.mentions.tokens()
            text, blocks = reminder_message(inc, ap, called.ping, thread_link(ap.chat_ref))
            ref = await self._card(inc, ref) if not ref.get("ts") else ref
            msg = await self._post(ref["channel"], text, blocks, thread_ts=ref["ts"])
            await self.store.set_approval_chat_ref(approval_id, {**ap.chat_ref, "reminded": msg["ts"]})

        self._queue(("reminder", approval_id), job)

    async def _close_replaced(self, inc: Incident, newest: int) -> None:
        """Older requests of the incident replaced by a new plan lose their buttons too."""
        for entry in await self.store.list_audit(incident_id=inc.id, limit=500):
            old_id = entry.detail.get("approval_id")
            if entry.kind != "approval.requested" or not isinstance(old_id, int) or old_id >= newest:
                continue
            if old_id in self._replaced:
                continue
            old = await self.store.get_approval(old_id)
            if old.state == ApprovalState.SUPERSEDED and old.chat_ref.get("ts"):
                text, blocks = approval_message(inc, old)
                await self._update(old.chat_ref, text, blocks)
            if old.state != ApprovalState.PENDING:
                self._replaced.add(old_id)

    # -- reminders, acknowledgements, silences ----------------------------------------------------

    @property
    def reminders(self) -> dict[int, asyncio.Task[None]]:
        """Reminder timers still waiting, by approval id."""
        return self._reminders.tasks

    async def rearm_reminders(self) -> int:
        return await self._reminders.rearm()

    def remind(self, approval_id: int) -> None:
        self._reminder_job(approval_id)

    async def marks(self, incident_id: int) -> tuple[list[str], list[view.SilenceMark]]:
        """Who acknowledged the incident, and its active silences (from the audit)."""
        audit = await self.store.list_audit(incident_id=incident_id, limit=1000)
        return view.acknowledged_by(audit), view.active_silences(audit, time.time())

    async def acknowledged(self, incident_id: int) -> None:
        """Someone is on it: the reminders stop and the card says who."""
        await self._reminders.stop_for(incident_id)
        self._card_job(incident_id)

    def thread_note(self, incident_id: int, key: str, text: str, blocks: list[Block]) -> None:
        """A message of its own in the incident's thread (a silence, an acknowledgement)."""

        async def job() -> None:
            inc, ref = await self._fresh(incident_id)
            ref = await self._card(inc, ref) if not ref.get("ts") else ref
            await self._post(ref["channel"], text, blocks, thread_ts=ref["ts"])

        self._queue(("note", incident_id, key), job)
        self._card_job(incident_id)

    # -- the Notifier protocol ------------------------------------------------------------------

    async def incident_opened(self, incident: Incident) -> None:
        self._card_job(incident.id)

    async def incident_updated(self, incident: Incident) -> None:
        self._card_job(incident.id)
        if incident.steps:
            self._digest_job(incident.id)
        if incident.status == IncidentState.ESCALATED:
            self._details_job(incident.id)
            self._escalation_job(incident.id)
        elif incident.status in view.FINAL:
            self._details_job(incident.id)

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        now = time.monotonic()
        last = self._progress_at.get((incident.id, step_id))
        self._progress.setdefault(incident.id, {})[step_id] = message
        if last is not None and now - last < self.progress_interval:
            return
        self._progress_at[(incident.id, step_id)] = now
        if any(s.step_id == step_id and s.mutating for s in incident.steps):
            self._action_job(incident.id, step_id)
        else:
            self._digest_job(incident.id)

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        running = self._progress.get(incident.id, {})
        running.pop(run.step_id, None)
        if not running:
            self._progress.pop(incident.id, None)
        self._progress_at.pop((incident.id, run.step_id), None)
        part = view.part_of(incident, run)
        if path := view.chart_path(run):
            self._chart_job(incident.id, run, path)
        if part == view.Part.ACTION:
            self._action_job(incident.id, run.step_id)
        elif part == view.Part.CHECK:
            action = view.action_before(incident, run)
            if action is not None:
                self._action_job(incident.id, action.step_id)
        elif run.mutating and run.status in (StepStatus.CANCELLED, StepStatus.DENIED):
            latest = await self.store.latest_approval(incident.id)
            if latest is not None and latest.step_run_id == run.id:
                self._approval_job(latest.id)  # the request shows why it will not run
        self._digest_job(incident.id)
        self._card_job(incident.id)

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        """The digest is complete: its file first, then the request with its buttons and mentions."""
        self._details_job(incident.id)
        self._approval_job(approval.id)
        self._card_job(incident.id)
        if approval.state == ApprovalState.PENDING:
            self._reminders.arm(approval)

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        """Replace the buttons with who decided what and when (or why it closed)."""
        self._reminders.disarm(approval.id)
        self._approval_job(approval.id)
        self._card_job(incident.id)

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        """A channel message that belongs to no incident (digest, stale backups)."""
        text_, blocks = notice_message(text, level)

        async def job() -> None:
            await self._post(self.channel, text_, blocks)

        self._queue(("notice", next(self._notices)), job)

    async def flush(self, within: float | None = None) -> bool:
        """Wait until everything queued was sent (tests; the CLI before it exits)."""
        return await self.outbox.drain(within)

    async def close(self) -> None:
        await self._reminders.close()
        await self.outbox.close(CLOSE_TIMEOUT)
