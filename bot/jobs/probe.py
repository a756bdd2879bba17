"""The health probe: PING every reachable target, and open, join or resolve RedisDown.

The health probe and Alertmanager's RedisDown share one incident per target. After ``failures``
failed PINGs in a row the probe opens RedisDown for the target through the same intake as
Alertmanager's alerts (source ``probe``, fingerprint ``probe:<target>``, startsAt = first failure),
unless a RedisDown for that target already fires: then it only notes its findings on that incident.
While the probe's incident fires, Alertmanager's RedisDown for the same target is recorded but merged
into it (see :meth:`bot.intake.Intake._merge_with_probe`). When PING answers again, the probe resolves
the incident it opened; an incident opened by Alertmanager is left for Alertmanager to resolve.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.exceptions import RedisError

from bot.alerts import Alert
from bot.config import Config, TargetConfig
from bot.formatting import format_duration
from bot.incidents import Incident
from bot.intake import PROBE_SOURCE, Intake, firing_incident
from bot.metrics import Metrics
from bot.redisconn import RedisTarget, describe_redis_error, redact_url
from bot.store import IngestItem, Store

log = logging.getLogger(__name__)


def probe_targets(config: Config, timeout: float) -> list[tuple[int, TargetConfig, RedisTarget]]:
    """The targets a job can reach without an alert: those whose URL needs no alert labels."""
    found = []
    for i, t in enumerate(config.targets):
        if t.label_names():
            log.info(
                "target %s is not probed: its URL is built from alert labels", t.name or redact_url(t.where)
            )
            continue
        found.append((i, t, t.resolve({}, timeout)))
    return found


@dataclass
class ProbeState:
    """What the probe knows about one target between runs."""

    failures: int = 0
    since: datetime | None = None
    error: str = ""
    incident_id: int | None = None
    owned: bool = False
    """True when the probe opened the incident itself (and so resolves it on recovery)."""
    alert: Alert | None = None
    swept: bool = False


class HealthProbe:
    """PING every reachable target; open, join or resolve RedisDown (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        intake: Intake,
        metrics: Metrics,
        targets: list[tuple[int, TargetConfig, RedisTarget]] | None = None,
    ) -> None:
        self.cfg = config.scheduler.health_probe
        self.intake = intake
        self.store: Store = intake.store
        self.metrics = metrics
        # Shared clients (the engine's pool) are the owner's to close; our own we close ourselves.
        self._owned = targets is None
        self.targets = targets if targets is not None else probe_targets(config, self.cfg.timeout)
        self.state = {rt.name: ProbeState() for _, _, rt in self.targets}

    async def run(self) -> None:
        results = await asyncio.gather(
            *(self.check(i, t, rt) for i, t, rt in self.targets), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def close(self) -> None:
        if self._owned:
            for _, _, rt in self.targets:
                await rt.close()

    async def ping(self, rt: RedisTarget) -> str | None:
        """None when PING answered in time, else why not (for the incident's description)."""
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await rt.client.ping()
        except TimeoutError:
            return f"no answer to PING within {format_duration(self.cfg.timeout)}"
        except RedisError as exc:
            return str(describe_redis_error(exc, rt.name))
        except OSError as exc:
            return f"cannot reach Redis {rt.name}: {exc}"
        return None

    async def check(self, index: int, tcfg: TargetConfig, rt: RedisTarget) -> None:
        st = self.state[rt.name]
        error = await self.ping(rt)
        self.metrics.probe_up.labels(rt.name).set(0 if error else 1)
        if error is None:
            if not st.swept:
                await self._sweep(index, rt)
                st.swept = True
            if st.incident_id is not None or st.alert is not None:
                await self._recovered(index, rt, st)
            if st.failures:
                log.info("health probe: %s answers PING again", rt.name, extra={"target": rt.name})
            st.failures, st.since, st.error = 0, None, ""
            return
        self.metrics.call_error("redis")
        st.failures += 1
        st.error = error
        st.since = st.since or datetime.now(UTC)
        if st.failures in (1, self.cfg.failures):
            log.warning(
                "health probe: %s: %s (%d in a row)", rt.name, error, st.failures, extra={"target": rt.name}
            )
        if st.failures >= self.cfg.failures and st.incident_id is None and st.alert is None:
            await self._down(index, tcfg, rt, st)

    def _alert(self, tcfg: TargetConfig, rt: RedisTarget, st: ProbeState) -> Alert:
        labels = {
            **tcfg.match,
            "alertname": self.cfg.alertname,
            "severity": "critical",
            "bot_target": rt.name,
            "bot_probe": "true",
        }
        return Alert.model_validate(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "summary": f"Redis {rt.name} did not answer {st.failures} PINGs in a row (the bot's health probe)",
                    "description": st.error,
                },
                "startsAt": (st.since or datetime.now(UTC)).isoformat(),
                "fingerprint": f"probe:{rt.name}",
            }
        )

    @staticmethod
    def _alert_of(inc: Incident) -> Alert:
        """The alert behind a stored incident, with the same identity (fingerprint, startsAt)."""
        return Alert.model_validate(
            {
                "status": "firing",
                "labels": inc.labels or {"alertname": inc.alertname},
                "annotations": inc.annotations,
                "startsAt": inc.starts_at,
                "fingerprint": inc.fingerprint,
            }
        )

    def _item(self, alert: Alert, index: int, rt: RedisTarget) -> IngestItem:
        pb = self.intake.playbooks.match(alert.labels)
        return IngestItem(alert, pb.name if pb else None, rt.name, index, "", PROBE_SOURCE)

    async def _down(self, index: int, tcfg: TargetConfig, rt: RedisTarget, st: ProbeState) -> None:
        existing = await firing_incident(self.store, rt.name, self.cfg.alertname)
        if existing is not None:
            st.incident_id = existing.id
            st.owned = existing.source == PROBE_SOURCE
            if st.owned:
                st.alert = self._alert_of(existing)  # ours, from before a restart: adopt it
                return
            await self.store.audit(
                "probe.down",
                incident_id=existing.id,
                target=rt.name,
                actor=PROBE_SOURCE,
                detail={"failures": st.failures, "error": st.error},
            )
            log.warning(
                "health probe: %s is down; joined incident %s instead of opening another",
                rt.name,
                existing.id,
                extra={"incident": existing.id, "target": rt.name},
            )
            return
        alert = self._alert(tcfg, rt, st)
        result = await self.intake.receive_items([self._item(alert, index, rt)])
        st.alert, st.owned = alert, True
        st.incident_id = result.new[0] if result.new else None
        log.warning(
            "health probe: opened %s for %s (incident %s)",
            self.cfg.alertname,
            rt.name,
            st.incident_id,
            extra={"incident": st.incident_id, "target": rt.name},
        )

    async def _resolve(self, alert: Alert, index: int, rt: RedisTarget) -> None:
        resolved = alert.model_copy(update={"status": "resolved", "ends_at": datetime.now(UTC)})
        await self.intake.receive_items([self._item(resolved, index, rt)])

    async def _recovered(self, index: int, rt: RedisTarget, st: ProbeState) -> None:
        if st.owned and st.alert is not None:
            await self._resolve(st.alert, index, rt)
        elif st.incident_id is not None:
            await self.store.audit(
                "probe.recovered", incident_id=st.incident_id, target=rt.name, actor=PROBE_SOURCE
            )
        st.incident_id, st.owned, st.alert = None, False, None

    async def _sweep(self, index: int, rt: RedisTarget) -> None:
        """Resolve probe incidents a previous run left firing (the bot restarted while Redis was down)."""
        for _ in range(20):
            inc = await firing_incident(self.store, rt.name, self.cfg.alertname, source=PROBE_SOURCE)
            if inc is None:
                return
            log.info(
                "health probe: %s is up; resolving incident %s left from before a restart", rt.name, inc.id
            )
            await self._resolve(self._alert_of(inc), index, rt)
