"""Silence and acknowledge from Slack: the card's buttons and ``/redis silence|unsilence``.

**Silence** creates a silence in Alertmanager (v2 API) for exactly the incident's alert (one
equality matcher per label), ``createdBy`` the Slack user, the comment carrying the reason and the
incident page's link; the silence id goes into the thread, the audit (``silence.created``) and the
card. Order makes it all-or-nothing: Alertmanager first (refused or down: a clear message in the
thread, nothing recorded), then the audit (if that fails, the silence is expired again). A second
click finds the active silence with the same matchers instead of making another.

**Acknowledge** records who is on it (audit ``incident.acknowledged``, the thread, the card, the
page) and stops the incident's approval reminders.

Who may: the approvers, or ``slack.silencers``/``slack.silencer_group`` when set; anyone else gets an
ephemeral refusal, which is audited. Nothing here runs an action on Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.alertmanager import SILENCE_ID, AlertmanagerClient, AlertmanagerError, matchers_for
from bot.chat.slack import SlackNotifier
from bot.chat.slack_approvals import Approvers, Click
from bot.chat.slack_blocks import Block, code, context, esc, mrkdwn, when, who
from bot.chat.slack_card import ACK_ACTION, SILENCE_ACTION
from bot.chat.slack_commands import Usage
from bot.config import Config
from bot.durations import parse_duration
from bot.engine import Engine
from bot.errors import IdentityError, NotFound
from bot.formatting import format_duration
from bot.identity import slack_actor
from bot.incidents import Incident, iso

log = logging.getLogger(__name__)


class Refused(Usage):
    """Silencing or acknowledging was not done; the message (mrkdwn) says why (only to the asker)."""


class IncidentActions:
    """Acknowledge and silence (buttons and commands); one per process."""

    def __init__(
        self, config: Config, engine: Engine, client: AsyncWebClient, notifier: SlackNotifier
    ) -> None:
        self.config = config
        self.engine = engine
        self.client = client
        self.notifier = notifier
        self.am = AlertmanagerClient(config.alertmanager) if config.alertmanager is not None else None
        self.allowed = Approvers(config.slack, client, role="silencer", verb="silence or acknowledge")
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- who -------------------------------------------------------------------------------------

    async def _check(self, user: str, incident_id: int | None, what: str) -> str:
        """The actor's label, or Refused (audited) when they may not."""
        try:
            actor = slack_actor(user).label
        except IdentityError as exc:
            raise Refused("this request names no Slack user. Nothing was changed.") from exc
        refusal = await self.allowed.refusal(user)
        if refusal is not None:
            await self.engine.store.audit(
                f"{what}.refused", incident_id=incident_id, actor=actor, detail={"reason": refusal}
            )
            raise Refused(f":no_entry: Not allowed to {what}: {refusal} Nothing was changed.")
        return actor

    async def _incident(self, incident_id: int) -> Incident:
        try:
            return await self.engine.store.get_incident(incident_id, steps=False)
        except NotFound as exc:
            raise Refused(f":warning: There is no incident #{incident_id}.") from exc

    # -- acknowledge -----------------------------------------------------------------------------

    async def acknowledge(self, incident_id: int, user: str) -> str:
        actor = await self._check(user, incident_id, "acknowledge")
        async with self._locks[incident_id]:
            inc = await self._incident(incident_id)
            acked, _ = await self.notifier.marks(inc.id)
            if acked:
                return f":information_source: Already acknowledged by {who(acked[0])}."
            await self.engine.store.audit(
                "incident.acknowledged", incident_id=inc.id, actor=actor, target=inc.target
            )
        await self.notifier.acknowledged(inc.id)
        text = f":eyes: {who(actor)} is on it: incident #{inc.id} acknowledged; no more approval reminders."
        self.notifier.thread_note(inc.id, f"ack-{actor}", text, [mrkdwn(text)])
        return f":eyes: You acknowledged incident #{inc.id}."

    # -- silence ---------------------------------------------------------------------------------

    async def silence(self, incident_id: int, user: str, seconds: float, reason: str = "") -> str:
        """Silence the incident's alert for ``seconds``; what to tell the person (mrkdwn)."""
        if self.am is None:
            raise Refused(
                ":warning: Silencing needs `alertmanager: {url: …}` in the bot's config. Nothing was changed."
            )
        actor = await self._check(user, incident_id, "silence")
        limit = self.config.alertmanager.max_duration if self.config.alertmanager else seconds
        if seconds > limit:
            raise Refused(f":warning: At most {format_duration(limit)} (`alertmanager.max_duration`).")
        async with self._locks[incident_id]:
            inc = await self._incident(incident_id)
            if inc.source != "alertmanager" or not inc.labels:
                raise Refused(
                    f":warning: Incident #{inc.id} did not come from Alertmanager: nothing to silence."
                )
            if inc.alert_status != "firing":
                raise Refused(f":information_source: The alert of incident #{inc.id} already resolved.")
            matchers = matchers_for(inc.labels)
            try:
                existing = await self.am.active_for(matchers)
            except AlertmanagerError as exc:
                return self._failed(inc, actor, exc)
            if existing is not None:
                return (
                    f":information_source: Already silenced until {when(existing.ends_at)}"
                    f" (silence {code(existing.id)}, by {esc(existing.created_by)}). Nothing new was created."
                )
            now = time.time()
            page = await self.notifier.page_link(inc.id)
            comment = (
                (reason.strip() or "Silenced from Slack")
                + f" | incident #{inc.id}"
                + (f": {page}" if page else "")
            )
            try:
                silence_id = await self.am.create(
                    matchers, starts=now, ends=now + seconds, created_by=actor, comment=comment
                )
            except AlertmanagerError as exc:
                return self._failed(inc, actor, exc)
            ends = iso(now + seconds) or ""
            try:
                await self.engine.store.audit(
                    "silence.created", incident_id=inc.id, actor=actor, target=inc.target,
                    detail={"silence_id": silence_id, "ends_at": ends, "duration_s": seconds,
                            "matchers": matchers, "comment": comment, "alertmanager": self.am.shown},
                )  # fmt: skip
            except Exception:
                await self._undo(silence_id)
                raise
        text = (
            f":no_bell: {who(actor)} silenced *{esc(inc.alertname)}* on {code(inc.target or '-')} for"
            f" {format_duration(seconds)}, until {when(ends)}: silence {code(silence_id)}"
            + (f"\n_{esc(reason.strip())}_" if reason.strip() else "")
        )
        blocks = [
            mrkdwn(text),
            context(f"Undo: `/redis unsilence {silence_id}` · in Alertmanager: {esc(self.am.shown)}"),
        ]
        self.notifier.thread_note(inc.id, f"silence-{silence_id}", text, blocks)
        return (
            f":no_bell: Silenced incident #{inc.id}'s alert until {when(ends)} (silence {code(silence_id)})."
        )

    def _failed(self, inc: Incident, actor: str, exc: AlertmanagerError) -> str:
        text = f":warning: {who(actor)} could not silence *{esc(inc.alertname)}*: {esc(exc)}. Nothing was silenced."
        self.notifier.thread_note(inc.id, f"silence-failed-{time.monotonic()}", text, [mrkdwn(text)])
        return text

    async def _undo(self, silence_id: str) -> None:
        assert self.am is not None
        try:
            await self.am.expire(silence_id)
        except AlertmanagerError as exc:
            log.error("silence %s was created but not recorded, and expiring it failed: %s", silence_id, exc)

    async def unsilence(self, silence_id: str, user: str) -> str:
        if self.am is None:
            raise Refused(":warning: Silencing needs `alertmanager: {url: …}` in the bot's config.")
        if not SILENCE_ID.fullmatch(silence_id):
            raise Refused(f":warning: {code(silence_id[:80])} is not a silence id.")
        created = [e for e in await self.engine.store.list_audit(limit=5000) if e.kind == "silence.created"]
        made = next((e for e in reversed(created) if e.detail.get("silence_id") == silence_id), None)
        incident_id = made.incident_id if made is not None else None
        actor = await self._check(user, incident_id, "silence")
        try:
            found = await self.am.get(silence_id)
            if found is None:
                raise Refused(f":warning: Alertmanager has no silence {code(silence_id)}.")
            await self.am.expire(silence_id)
        except AlertmanagerError as exc:
            raise Refused(f":warning: Could not expire silence {code(silence_id)}: {esc(exc)}") from exc
        await self.engine.store.audit(
            "silence.expired", incident_id=incident_id, actor=actor, detail={"silence_id": silence_id}
        )
        text = f":bell: {who(actor)} expired silence {code(silence_id)}: the alert notifies again."
        if incident_id is not None:
            self.notifier.thread_note(incident_id, f"unsilence-{silence_id}", text, [mrkdwn(text)])
        return text

    # -- Slack entry points ----------------------------------------------------------------------

    async def on_click(self, body: dict[str, Any], client: AsyncWebClient) -> str:
        """A card button: acknowledge or silence; the clicker is answered ephemerally."""
        click = Click.from_body(body)
        action = str(((body.get("actions") or [{}])[0]).get("action_id", ""))
        try:
            value = json.loads(click.value or "{}")
            incident_id = int(value["incident"])
            if action == ACK_ACTION:
                text = await self.acknowledge(incident_id, click.user)
            elif action.startswith(SILENCE_ACTION + "_"):
                text = await self.silence(incident_id, click.user, parse_duration(str(value.get("for", ""))))
            else:
                text = ":warning: Unknown button."
        except (ValueError, KeyError, TypeError):
            text = ":warning: This button carries no incident. Nothing was changed."
        except Refused as exc:
            text = str(exc)
        if click.channel:
            try:
                await client.chat_postEphemeral(channel=click.channel, user=click.user, text=text)
            except SlackApiError as exc:
                log.warning("could not answer %s: %s", click.user, exc)
        return text

    async def find_incident(self, word: str) -> int:
        """``12``, ``#12``, or an alert name that fires in exactly one incident."""
        if word.lstrip("#").isdigit():
            return int(word.lstrip("#"))
        firing = [
            i for i in await self.engine.store.list_incidents(limit=500, steps=False)
            if i.alertname == word and i.alert_status == "firing" and i.source == "alertmanager"
        ]  # fmt: skip
        distinct = {json.dumps(i.labels, sort_keys=True): i for i in firing}
        if not distinct:
            raise Refused(f":warning: No firing alert named {code(word)} has an incident.")
        if len(distinct) > 1:
            which = ", ".join(f"#{i.id} ({esc(i.target or '-')})" for i in distinct.values())
            raise Refused(
                f":warning: {code(word)} fires for several targets: {which}. Give the incident number."
            )
        return next(iter(distinct.values())).id

    async def command(self, sub: str, args: list[str], user: str) -> tuple[str, list[Block]]:
        """``silence ALERTNAME|INCIDENT DURATION [reason]`` and ``unsilence ID``."""
        if sub == "unsilence":
            if len(args) != 1:
                raise Refused("usage: `/redis unsilence SILENCE_ID`")
            text = await self.unsilence(args[0], user)
            return text, [mrkdwn(text)]
        if len(args) < 2:
            raise Refused(
                "usage: `/redis silence ALERTNAME|INCIDENT DURATION [reason]`, e.g. `/redis silence #12 2h deploy`"
            )
        try:
            seconds = parse_duration(args[1])
        except ValueError as exc:
            raise Refused(f":warning: {esc(exc)}") from exc
        text = await self.silence(await self.find_incident(args[0]), user, seconds, " ".join(args[2:]))
        return text, [mrkdwn(text)]
