"""Guardrails: the kill switch and the circuit breaker, as rules over what the store records.

The store only answers questions (the kill-switch setting, how many actions ran on a target, how
many failed in a row); whether that stops an action is decided here, in one place, for the gate
(before asking), the decision (before recording it), the claim (before running) and a running
action (before each batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bot.config import Config
from bot.metrics import Metrics
from bot.store import Store

KILL_SWITCH = "kill_switch"
HOUR = 3600.0


@dataclass(frozen=True)
class BreakerStatus:
    target: str
    actions_last_hour: int
    limit_per_hour: int
    failures_in_a_row: int
    pause_after_failures: int

    @property
    def open_reason(self) -> str | None:
        if self.actions_last_hour >= self.limit_per_hour:
            return (
                f"circuit breaker: {self.actions_last_hour} actions on {self.target} in the last hour (limit"
                f" {self.limit_per_hour}); a human should look before the bot does more"
                f" (`remediation-bot breaker reset {self.target}` after looking)"
            )
        if self.failures_in_a_row >= self.pause_after_failures:
            return (
                f"circuit breaker: the last {self.failures_in_a_row} actions on {self.target} failed; actions are"
                f" paused until someone runs `remediation-bot breaker reset {self.target}`"
            )
        return None


class Guardrails:
    """Why no action may run on a target now, or None."""

    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics

    async def kill_switch(self) -> str | None:
        if self.config.guardrails.kill_switch:
            return "the kill switch is on in the config (guardrails.kill_switch): no actions run"
        switch = await self.store.get_setting(KILL_SWITCH)
        if switch:
            return f"the kill switch is on ({switch}): no actions run; `remediation-bot kill-switch off` lifts it"
        return None

    async def breaker(self, target: str) -> BreakerStatus:
        g = self.config.guardrails
        count, failures = await self.store.action_history(target, time.time() - HOUR)
        return BreakerStatus(target, count, g.max_actions_per_hour, failures, g.pause_after_failures)

    async def reason(self, target: str) -> str | None:
        """Kill switch first (it stops everything), then the target's breaker."""
        reason = await self.kill_switch() or (await self.breaker(target)).open_reason
        self.metrics.breaker(target, reason is not None)
        return reason

    async def reset_breaker(self, target: str, actor: str, reason: str) -> BreakerStatus:
        """Close the breaker of ``target``: counts start again from now (audited, append-only)."""
        await self.store.audit(
            "breaker.reset", actor=actor, target=target, detail={"reason": reason, "ok": True}
        )
        return await self.breaker(target)
