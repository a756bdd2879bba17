"""The bot's own metrics (``GET /metrics``): what it received, ran, asked, executed, and what failed.

Everything lives in a :class:`~prometheus_client.CollectorRegistry` of its own, not the process-wide
default one, so several apps can live in one process (tests) without "duplicated timeseries" errors.
The engine calls the small ``record``-style methods below; no aiohttp here, the web layer renders.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.errors import BotError, CommandNotAllowed, RedisUnavailable
from bot.incidents import Approval, IncidentState
from bot.store import Store

PREFIX = "remediation_bot"
SERVICES = ("slack", "chat", "redis", "prometheus")
INCIDENTS_REFRESH_S = 10.0
"""Incident counts are read from the store at most this often, however often Prometheus scrapes."""


class Metrics:
    """One set of the bot's metrics with its own registry. Methods never raise into the engine."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.alerts_received = Counter(
            f"{PREFIX}_alerts_received",
            "Alerts received, by status and source.",
            ["status", "source"],
            registry=r,
        )
        self.alerts_rejected = Counter(
            f"{PREFIX}_alerts_rejected",
            "Invalid alerts the webhook rejected (their valid siblings were stored), by first bad field.",
            ["field"],
            registry=r,
        )
        self.incidents = Gauge(
            f"{PREFIX}_incidents",
            "Incidents in the store, by state (read at scrape time).",
            ["state"],
            registry=r,
        )
        self.step_runs = Counter(
            f"{PREFIX}_step_runs", "Step runs, by step type and outcome.", ["type", "outcome"], registry=r
        )
        self.step_seconds = Histogram(
            f"{PREFIX}_step_duration_seconds",
            "How long step runs took, by step type.",
            ["type"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.approvals = Counter(
            f"{PREFIX}_approvals",
            "Approvals closed, by outcome (approved, denied, expired, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.approval_seconds = Histogram(
            f"{PREFIX}_approval_decision_seconds",
            "Time from asking for an approval to its decision (or expiry).",
            buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600),
            registry=r,
        )
        self.actions = Counter(
            f"{PREFIX}_actions_executed",
            "Mutating actions executed, by step type and outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.keys_deleted = Counter(f"{PREFIX}_keys_deleted", "Keys deleted by actions.", registry=r)
        self.webhook_seconds = Histogram(
            f"{PREFIX}_webhook_request_seconds",
            "POST /alerts latency, by HTTP status code.",
            ["code"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.breaker_open = Gauge(
            f"{PREFIX}_circuit_breaker_open",
            "1 while actions on a target are held back (circuit breaker or kill switch), else 0.",
            ["target"],
            registry=r,
        )
        self.job_runs = Counter(
            f"{PREFIX}_scheduler_job_runs",
            "Scheduled job runs, by job and outcome (ok, error, missed, skipped).",
            ["job", "outcome"],
            registry=r,
        )
        self.job_seconds = Histogram(
            f"{PREFIX}_scheduler_job_duration_seconds",
            "How long scheduled jobs took.",
            ["job"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
            registry=r,
        )
        self.call_errors = Counter(
            f"{PREFIX}_call_errors", "Failed calls to other services, by service.", ["service"], registry=r
        )
        self.probe_up = Gauge(
            f"{PREFIX}_probe_up",
            "1 when the health probe's last PING to a target succeeded.",
            ["target"],
            registry=r,
        )
        for service in SERVICES:
            self.call_errors.labels(service)
        for state in IncidentState:
            self.incidents.labels(str(state))
        self._incidents_read = 0.0
        # Label children of the per-request series, looked up once (``labels()`` validates and
        # hashes its arguments on every call; these run for every notification).
        self._received: dict[tuple[str, str], Counter] = {}
        self._webhook: dict[int, Histogram] = {}

    # -- recording ------------------------------------------------------------------------------

    def alert_received(self, status: str, source: str, count: int = 1) -> None:
        child = self._received.get((status, source))
        if child is None:
            child = self._received[(status, source)] = self.alerts_received.labels(status, source)
        child.inc(count)

    def alert_rejected(self, field: str, count: int = 1) -> None:
        self.alerts_rejected.labels(field).inc(count)

    def step_finished(self, step_type: str, outcome: str, duration_s: float | None) -> None:
        self.step_runs.labels(step_type, outcome).inc()
        if duration_s is not None:
            self.step_seconds.labels(step_type).observe(duration_s)

    def action_executed(self, step_type: str, ok: bool, keys_deleted: object) -> None:
        self.actions.labels(step_type, "ok" if ok else "failed").inc()
        if isinstance(keys_deleted, int) and keys_deleted > 0:
            self.keys_deleted.inc(keys_deleted)

    def approval_closed(self, approval: Approval, outcome: str | None = None) -> None:
        """Count a closed approval; time-to-decision is measured from when it was asked."""
        self.approvals.labels(outcome or str(approval.state)).inc()
        if approval.requested_at:
            asked = datetime.fromisoformat(approval.requested_at).timestamp()
            self.approval_seconds.observe(max(0.0, time.time() - asked))

    def webhook_request(self, code: int, seconds: float) -> None:
        child = self._webhook.get(code)
        if child is None:
            child = self._webhook[code] = self.webhook_seconds.labels(str(code))
        child.observe(seconds)

    def breaker(self, target: str, held: bool) -> None:
        self.breaker_open.labels(target).set(1 if held else 0)

    def job_run(self, job: str, outcome: str, seconds: float | None = None) -> None:
        self.job_runs.labels(job, outcome).inc()
        if seconds is not None:
            self.job_seconds.labels(job).observe(seconds)

    def call_error(self, service: str) -> None:
        self.call_errors.labels(service).inc()

    def step_error(self, exc: BotError) -> None:
        """Count a step's failure against the service that caused it (Prometheus counts itself)."""
        if isinstance(exc, RedisUnavailable | CommandNotAllowed):
            self.call_error("redis")

    # -- exposition -----------------------------------------------------------------------------

    async def refresh_incidents(self, store: Store, *, force: bool = False) -> None:
        """Read incident counts by state from the store (cached for :data:`INCIDENTS_REFRESH_S`)."""
        now = time.monotonic()
        if not force and now - self._incidents_read < INCIDENTS_REFRESH_S:
            return
        incidents = await store.list_incidents(limit=1_000_000, steps=False)
        counts = Tally(str(i.status) for i in incidents)
        for state in IncidentState:
            self.incidents.labels(str(state)).set(counts.get(str(state), 0))
        self._incidents_read = now

    def render(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST
