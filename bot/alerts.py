"""Alertmanager webhook (version 4) payload models.

Tolerant on purpose: unknown fields are ignored, because newer Alertmanager versions add some, and a
notifier that rejects them would drop real alerts. Only what the bot relies on is required.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Alertmanager writes the zero time for "no end yet".
_ZERO_YEAR = 1


class Alert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        try:
            return v.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp out of range") from None

    @model_validator(mode="after")
    def _defaults(self) -> Alert:
        if self.ends_at is not None and self.ends_at.year <= _ZERO_YEAR:
            self.ends_at = None
        if not self.fingerprint:
            # Alertmanager always sends one; other senders may not. Same labels, same fingerprint.
            canon = "\x00".join(f"{k}\x01{v}" for k, v in sorted(self.labels.items()))
            self.fingerprint = hashlib.sha256(canon.encode()).hexdigest()[:16]
        return self

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def starts_key(self) -> str:
        """startsAt in a canonical form: the second half of an incident's identity."""
        return self.starts_at.isoformat(timespec="microseconds")


class Notification(BaseModel):
    """A webhook notification: a group of alerts, firing and resolved possibly mixed."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: str = "4"
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert] = Field(min_length=1, max_length=10_000)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v != "4":
            raise ValueError(f"unsupported webhook version {v!r}; this bot speaks Alertmanager's version 4")
        return v
