"""The service: an aiohttp application wiring the store, runner, intake and HTTP routes.

Every client's lifetime is an ``app.cleanup_ctx`` entry, so start-up and shutdown happen in order and
tests can build the same app with :func:`create_app` and a notifier of their own.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from bot.chat.slack_settings import SlackSettings
from bot.config import Config
from bot.engine import Engine
from bot.errors import StoreError
from bot.metrics import Metrics
from bot.notifier import Notifier
from bot.playbook import PlaybookSet, load_playbooks
from bot.runner import Runner
from bot.scheduler import Scheduler
from bot.store import Store
from bot.web.links import LinksPages, PageLinks
from bot.web.routes import PAGE_STORE, add_pages
from bot.webhook import BODY_TIMEOUT, INTAKE, MAX_BODY, WEBHOOK_TOKEN, handle_alerts, never_500

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
ENGINE = web.AppKey("engine", Engine)
STORE = web.AppKey("store", Store)
RUNNER = web.AppKey("runner", Runner)
PLAYBOOKS = web.AppKey("playbooks", PlaybookSet)
METRICS = web.AppKey("metrics", Metrics)
SCHEDULER = web.AppKey("scheduler", Scheduler)
"""The running scheduler; absent when ``scheduler.enabled`` is false."""


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: config loaded and the store answers."""
    try:
        await request.app[STORE].ping()
    except StoreError as exc:
        return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
    return web.json_response({"status": "ok", "playbooks": len(request.app[PLAYBOOKS])})


async def metrics_view(request: web.Request) -> web.Response:
    """The bot's own metrics in Prometheus' text format (incident counts read from the store)."""
    m = request.app[METRICS]
    try:
        await m.refresh_incidents(request.app[STORE])
    except StoreError as exc:
        log.warning("metrics: cannot count incidents: %s", exc)
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


def tune_runtime() -> None:
    """Call once the service is built: the objects alive now live as long as the process, so keep
    them out of the garbage collector's full passes, which otherwise stall the webhook 15-40 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def create_app(
    config: Config,
    *,
    notifier: Notifier | None = None,
    playbooks: PlaybookSet | None = None,
    webhook_token: str | None = None,
    slack: SlackSettings | None = None,
    listen: str | None = None,
) -> web.Application:
    """Build the service. ``webhook_token`` defaults to ``$BOT_WEBHOOK_TOKEN`` (empty: no auth).

    ``slack`` defaults to the ``SLACK_*`` environment; when set, Slack is the notifier (unless
    ``notifier`` is given) and ``POST /slack/events`` / Socket Mode receive clicks and commands.
    ``listen`` (``http://host:port``) is the base of the incident pages' links when
    ``ui.public_url`` is unset.
    """
    pbs = playbooks if playbooks is not None else load_playbooks(config.playbooks)
    slack = slack if slack is not None else SlackSettings.from_env()
    metrics = Metrics()
    engine = Engine(config, pbs, notifier, metrics=metrics, chat="slack" if slack is not None else "chat")
    slack_wiring = None
    if slack is not None:
        from bot.chat.slack_app import SlackWiring
        from bot.oneshot import with_adhoc_playbooks

        engine.playbooks = with_adhoc_playbooks(pbs)  # so `/redis evict` incidents resolve their playbook
        slack_wiring = SlackWiring(config, slack, engine)
        engine.notifier = notifier or slack_wiring.notifier
    links = PageLinks(config, lambda: engine.store, listen=listen)
    for chat in (notifier, slack_wiring.notifier if slack_wiring is not None else None):
        if isinstance(chat, LinksPages):
            chat.page_links = links  # the cards and console blocks link the incident page
    limit = config.server.max_body_bytes
    app = web.Application(client_max_size=limit, middlewares=[never_500])
    app[CONFIG] = config
    app[ENGINE] = engine
    app[PLAYBOOKS] = engine.playbooks
    app[MAX_BODY] = limit
    app[BODY_TIMEOUT] = config.server.body_timeout
    app[METRICS] = metrics
    app[WEBHOOK_TOKEN] = (
        webhook_token if webhook_token is not None else os.environ.get("BOT_WEBHOOK_TOKEN", "")
    )

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        async with engine:
            app[STORE] = engine.store
            app[PAGE_STORE] = engine.store
            app[RUNNER] = engine.runner
            app[INTAKE] = engine.intake
            log.info(
                "ready: %d playbooks, %d targets, state in %s",
                len(engine.playbooks),
                len(config.targets),
                config.state_location,
            )
            yield

    app.cleanup_ctx.append(lifetime)
    if slack_wiring is not None:
        app.cleanup_ctx.append(slack_wiring.lifetime)
        if slack_wiring.settings.signing_secret:
            app.router.add_post("/slack/events", slack_wiring.handle_events)
    if config.scheduler.enabled:
        app.cleanup_ctx.append(scheduling)
    app.router.add_post("/alerts", handle_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    add_pages(app, config, links)
    return app


async def scheduling(app: web.Application) -> AsyncIterator[None]:
    """The scheduled jobs (health probe, approval expiry, backups, digest), after the engine is up."""
    scheduler = Scheduler(app[CONFIG], app[RUNNER], app[INTAKE])
    app[SCHEDULER] = scheduler
    await scheduler.start()
    yield
    await scheduler.stop()
