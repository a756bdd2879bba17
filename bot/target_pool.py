"""One Redis client pool per target for the whole process: runner, scheduler jobs and slash
commands share it, so a busy incident does not open a connection pool per step, per job and per
command, and closing the engine closes every connection once.

Targets are keyed by their resolved URL and role (diagnostics or actions): a templated target
resolves to a different Redis per alert, and ``action_url`` may carry other credentials.
"""

from __future__ import annotations

from bot.config import Config, TargetConfig
from bot.redisconn import RedisTarget


class TargetPool:
    def __init__(self, config: Config, ad_hoc: dict[str, RedisTarget] | None = None) -> None:
        self.config = config
        self._clients: dict[str, RedisTarget] = {}
        self._ad_hoc: dict[str, RedisTarget] = dict(ad_hoc or {})

    def get(self, index: int, labels: dict[str, str] | None = None, *, action: bool = False) -> RedisTarget:
        """The target ``targets[index]`` resolved for ``labels`` (raises ``TargetError`` and
        ``TargetRefused`` as resolution does: before any client exists)."""
        t = self.config.targets[index].resolve(labels or {}, self.config.runner.redis_timeout, action=action)
        key = f"{'action' if action else 'read'}:{t.url}"
        return self._clients.setdefault(key, t)

    def ad_hoc(self, name: str) -> RedisTarget | None:
        """A hand-started run's target that is not in the config (``run --target redis://...``)."""
        return self._ad_hoc.get(name)

    def fixed(self) -> list[tuple[int, TargetConfig, RedisTarget]]:
        """The targets a job can reach without an alert: those whose URL needs no alert labels."""
        return [(i, t, self.get(i)) for i, t in enumerate(self.config.targets) if not t.label_names()]

    async def close(self) -> None:
        for t in [*self._clients.values(), *self._ad_hoc.values()]:
            await t.close()
        self._clients.clear()
        self._ad_hoc.clear()
