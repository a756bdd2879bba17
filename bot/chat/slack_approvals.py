"""Approve/Deny button clicks: who may decide, and deciding through the runner exactly once.

Checks happen on the server, never in the message: the clicker must be on the allow-list
(``slack.approvers``) or in the user group (``slack.approver_group``); the button must name the
approval that is waiting *and* the hash of the plan it showed, so a stale button from a replaced
plan can never approve the new one. The decision itself is the store's compare-and-set (through
:meth:`bot.runner.Runner.decide`): a double click or a Slack retry executes once, and the second
clicker is told who was first. The engine's approval rules (:mod:`bot.approval_rules`) then apply:
whoever asked for an action may not approve it alone. Answers to the clicker are ephemeral: only
they see them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.slack_blocks import already_decided_text, mentionize, parse_button_value
from bot.config import SlackConfig
from bot.engine import Engine
from bot.errors import AlreadyDecided, ApprovalError, BotError, IdentityError, NotAllowed, NotFound
from bot.identity import slack_actor
from bot.incidents import ApprovalState

log = logging.getLogger(__name__)

GROUP_TTL = 60.0
"""Seconds a user group's member list is trusted before asking Slack again."""
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


async def group_id(client: AsyncWebClient, group: str) -> str:
    """A user group's ID (``S…``) from its ID, handle or name (``usergroups.list``)."""
    if _GROUP_ID.match(group):
        return group
    resp = await client.usergroups_list()
    for g in resp.get("usergroups") or []:
        if group in (g.get("handle"), g.get("name"), g.get("id")):
            return str(g["id"])
    raise BotError(f"user group {group!r} not found in this workspace")


@dataclass(frozen=True)
class Called:
    """Whom to call, three ways: ``ping`` (tokens that notify, in a new message), ``rich`` (the same
    tokens listed, for an edit, which notifies nobody) and ``quiet`` (plain names, for a first post
    that must not notify)."""

    ping: str = ""
    rich: str = ""
    quiet: str = ""


class Mentions:
    """Whom an approval request, its reminder and an escalation call, as Slack mention tokens.

    ``slack.mention`` when set (``[]``: nobody), else the approver group and the approvers. A group
    handle is resolved to its ID once (a mention needs the ID); if that fails, the handle is shown
    as plain text and asked again a minute later. ``quiet`` names the same people without notifying
    anyone: the card uses it when it is first posted (Slack notifies mentions in a new message, not
    in an edit).
    """

    def __init__(self, config: SlackConfig, client: AsyncWebClient) -> None:
        if config.mention is not None:
            self.entries = list(config.mention)
        else:
            group = (config.approver_group or "").strip()
            self.entries = ([group] if group else []) + list(config.approvers)
        self.client = client
        self._groups: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}

    async def _group(self, entry: str) -> str | None:
        handle = entry.lstrip("@")
        if handle in self._groups:
            return self._groups[handle]
        if time.monotonic() - self._failed_at.get(handle, -GROUP_TTL) < GROUP_TTL:
            return None
        try:
            self._groups[handle] = await group_id(self.client, handle)
        except (SlackApiError, BotError) as exc:
            log.warning("slack: cannot resolve user group %s for mentions: %s", handle, exc)
            self._failed_at[handle] = time.monotonic()
            return None
        return self._groups[handle]

    async def tokens(self) -> Called:
        """The mention tokens, and the same people named without a notification."""
        ping: list[str] = []
        quiet: list[str] = []
        users = 0
        for entry in self.entries:
            if entry.lstrip("@") in ("here", "channel"):
                ping.append(f"<!{entry.lstrip('@')}>")
                quiet.append(f"@{entry.lstrip('@')}")
            elif _USER_ID.match(entry):
                ping.append(f"<@{entry}>")
                users += 1
            else:
                gid = await self._group(entry)
                name = entry.lstrip("@") if not _GROUP_ID.match(entry) else "user group"
                ping.append(f"<!subteam^{gid}>" if gid else f"@{name}")
                quiet.append(f"@{name}")
        if users:
            quiet.append(f"{users} approver{'s' if users > 1 else ''}")
        return Called(" ".join(ping), ", ".join(ping), " or ".join(quiet))


class Approvers:
    """Who may approve: user IDs from the config, plus the members of one user group.

    The group may be given by ID (``S0123ABCD``) or handle (``redis-oncall``); its members are
    fetched with ``usergroups.users.list`` and cached for :data:`GROUP_TTL` seconds, so a busy
    incident does not hit Slack's rate limits and a removed member loses the right within a minute.
    """

    def __init__(
        self,
        config: SlackConfig,
        client: AsyncWebClient,
        ttl: float = GROUP_TTL,
        *,
        role: str = "approver",
        verb: str = "decide",
    ) -> None:
        users, group = config.approvers, config.approver_group
        if role == "silencer" and (config.silencers is not None or config.silencer_group):
            users, group = config.silencers or [], config.silencer_group
        else:
            role = "approver"  # silencers unset: the approvers may silence, and are named so
        self.users = frozenset(users)
        self.group = (group or "").strip().lstrip("@") or None
        self.role, self.verb = role, verb
        self.client = client
        self.ttl = ttl
        self._group_id: str | None = self.group if self.group and _GROUP_ID.match(self.group) else None
        self._members: frozenset[str] = frozenset()
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.users or self.group)

    async def _resolve_group(self) -> str:
        if self._group_id is None:
            assert self.group is not None
            self._group_id = await group_id(self.client, self.group)
        return self._group_id

    async def members(self) -> frozenset[str]:
        async with self._lock:
            if time.monotonic() - self._fetched > self.ttl:
                group_id = await self._resolve_group()
                resp = await self.client.usergroups_users_list(usergroup=group_id)
                self._members = frozenset(str(u) for u in resp.get("users") or [])
                self._fetched = time.monotonic()
            return self._members

    async def refusal(self, user_id: str) -> str | None:
        """None when ``user_id`` may approve, else the reason to show them."""
        if user_id in self.users:
            return None
        if not self.configured:
            if self.role != "approver":
                return f"nobody may {self.verb} from Slack: no approvers or {self.role}s are configured."
            return (
                "no approvers are configured (`slack.approvers` or `slack.approver_group` in the bot's"
                " config), so nobody can approve from Slack. Use `remediation-bot approve` instead."
            )
        if self.group:
            try:
                if user_id in await self.members():
                    return None
            except (SlackApiError, BotError) as exc:
                log.warning("cannot read %s group %s: %s", self.role, self.group, exc)
                return (
                    f"the bot could not check the {self.role} group right now ({exc}); try again in a minute."
                )
        group = f" or a member of the {self.role} group `{self.group}`" if self.group else ""
        ask = f"an {self.role}" if self.role[0] in "aeiou" else f"a {self.role}"
        if self.users:
            shown = sorted(self.users)[:5]
            ask = ", ".join(f"<@{u}>" for u in shown) + (
                f" or another {self.role}" if len(self.users) > 5 else ""
            )
            if self.group:
                ask += f" or someone in `{self.group}`"
        return f"you are not on the bot's {self.role} list{group}. Ask {ask} to {self.verb}."


@dataclass
class Click:
    """One Approve/Deny click, as Slack sent it."""

    user: str
    channel: str | None
    thread_ts: str | None
    value: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Click:
        action = (body.get("actions") or [{}])[0]
        container = body.get("container") or {}
        message = body.get("message") or {}
        return cls(
            user=str((body.get("user") or {}).get("id", "")),
            channel=(body.get("channel") or {}).get("id") or container.get("channel_id"),
            thread_ts=message.get("thread_ts") or container.get("thread_ts"),
            value=action.get("value"),
        )


class Decisions:
    """Turns clicks into runner decisions; one per process, shared by both buttons."""

    def __init__(
        self,
        approvers: Approvers,
        engine: Engine,
    ) -> None:
        self.approvers = approvers
        self.engine = engine

    async def handle(self, click: Click, approve: bool, client: AsyncWebClient) -> str:
        """Check and decide; tell the clicker (ephemeral) what happened. Returns what was said."""
        text = await self._decide(click, approve)
        if click.channel:
            try:
                kwargs: dict[str, Any] = {"thread_ts": click.thread_ts} if click.thread_ts else {}
                await client.chat_postEphemeral(channel=click.channel, user=click.user, text=text, **kwargs)
            except SlackApiError as exc:
                log.warning("could not answer %s: %s", click.user, exc)
        return text

    async def _decide(self, click: Click, approve: bool) -> str:
        verb = "approve" if approve else "deny"
        parsed = parse_button_value(click.value)
        if parsed is None:
            return ":warning: This button does not carry a valid approval. Nothing was changed."
        inc_id, ap_id, plan_hash = parsed
        try:
            actor = slack_actor(click.user)
        except IdentityError:
            return (
                ":warning: This click names no Slack user, so nobody can be held to it. Nothing was changed."
            )
        store = self.engine.store
        refusal = await self.approvers.refusal(click.user)
        if refusal is not None:
            await store.audit(
                "approval.refused",
                incident_id=inc_id,
                actor=actor.label,
                plan_hash=plan_hash,
                detail={"approval_id": ap_id, "approve": approve, "reason": "not an approver"},
            )
            return f":no_entry: Not allowed to {verb}: {refusal} Nothing was changed."
        try:
            ap = await store.get_approval(ap_id)
        except NotFound:
            return ":warning: This approval no longer exists. Nothing was changed."
        if ap.incident_id != inc_id:
            return ":warning: This button does not belong to that incident. Nothing was changed."
        if ap.state != ApprovalState.PENDING:
            return already_decided_text(str(ap.state), ap.decided_by, ap.decided_at)
        if ap.plan_hash != plan_hash:
            return (
                ":warning: This button is for a different plan than the one waiting for approval."
                " Use the newest approval request in the thread. Nothing was changed."
            )
        try:
            report = await self.engine.runner.decide(inc_id, actor, approve, approval_id=ap_id)
        except AlreadyDecided as exc:
            return already_decided_text(exc.state, exc.decided_by, exc.decided_at)
        except NotAllowed as exc:  # the approval rules: e.g. you asked for this action yourself
            return f":no_entry: Not allowed to {verb}: {mentionize(str(exc))}. Nothing was changed."
        except ApprovalError as exc:
            return f":warning: {mentionize(str(exc))}. Nothing more was changed."
        except BotError as exc:
            return f":warning: Could not {verb}: {mentionize(str(exc))}"
        icon = ":white_check_mark:" if report.executed else ":information_source:"
        return f"{icon} Incident #{inc_id}: {mentionize(report.message)}"
