"""The scheduler's part of the config: job schedules (every or cron) and the jobs' own settings.

Cron expressions are written as in crontab (0 or 7 is Sunday) and validated when the config loads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import Field, field_validator, model_validator

from bot.durations import Duration
from bot.validation import StrictModel

_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday(token: str) -> int:
    if token[:3] in _DOW_NAMES:
        return _DOW_NAMES.index(token[:3])
    if not token.isdigit():
        raise ValueError(f"day-of-week {token!r} is neither a number 0-7 nor a day name (mon, tue, ...)")
    return int(token)


def _crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3 day names.

    APScheduler 3's ``CronTrigger.from_crontab`` numbers weekdays from Monday = 0, so ``1-5`` would
    silently mean Tuesday to Saturday; names are unambiguous.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"invalid step in day-of-week {part!r}")
        if rng == "*":
            lo, hi = 0, 6
        else:
            a, _, b = rng.partition("-")
            lo = _weekday(a)
            hi = _weekday(b) if b else lo
            if step_s and not b:
                hi = 6
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi):
            raise ValueError(f"day-of-week {part!r} is out of range (0-7, 0 and 7 are Sunday)")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def cron_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """An APScheduler trigger from a five-field crontab line, with crontab's weekday numbers."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_crontab_weekdays(dow),
            timezone=ZoneInfo(timezone),
        )
    except (ValueError, IndexError) as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None


class JobSchedule(StrictModel):
    """When a scheduled job runs: ``cron`` (five crontab fields, in ``scheduler.timezone``) or
    ``every`` (a duration). Giving one replaces the job's default; giving both is an error."""

    enabled: bool = True
    cron: str | None = None
    every: Duration | None = None

    _default_cron: ClassVar[str | None] = None
    _default_every: ClassVar[float | None] = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cron") is None and data.get("every") is None:
            return {**data, "cron": cls._default_cron, "every": cls._default_every}
        return data

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, v: str | None) -> str | None:
        if v is not None:
            cron_trigger(v)
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.cron is not None and self.every is not None:
            raise ValueError("give either cron or every, not both")
        return self

    def trigger(self, timezone: str = "UTC") -> CronTrigger | IntervalTrigger:
        if self.cron is not None:
            return cron_trigger(self.cron, timezone)
        return IntervalTrigger(seconds=self.every or 60.0, timezone=ZoneInfo(timezone))

    def describe(self) -> str:
        return f"cron {self.cron!r}" if self.cron is not None else f"every {self.every:g}s"


class HealthProbeConfig(JobSchedule):
    """PING every target; after ``failures`` misses in a row, open ``alertname`` for it."""

    _default_every = 15.0
    timeout: Duration = 2.0
    failures: int = Field(default=3, ge=1, le=100)
    alertname: str = "RedisDown"


class ApprovalExpiryConfig(JobSchedule):
    _default_every = 30.0


class BackupCheckConfig(JobSchedule):
    """The runbook's daily RDB/AOF backups: warn when the last save is older than ``max_age`` or failed."""

    _default_cron = "17 * * * *"
    max_age: Duration = 26 * 3600.0


class DigestConfig(JobSchedule):
    """A summary of the last ``period`` to the chat channel: incidents, actions, approvals, Redis."""

    _default_cron = "0 9 * * *"
    period: Duration = 24 * 3600.0


class SchedulerConfig(StrictModel):
    """Jobs the service runs on its own (``serve`` only; CLI commands never start them)."""

    enabled: bool = True
    timezone: str = "UTC"
    misfire_grace_time: Duration = 60.0
    health_probe: HealthProbeConfig = HealthProbeConfig()
    approval_expiry: ApprovalExpiryConfig = ApprovalExpiryConfig()
    backup_check: BackupCheckConfig = BackupCheckConfig()
    digest: DigestConfig = DigestConfig()

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use e.g. UTC or Europe/Berlin)") from None
        return v
