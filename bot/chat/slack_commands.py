"""The ``/redis`` slash command: the runbook's checks from Slack, and actions through approvals.

Every subcommand is acknowledged at once (Slack gives three seconds) and answered through the
command's ``response_url`` when done, so a long memory report or a MONITOR sample never times out.
Read-only subcommands run the registered diagnostic steps (the same code as the playbooks) and
are open to anyone in the channel. Anything that changes data (``run`` of a playbook with actions,
``evict``) opens an incident whose actions wait for an approver's click, exactly like an alert.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.chat.slack_blocks import (
    Block,
    code,
    context,
    esc,
    mrkdwn,
    result_blocks,
    state_label,
    thread_link,
    when,
    who,
)
from bot.config import Config
from bot.engine import Engine
from bot.errors import BotError, StepError
from bot.identity import slack_actor
from bot.incidents import OPEN_STATES
from bot.oneshot import (
    EVICT_PREFIX,
    MANUAL_EVICT_PLAYBOOK,
    evict_playbook,
    is_target_name,
    resolve_target,
    run_step,
    start_incident,
    target_names,
)

if TYPE_CHECKING:
    from bot.chat.slack_silences import IncidentActions

log = logging.getLogger(__name__)

COMMAND = "/redis"
MONITOR_DEFAULT_S = 5.0
INCIDENTS_SHOWN = 10

Respond = Callable[..., Awaitable[Any]]

HELP = [
    ("health [target]", "PING and key figures: memory, hit ratio, clients, keys"),
    ("info [section] [target]", "one INFO section: memory, stats, clients, replication, persistence, …"),
    ("bigkeys [target]", "memory by key prefix and the biggest keys (the runbook's --bigkeys)"),
    ("slowlog [n] [target]", "the n slowest recent commands (default 10)"),
    ("monitor [seconds] [target]", "sample live traffic for a few seconds (at most 30), summarized"),
    ("incidents", "open and recent incidents and what each is waiting for"),
    ("run PLAYBOOK [target]", "run a playbook by hand; its actions still wait for approval"),
    ("evict PATTERN [target]", "delete a cache namespace such as `agent:*`, after approval"),
    ("silence ALERTNAME|INCIDENT DURATION [reason]", "silence that alert in Alertmanager (approvers)"),
    ("unsilence ID", "expire a silence the bot created"),
    ("help", "this list"),
]


class Usage(BotError):
    """The command was typed wrong; the message (Slack mrkdwn, user input escaped) says how to type it."""


@dataclass
class Request:
    """One ``/redis`` invocation."""

    user: str
    channel: str | None
    text: str
    words: list[str] = field(default_factory=list)

    @property
    def actor(self) -> str:
        """The verified identity key of who typed the command (the signed request's user id)."""
        return slack_actor(self.user).key

    @property
    def sub(self) -> str:
        return self.words[0].lower() if self.words else "help"

    @property
    def args(self) -> list[str]:
        return self.words[1:]


def parse(text: str, user: str, channel: str | None) -> Request:
    try:
        words = shlex.split(text or "")
    except ValueError:
        words = (text or "").split()
    return Request(user=user, channel=channel, text=text or "", words=words)


def help_blocks(config: Config, intro: str = "") -> tuple[str, list[Block]]:
    lines = "\n".join(f"`{COMMAND} {cmd}`: {esc(what)}" for cmd, what in HELP)
    targets = ", ".join(code(n) for n in target_names(config)) or "none without alert labels"
    blocks = [mrkdwn(f"{intro}*{COMMAND}: the Redis runbook from Slack*\n{lines}")]
    blocks.append(
        context(
            f"Targets: {targets}. Read-only commands are open to everyone here;"
            " anything that changes data waits for an approver."
        )
    )
    return f"{COMMAND} help", blocks


class Commands:
    """Runs ``/redis`` subcommands; the bolt listener acks, then hands the request here."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
    ) -> None:
        self.config = config
        self.engine = engine
        self._handlers: dict[str, Callable[[Request], Awaitable[tuple[str, list[Block]]]]] = {
            "health": self.health,
            "info": self.info,
            "bigkeys": self.bigkeys,
            "slowlog": self.slowlog,
            "monitor": self.monitor,
            "incidents": self.incidents,
            "run": self.run,
            "evict": self.evict,
            "silence": self.silences,
            "unsilence": self.silences,
        }
        self.incident_actions: IncidentActions | None = None
        """Silences and acknowledgements (set by the Slack wiring)."""

    def ack_text(self, req: Request) -> str | None:
        """The immediate answer; None when the subcommand is answered in full at once (help, typos)."""
        if req.sub not in self._handlers:
            return None
        if req.sub == "monitor":
            return f":hourglass_flowing_sand: Watching live traffic, results in a few seconds (`{esc(req.text)}`)…"
        return f":hourglass_flowing_sand: Working on `{COMMAND} {esc(req.text)}`…"

    def immediate(self, req: Request) -> tuple[str, list[Block]]:
        """Help, or the help with a note for an unknown subcommand."""
        intro = "" if req.sub == "help" else f":warning: Unknown subcommand {code(req.sub)}.\n\n"
        return help_blocks(self.config, intro)

    async def execute(self, req: Request, respond: Respond) -> None:
        """Run the subcommand and post its result (ephemeral when it failed)."""
        store = self.engine.store
        await store.audit(
            "slack.command",
            actor=req.actor,
            detail={"command": COMMAND, "text": req.text[:200], "channel": req.channel},
        )
        handler = self._handlers[req.sub]
        try:
            text, blocks = await handler(req)
        except Usage as exc:
            await respond(text=str(exc), blocks=[mrkdwn(f":warning: {exc}")], response_type="ephemeral")
            return
        except BotError as exc:
            await respond(
                text=str(exc),
                blocks=[mrkdwn(f":x: `{COMMAND} {esc(req.text)}` failed: {esc(exc)}")],
                response_type="ephemeral",
            )
            return
        await respond(text=text, blocks=blocks, response_type="in_channel", replace_original=False)

    async def silences(self, req: Request) -> tuple[str, list[Block]]:
        if self.incident_actions is None:
            raise Usage("silences are not available in this process")
        return await self.incident_actions.command(req.sub, req.args, req.user)

    # -- arguments ------------------------------------------------------------------------------

    def _split(self, req: Request, most: int, usage: str) -> tuple[list[str], str | None]:
        """Positional arguments and the optional trailing target name."""
        args = list(req.args)
        target = None
        if args and (len(args) > most or is_target_name(self.config, args[-1])):
            target = args.pop()
        if len(args) > most:
            raise Usage(f"usage: `{COMMAND} {usage}`")
        return args, target

    @staticmethod
    def _number(value: str, what: str, usage: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise Usage(f"{what} must be a number; usage: `{COMMAND} {esc(usage)}`")
        return number

    # -- read-only subcommands ------------------------------------------------------------------

    async def _one(
        self, req: Request, title: str, step: str, params: dict[str, Any], target: str | None
    ) -> tuple[str, list[Block]]:
        resolved = resolve_target(self.config, target, self.engine.pool)
        try:
            out = await run_step(self.config, resolved.target, step, params)
        finally:
            await resolved.release()
        heading = f"{title} on {resolved.name}"
        return f"{heading}: {out.summary}"[:300], [
            *result_blocks(heading, out.summary, out.details, status=out.status),
            context(f"`{COMMAND} {esc(req.text)}` asked by {who(req.actor)}"),
        ]

    async def health(self, req: Request) -> tuple[str, list[Block]]:
        """The runbook's health check (PING must answer PONG) and the figures worth a glance."""
        _, target = self._split(req, 0, "health [target]")
        resolved = resolve_target(self.config, target, self.engine.pool)
        t = resolved.target
        try:
            try:
                ping = await run_step(self.config, t, "redis.ping", {})
            except StepError as exc:
                text = f"Redis {resolved.name} is DOWN: {exc}"
                return text, [
                    mrkdwn(f":red_circle: *Redis {code(resolved.name)} does not answer PING*\n{esc(exc)}")
                ]
            lines = []
            worst = ping.status
            for section in ("memory", "stats", "clients", "keyspace"):
                try:
                    out = await run_step(self.config, t, "redis.info", {"section": section})
                except StepError as exc:
                    lines.append(f":x: {section}: {esc(exc)}")
                    continue
                icon = ":warning:" if out.status != "ok" else "•"
                worst = "warning" if out.status != "ok" else worst
                lines.append(f"{icon} {esc(out.summary)}")
        finally:
            await resolved.release()
        icon = ":large_green_circle:" if worst == "ok" else ":large_yellow_circle:"
        head = f"{icon} *Redis {code(resolved.name)} is up*: {esc(ping.summary)}"
        text = f"Redis {resolved.name} is up: {ping.summary}"
        return text[:300], [
            mrkdwn(head),
            mrkdwn("\n".join(lines)),
            context(f"`{COMMAND} {esc(req.text)}` asked by {who(req.actor)}"),
        ]

    async def info(self, req: Request) -> tuple[str, list[Block]]:
        args, target = self._split(req, 1, "info [section] [target]")
        section = args[0] if args else "memory"
        return await self._one(req, f"INFO {section}", "redis.info", {"section": section}, target)

    async def bigkeys(self, req: Request) -> tuple[str, list[Block]]:
        _, target = self._split(req, 0, "bigkeys [target]")
        return await self._one(req, "Memory report", "redis.memory_report", {"top": 10}, target)

    async def slowlog(self, req: Request) -> tuple[str, list[Block]]:
        usage = "slowlog [n] [target]"
        args, target = self._split(req, 1, usage)
        n = int(self._number(args[0], "n", usage)) if args else 10
        return await self._one(req, f"Slowlog (last {n})", "redis.slowlog", {"n": n}, target)

    async def monitor(self, req: Request) -> tuple[str, list[Block]]:
        usage = "monitor [seconds] [target]"
        args, target = self._split(req, 1, usage)
        seconds = self._number(args[0], "seconds", usage) if args else MONITOR_DEFAULT_S
        return await self._one(
            req, f"MONITOR sample ({seconds:g} s)", "redis.monitor_sample", {"seconds": seconds}, target
        )

    async def incidents(self, req: Request) -> tuple[str, list[Block]]:
        """Open and recent incidents; messages Slack missed while it was down are posted again."""
        store = self.engine.store
        runner = self.engine.runner
        rows = await store.list_incidents(limit=50)
        open_ = [i for i in rows if i.status in OPEN_STATES]
        shown = (open_ + [i for i in rows if i.status not in OPEN_STATES])[:INCIDENTS_SHOWN]
        if not shown:
            return "No incidents.", [mrkdwn(":sparkles: No incidents.")]
        reposted = 0
        for inc in open_:
            if not inc.chat_ref.get("ts"):
                await runner.notifier.incident_updated(inc)
            if inc.pending_step:
                ap = await store.get_approval(int(inc.pending_step["approval_id"]))
                if not ap.chat_ref.get("ts"):
                    await runner.notifier.approval_requested(await store.get_incident(inc.id), ap)
                    reposted += 1
        lines = []
        for inc in shown:
            if inc.chat_ref.get("ts") is None:
                inc = await store.get_incident(inc.id)
            icon, label = state_label(inc.status)
            link = thread_link(inc.chat_ref)
            name = f"<{link}|#{inc.id}>" if link else f"#{inc.id}"
            line = f"{icon} *{name}* {esc(inc.alertname)} on {code(inc.target or '-')}: {esc(label)}"
            if inc.pending_step:
                line += f", waiting for approval of {code(inc.pending_step['id'])}"
            line += f" · {when(inc.created_at)}"
            lines.append(line)
        blocks = [mrkdwn(f"*Incidents* ({len(open_)} open)\n" + "\n".join(lines))]
        if reposted:
            blocks.append(context(f"Posted {reposted} approval request(s) again that Slack had missed."))
        return f"{len(open_)} open incidents", blocks

    # -- subcommands that may change data (through the approval flow) ---------------------------

    def _channel(self) -> str:
        return f"<#{self.config.slack.channel}>" if self.config.slack.channel else "the incident channel"

    async def run(self, req: Request) -> tuple[str, list[Block]]:
        """A playbook by hand: diagnostics run now, actions wait for approval in the thread."""
        args, target = self._split(req, 1, "run PLAYBOOK [target]")
        playbooks = self.engine.playbooks
        if not args:
            names = ", ".join(code(p.name) for p in playbooks.playbooks)
            raise Usage(f"usage: `{COMMAND} run PLAYBOOK [target]`; playbooks: {names}")
        name = args[0]
        if name == MANUAL_EVICT_PLAYBOOK or name.startswith(EVICT_PREFIX) or playbooks.get(name) is None:
            names = ", ".join(code(p.name) for p in playbooks.playbooks)
            raise Usage(f"no playbook named {code(name)}; playbooks: {names}")
        return await self._start(req, name, target, f"playbook {code(name)}")

    async def evict(self, req: Request) -> tuple[str, list[Block]]:
        """The runbook's cache invalidation, as a plan that waits for an approver."""
        args, target = self._split(req, 1, "evict PATTERN [target]")
        if not args:
            raise Usage(f"usage: `{COMMAND} evict PATTERN [target]`, e.g. `{COMMAND} evict agent:*`")
        pattern = args[0]
        try:
            evict_playbook(pattern)
        except BotError as exc:
            raise Usage(f"refused pattern {code(pattern)}: {esc(exc)}") from None
        return await self._start(
            req, MANUAL_EVICT_PLAYBOOK, target, f"eviction of {code(pattern)}", params={"pattern": pattern}
        )

    async def _start(
        self, req: Request, playbook: str, target: str | None, what: str, params: dict[str, Any] | None = None
    ) -> tuple[str, list[Block]]:
        resolved = resolve_target(self.config, target, self.engine.pool)
        await resolved.release()
        inc_id = await start_incident(
            self.engine.store,
            self.engine.playbooks,
            playbook,
            resolved,
            requested_by=req.actor,
            source="slack",
            params=params,
        )
        self.engine.runner.submit(inc_id)
        text = f"Started incident #{inc_id}: {what} on {resolved.name}"
        body = (
            f":arrow_forward: *Incident #{inc_id}* started by {who(req.actor)}: {what} on {code(resolved.name)}.\n"
            f"Results follow in its thread in {self._channel()}; any action shows its exact plan and"
            " waits for an approver."
        )
        return text, [mrkdwn(body)]
