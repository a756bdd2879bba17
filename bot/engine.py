"""The one place that builds the system: store, runner (with its Redis and Prometheus clients) and
intake, opened together and closed in reverse order.

``serve`` (through the aiohttp app's cleanup context), every CLI command, the demo and the tests
use it, so there is one wiring to read and to get right. The engine imports no chat or web code:
chat backends get the engine (never the concrete store) and act through it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.config import Config
from bot.intake import Intake
from bot.metrics import Metrics
from bot.notifier import Notifier
from bot.playbook import PlaybookSet, load_playbooks
from bot.prom import PromClient
from bot.redisconn import RedisTarget
from bot.runner import Runner, prometheus_client
from bot.store import Store, open_store
from bot.target_pool import TargetPool

log = logging.getLogger(__name__)


class Engine:
    """Build with a config (and optionally playbooks and a notifier), then ``async with engine:``.

    ``notifier`` may be set after construction and before the engine starts: a chat backend that
    needs the engine to handle clicks is also the engine's notifier.
    """

    def __init__(
        self,
        config: Config,
        playbooks: PlaybookSet | None = None,
        notifier: Notifier | None = None,
        *,
        metrics: Metrics | None = None,
        workers: bool = True,
        chat: str = "chat",
        ad_hoc_targets: dict[str, RedisTarget] | None = None,
    ) -> None:
        self.config = config
        self.playbooks = playbooks if playbooks is not None else load_playbooks(config.playbooks)
        self.notifier = notifier
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.chat = chat
        self.ad_hoc_targets = ad_hoc_targets
        self._store: Store | None = None
        self._runner: Runner | None = None
        self._intake: Intake | None = None
        self.pool: TargetPool | None = None
        """One Redis client pool per target, shared by runner, scheduler and slash commands."""
        self.prometheus: PromClient | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the engine is not started")
        return self._store

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            raise RuntimeError("the engine is not started")
        return self._runner

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the engine is not started")
        return self._intake

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self) -> Engine:
        self._store = await open_store(self.config)
        try:
            self.pool = TargetPool(self.config, self.ad_hoc_targets)
            self.prometheus = prometheus_client(self.config, self.metrics)
            self._runner = Runner(
                self.config,
                self.playbooks,
                self._store,
                self.notifier,
                metrics=self.metrics,
                chat=self.chat,
                pool=self.pool,
                prometheus=self.prometheus,
            )
            self._intake = Intake(self.config, self.playbooks, self._store, self._runner)
            if self.workers:
                await self._runner.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.stop()
            await self._runner.notifier.close()
            self._runner = None
        if self.prometheus is not None:
            await self.prometheus.close()
            self.prometheus = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        self._intake = None

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: Config,
        notifier: Notifier | None = None,
        *,
        playbooks: PlaybookSet | None = None,
        **kw: Any,
    ) -> AsyncIterator[Engine]:
        engine = cls(config, playbooks, notifier, **kw)
        async with engine:
            yield engine
