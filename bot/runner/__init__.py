"""Runs playbooks for incidents: the loop (:mod:`.core`), the gate (:mod:`.gate`), decisions
(:mod:`.decide`), execution (:mod:`.execute`) and the guardrails (:mod:`.guardrails`)."""

from __future__ import annotations

from typing import Any

from bot.config import Config
from bot.metrics import Metrics
from bot.notifier import NullNotifier, SafeNotifier
from bot.playbook import PlaybookSet
from bot.prom import PromClient
from bot.redisconn import RedisTarget
from bot.runner.core import FAILED_STATUSES
from bot.runner.decide import DecisionReport
from bot.runner.execute import ExecuteMixin, plan_drift
from bot.runner.guardrails import KILL_SWITCH, BreakerStatus, Guardrails
from bot.store import Store
from bot.target_pool import TargetPool


def prometheus_client(config: Config, metrics: Metrics) -> PromClient | None:
    """One Prometheus client for the process (runner, scheduler, slash commands), or None."""
    if config.prometheus is None:
        return None
    p = config.prometheus
    return PromClient.from_env(
        p.url,
        timeout=p.timeout,
        selector=p.selector,
        verify_tls=p.verify_tls,
        on_error=lambda: metrics.call_error("prometheus"),
    )


class Runner(ExecuteMixin):
    """Carries incidents through their playbooks (see the modules of this package)."""

    def __init__(
        self,
        config: Config,
        playbooks: PlaybookSet,
        store: Store,
        notifier: Any = None,
        *,
        ad_hoc_targets: dict[str, RedisTarget] | None = None,
        metrics: Metrics | None = None,
        prometheus: PromClient | None = None,
        pool: TargetPool | None = None,
        chat: str = "chat",
    ) -> None:
        metrics = metrics or Metrics()
        self._own_prometheus = prometheus is None
        self._own_pool = pool is None
        safe = SafeNotifier(notifier or NullNotifier(), on_failure=lambda _name: metrics.call_error(chat))
        super().__init__(
            config,
            playbooks,
            store,
            safe,
            metrics=metrics,
            prometheus=prometheus if prometheus is not None else prometheus_client(config, metrics),
            pool=pool if pool is not None else TargetPool(config, ad_hoc_targets),
        )

    async def stop(self) -> None:
        await super().stop()
        if self._own_prometheus and self.prometheus is not None:
            await self.prometheus.close()
        if self._own_pool:
            await self.pool.close()


__all__ = [
    "FAILED_STATUSES",
    "KILL_SWITCH",
    "BreakerStatus",
    "DecisionReport",
    "Guardrails",
    "Runner",
    "plan_drift",
]
