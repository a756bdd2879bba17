"""Alertmanager webhook (version 4) payload models.

Tolerant on purpose: unknown fields are ignored, because newer Alertmanager versions add some, and a
notifier that rejects them would drop real alerts. Only what the bot relies on is required.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from bot.errors import InvalidNotification, RejectedAlert
from bot.validation import field_path

# Alertmanager writes the zero time for "no end yet".
_ZERO_YEAR = 1
_TIMES = (("starts_at", "startsAt"), ("ends_at", "endsAt"))
_OUT_OF_RANGE = PydanticCustomError(
    "value_error", "Value error, {error}", {"error": "timestamp out of range"}
)


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

    @model_validator(mode="after")
    def _normalise(self) -> Alert:
        """Timestamps in UTC, Alertmanager's zero time as no end, a fingerprint for senders without one.

        One Python call per alert, writing the fields in place: this runs for every alert the webhook
        receives. An error still names its field (``startsAt``), as a field validator's would."""
        values = self.__dict__
        errors: list[InitErrorDetails] = []
        for name, alias in _TIMES:
            v = values[name]
            if v is None:
                continue
            if v.tzinfo is None:
                v = v.replace(tzinfo=UTC)
            try:
                values[name] = v.astimezone(UTC)
            except OverflowError:
                errors.append(InitErrorDetails(type=_OUT_OF_RANGE, loc=(alias,), input=v.isoformat()))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        ends = values["ends_at"]
        if ends is not None and ends.year <= _ZERO_YEAR:
            values["ends_at"] = None
        if not self.fingerprint:
            # Alertmanager always sends one; other senders may not. Same labels, same fingerprint.
            canon = "\x00".join(f"{k}\x01{v}" for k, v in sorted(self.labels.items()))
            values["fingerprint"] = hashlib.sha256(canon.encode()).hexdigest()[:16]
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


_SHOWN = 200
"""At most this many characters of a sender's fingerprint or of one reason go into answers and logs."""


def parse_notification(body: bytes) -> tuple[Notification, list[RejectedAlert]]:
    """A webhook body as its valid alerts, plus each invalid alert with the reason it was rejected.

    One bad alert must not sink its group: Alertmanager retries a notification answered 5xx forever
    and drops one answered 4xx whole, so either way the good alerts beside it would be lost. Raises
    :class:`InvalidNotification` when the notification itself is invalid (not JSON, not an object,
    wrong version) or when none of its alerts is valid.
    """
    try:
        return Notification.model_validate_json(body), []  # the hot path: one pass from bytes
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        raise InvalidNotification(f"body is not valid JSON: {errors[0]['msg']}")
    if any(e["type"] == "model_type" and not e["loc"] for e in errors):
        raise InvalidNotification("expected a JSON object (an Alertmanager webhook notification)")
    problems = [f"{field_path(tuple(e['loc'])) or '(body)'}: {_message(e['msg'])}" for e in errors]
    by_alert: dict[int, list[Any]] = {}
    for e in errors:
        loc = e["loc"]
        if len(loc) >= 2 and loc[0] == "alerts" and isinstance(loc[1], int):
            by_alert.setdefault(loc[1], []).append(e)
    raw: dict[str, Any] = pydantic_core.from_json(body) if by_alert else {}
    alerts: list[Any] = raw.get("alerts", [])
    rejected = [_rejected(i, alerts[i], errs) for i, errs in sorted(by_alert.items())]
    good = [a for i, a in enumerate(alerts) if i not in by_alert]
    whole = sum(len(v) for v in by_alert.values()) < len(errors)
    if whole or not good:
        raise InvalidNotification(
            "invalid Alertmanager notification: " + "; ".join(problems[:10]), problems[:50], rejected
        )
    # The valid alerts again through the same JSON validation (only on this error path).
    return Notification.model_validate_json(pydantic_core.to_json({**raw, "alerts": good})), rejected


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _rejected(index: int, alert: Any, errors: list[Any]) -> RejectedAlert:
    fingerprint = alert.get("fingerprint") if isinstance(alert, dict) else None
    first = errors[0]["loc"][2:]
    reason = "; ".join(
        f"{field_path(tuple(e['loc'][2:])) or '(alert)'}: {_message(e['msg'])}" for e in errors
    )
    return RejectedAlert(
        index=index,
        fingerprint=fingerprint[:_SHOWN] if isinstance(fingerprint, str) else None,
        field=str(first[0]) if first else "(alert)",
        reason=reason[:_SHOWN],
    )
