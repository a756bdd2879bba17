"""The digest: incidents, actions and approvals of the last period, and each target's figures."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime

from bot.config import TargetConfig
from bot.errors import StepError
from bot.formatting import format_duration, human_bytes
from bot.incidents import OPEN_STATES
from bot.prom import PromClient, PrometheusError, render
from bot.redisconn import RedisTarget, redis_errors
from bot.store import Store

log = logging.getLogger(__name__)


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _period(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds % 3600 == 0 else format_duration(seconds)


async def _target_line(tcfg: TargetConfig, rt: RedisTarget, prom: PromClient | None, period: float) -> str:
    """Hit rate and memory peak of one target: over the period from Prometheus when it can select the
    target's series, else what Redis itself counts (since its last restart or stats reset)."""
    if prom is not None:
        try:
            sel = render("{{ selector }}", tcfg.match, prom.selector or "")
            w = f"{int(period)}s"
            hits, misses, peak, limit = await prom.values(
                [
                    f"sum(increase(redis_keyspace_hits_total{sel}[{w}]))",
                    f"sum(increase(redis_keyspace_misses_total{sel}[{w}]))",
                    f"max(max_over_time(redis_memory_used_bytes{sel}[{w}]))",
                    f"max(redis_memory_max_bytes{sel})",
                ]
            )
            if peak is not None:
                rate = (
                    f"{hits / (hits + misses):.1%}"
                    if hits is not None and misses and hits + misses > 0
                    else "n/a"
                )
                return _figures(rt.name, rate, peak, limit, f"Prometheus, last {_period(period)}")
        except PrometheusError as exc:
            log.info("digest: Prometheus figures for %s unavailable: %s", rt.name, exc)
    try:
        async with redis_errors(rt.name):
            stats = await rt.client.info("stats")
            memory = await rt.client.info("memory")
    except StepError as exc:
        return f"{rt.name}: unavailable ({exc})"
    hits, misses = int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0))
    rate = f"{hits / (hits + misses):.1%}" if hits + misses else "n/a (no lookups)"
    peak = int(memory.get("used_memory_peak", 0))
    return _figures(rt.name, rate, peak, int(memory.get("maxmemory", 0)), "Redis, since its start")


def _figures(name: str, rate: str, peak: float, limit: float | None, source: str) -> str:
    of = f" of {human_bytes(limit)}" if limit else ""
    return f"{name}: hit rate {rate}, memory peak {human_bytes(peak)}{of} ({source})"


async def digest_text(
    store: Store,
    targets: list[tuple[int, TargetConfig, RedisTarget]],
    prom: PromClient | None,
    period: float,
    now: float | None = None,
) -> str:
    """The digest: incidents, actions and approvals of the last ``period``, and each target's figures."""
    now = time.time() if now is None else now
    since = now - period
    incidents = [i for i in await store.list_incidents(limit=5000, steps=False) if _ts(i.created_at) >= since]
    audit = [e for e in await store.list_audit(limit=50_000) if _ts(e.ts) >= since]
    kinds = Counter(e.kind for e in audit)
    actions = [e for e in audit if e.kind == "action.executed"]
    ok = sum(1 for e in actions if e.detail.get("ok"))
    deleted = sum(int(e.detail.get("keys_affected") or 0) for e in actions)
    decided = Counter(str(e.detail.get("state")) for e in audit if e.kind == "approval.decided")
    by_name = Counter(i.alertname for i in incidents)
    by_state = Counter(str(i.status) for i in incidents)
    still_open = sum(1 for i in incidents if i.status in OPEN_STATES)

    def listing(c: Counter[str]) -> str:
        return ", ".join(f"{k} {n}" for k, n in c.most_common())

    lines = [
        f"Digest of the last {_period(period)} (since {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M}Z)"
    ]
    if incidents:
        lines.append(
            f"- incidents: {len(incidents)} ({listing(by_name)}); now {listing(by_state)}; {still_open} still open"
        )
    else:
        lines.append("- incidents: none")
    lines.append(
        f"- actions: {len(actions)} executed ({ok} ok, {len(actions) - ok} failed), {deleted:,} keys deleted"
    )
    lines.append(
        f"- approvals: {kinds['approval.requested']} asked; {decided['approved']} approved,"
        f" {decided['denied']} denied, {kinds['approval.expired']} expired, {kinds['approval.cancelled']} cancelled"
    )
    for _, tcfg, rt in targets:
        lines.append("- " + await _target_line(tcfg, rt, prom, period))
    return "\n".join(lines)
