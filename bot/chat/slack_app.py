"""Slack wiring: settings from the environment, the bolt ``AsyncApp``, its HTTP endpoint, Socket Mode.

HTTP mode mounts bolt on the bot's own aiohttp app at ``POST /slack/events`` (bolt verifies every
request's signature and its 5-minute window). Socket Mode, chosen when an app-level token is set,
needs no public URL: the bot dials out to Slack. Either way every click and command is acknowledged
at once and the work runs afterwards in the runner's background tasks, so Slack's 3-second limit
never cuts an action short and a shutdown cancels what is still running.

Without ``SLACK_BOT_TOKEN`` none of this is loaded: the console notifier and CLI approvals remain.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.slack import SlackNotifier
from bot.chat.slack_approvals import Approvers, Click, Decisions
from bot.chat.slack_blocks import APPROVE_ACTION, DENY_ACTION, mrkdwn
from bot.chat.slack_card import ACK_ACTION, SILENCE_ACTION
from bot.chat.slack_commands import COMMAND, Commands, parse
from bot.chat.slack_settings import SlackSettings
from bot.chat.slack_silences import IncidentActions
from bot.config import Config
from bot.engine import Engine
from bot.errors import ConfigError, Problem

log = logging.getLogger(__name__)

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def web_client(settings: SlackSettings) -> AsyncWebClient:
    """The Web API client: every call has a timeout; the base URL honours ``SLACK_API_URL``.

    A rate-limited call (HTTP 429) is retried once after Slack's Retry-After. The notifier also
    queues and paces its writes per channel (:mod:`bot.chat.slack_outbox`), so a burst of incidents
    stays under the limit instead of leaning on this retry.
    """
    kwargs: dict[str, Any] = {"token": settings.bot_token, "timeout": max(1, settings.timeout)}
    if settings.api_url:
        kwargs["base_url"] = settings.api_url.rstrip("/") + "/"
    client = AsyncWebClient(**kwargs)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    return client


def check_config(config: Config) -> None:
    if not config.slack.channel:
        raise ConfigError(
            [
                Problem(
                    str(config.source or "config"),
                    "slack.channel",
                    "required when SLACK_BOT_TOKEN is set: the channel ID (C…) where incidents are posted",
                )
            ]
        )


class SlackWiring:
    """Everything Slack for one service: notifier, listeners, HTTP endpoint and Socket Mode.

    Built by :func:`bot.app.create_app` before the store exists, hence the getters; the bolt app
    and the Socket Mode connection live inside :meth:`lifetime` (an aiohttp cleanup context).
    """

    def __init__(
        self,
        config: Config,
        settings: SlackSettings,
        engine: Engine,
    ) -> None:
        check_config(config)
        self.config = config
        self.settings = settings
        self.client = web_client(settings)
        self.engine = engine
        self.notifier = SlackNotifier(self.client, config.slack, engine)
        self.approvers = Approvers(config.slack, self.client)
        self.decisions = Decisions(self.approvers, engine)
        self.commands = Commands(config, engine)
        self.incident_actions = IncidentActions(config, engine, self.client, self.notifier)
        self.commands.incident_actions = self.incident_actions
        self.bolt: AsyncApp | None = None
        self.socket: AsyncSocketModeHandler | None = None

    # -- bolt -----------------------------------------------------------------------------------

    def build(self) -> AsyncApp:
        app = AsyncApp(
            name="remediation-bot",
            client=self.client,
            signing_secret=self.settings.signing_secret,
            request_verification_enabled=bool(self.settings.signing_secret),
            process_before_response=False,
            logger=log,
        )
        app.action(APPROVE_ACTION)(self.on_approve)
        app.action(DENY_ACTION)(self.on_deny)
        app.action(ACK_ACTION)(self.on_incident_button)
        app.action(re.compile(f"^{SILENCE_ACTION}_"))(self.on_incident_button)
        app.command(COMMAND)(self.on_command)
        return app

    def _background(self, work: Awaitable[None]) -> None:
        self.engine.runner.spawn(work)

    async def on_approve(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        self._background(self._click(body, True, client))

    async def on_deny(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        self._background(self._click(body, False, client))

    async def on_incident_button(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """Acknowledge / Silence on the card: answered at once, done in the background."""
        await ack()

        async def work() -> None:
            try:
                await self.incident_actions.on_click(body, client)
            except Exception:
                log.exception("slack: incident button failed")

        self._background(work())

    async def _click(self, body: dict[str, Any], approve: bool, client: AsyncWebClient) -> None:
        click = Click.from_body(body)
        try:
            await self.decisions.handle(click, approve, client)
        except Exception:
            log.exception("slack: %s click by %s failed", "approve" if approve else "deny", click.user)
            if click.channel:
                await client.chat_postEphemeral(
                    channel=click.channel,
                    user=click.user,
                    text=":x: The bot hit an internal error handling your click; see its log."
                    " Check the thread before clicking again.",
                )

    async def on_command(self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        req = parse(str(command.get("text", "")), str(command.get("user_id", "")), command.get("channel_id"))
        quick = self.commands.ack_text(req)
        if quick is None:
            text, blocks = self.commands.immediate(req)
            await ack(text=text, blocks=blocks)
            return
        await ack(text=quick)

        async def work() -> None:
            try:
                await self.commands.execute(req, respond)
            except Exception:
                log.exception("slack: %s %s failed", COMMAND, req.text)
                await respond(
                    text="internal error",
                    blocks=[mrkdwn(":x: The bot hit an internal error on this command; see its log.")],
                    response_type="ephemeral",
                )

        self._background(work())

    # -- HTTP mode ------------------------------------------------------------------------------

    async def handle_events(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: signature checks by bolt, after a guard bolt lacks.

        Bolt turns a non-numeric ``X-Slack-Request-Timestamp`` into an exception (a 500); such a
        request is simply not from Slack, so it gets the same 401 as a bad signature.
        """
        if self.bolt is None:
            return web.json_response({"error": "Slack is starting or stopping"}, status=503)
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        body = await request.read()
        valid_text = True
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            valid_text = False
        if not _TIMESTAMP.fullmatch(stamp) or not request.headers.get("X-Slack-Signature") or not valid_text:
            log.info("slack: refused a request without a valid signature header from %s", request.remote)
            return web.json_response({"error": "invalid request"}, status=401)
        bolt_resp = await self.bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_resp)

    # -- lifetime -------------------------------------------------------------------------------

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """Build bolt, and in Socket Mode connect in the background (Slack down never blocks start-up)."""
        self.bolt = self.build()
        try:
            armed = await self.notifier.rearm_reminders()
            if armed:
                log.info("slack: %d approval reminder(s) re-armed after the restart", armed)
        except Exception as exc:  # reminders are a courtesy; start-up goes on without them
            log.warning("slack: cannot re-arm approval reminders: %s", exc)
        task: asyncio.Task[None] | None = None
        if self.settings.app_token:
            self.socket = AsyncSocketModeHandler(self.bolt, self.settings.app_token, web_client=self.client)
            task = asyncio.create_task(self._connect(self.socket), name="slack-socket-mode")
        log.info("slack: incidents go to %s; receiving %s", self.config.slack.channel, self.settings.modes)
        try:
            yield
        finally:
            if self.socket is not None:
                await self.socket.close_async()  # type: ignore[no-untyped-call]
                self.socket = None
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self.bolt = None

    @staticmethod
    async def _connect(handler: AsyncSocketModeHandler) -> None:
        try:
            await handler.connect_async()  # type: ignore[no-untyped-call]
        except Exception:
            log.exception("slack: Socket Mode connection failed")
