"""The service: an aiohttp application wiring the store, runner, intake and HTTP routes.

Every client's lifetime is an ``app.cleanup_ctx`` entry, so start-up and shutdown happen in order and
tests can build the same app with :func:`create_app` and a notifier of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from bot.config import Config
from bot.errors import StoreError
from bot.intake import Intake
from bot.notifier import Notifier
from bot.playbook import PlaybookSet, load_playbooks
from bot.runner import Runner
from bot.store import Store
from bot.webhook import INTAKE, MAX_BODY, WEBHOOK_TOKEN, handle_alerts, never_500

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
RUNNER = web.AppKey("runner", Runner)
PLAYBOOKS = web.AppKey("playbooks", PlaybookSet)


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


def create_app(
    config: Config,
    *,
    notifier: Notifier | None = None,
    playbooks: PlaybookSet | None = None,
    webhook_token: str | None = None,
) -> web.Application:
    """Build the service. ``webhook_token`` defaults to ``$BOT_WEBHOOK_TOKEN`` (empty: no auth)."""
    pbs = playbooks if playbooks is not None else load_playbooks(config.playbooks)
    limit = config.server.max_body_bytes
    app = web.Application(client_max_size=limit, middlewares=[never_500])
    app[CONFIG] = config
    app[PLAYBOOKS] = pbs
    app[MAX_BODY] = limit
    app[WEBHOOK_TOKEN] = (
        webhook_token if webhook_token is not None else os.environ.get("BOT_WEBHOOK_TOKEN", "")
    )

    async def engine(app: web.Application) -> AsyncIterator[None]:
        store = await Store(config.state_file).open()
        runner = Runner(config, pbs, store, notifier)
        app[STORE] = store
        app[RUNNER] = runner
        app[INTAKE] = Intake(config, pbs, store, runner)
        await runner.start()
        log.info(
            "ready: %d playbooks, %d targets, state in %s", len(pbs), len(config.targets), config.state_file
        )
        yield
        await runner.stop()
        await runner.notifier.close()
        await store.close()

    app.cleanup_ctx.append(engine)
    app.router.add_post("/alerts", handle_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
