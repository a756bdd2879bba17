"""The config of what people reach from chat: the incident page (``ui``) and Alertmanager.

``ui.public_url`` is the address people open the bot's incident pages at (behind an ingress, a
reverse proxy); without it, links use the address the server listens on. Links are signed and
expire (``ui.link_ttl``); the key is ``BOT_UI_SECRET`` or one the bot generates once and keeps in
its store. ``alertmanager`` is where Silence buttons create silences (its v2 API); credentials
come from the environment, as for Prometheus.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from bot.durations import Duration
from bot.validation import StrictModel


def _http_url(v: str | None, example: str) -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https:// (e.g. {example})")
    return v.rstrip("/") if v is not None else None


class UiConfig(StrictModel):
    """The read-only incident pages (``GET /incidents``, ``GET /incidents/{id}``)."""

    public_url: str | None = Field(
        default=None,
        description="Base of the links to the incident pages (https://bot.example.com); unset: the listen address.",
    )
    link_ttl: Duration = Field(default=7 * 86400.0, gt=0, le=90 * 86400.0)

    @field_validator("public_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return _http_url(v, "https://remediation-bot.example.com")


class AlertmanagerConfig(StrictModel):
    """Where silences are created (``POST /api/v2/silences``) and expired.

    Credentials come from the environment, never from this file: ``ALERTMANAGER_BEARER_TOKEN``, or
    ``ALERTMANAGER_USERNAME`` and ``ALERTMANAGER_PASSWORD``.
    """

    url: str
    timeout: Duration = Field(default=10.0, gt=0, le=120.0)
    verify_tls: bool = True
    max_duration: Duration = Field(default=7 * 86400.0, gt=0, description="Longest silence a person may set.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        checked = _http_url(v, "http://alertmanager:9093")
        assert checked is not None
        return checked
