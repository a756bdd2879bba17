"""Slack settings from the environment: loaded without importing slack-bolt.

Secrets (bot token, signing secret, app-level token) only ever come from the environment, never
from a file in the repo; ``create_app`` reads them here to decide whether Slack is wired at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.errors import ConfigError, Problem

DEFAULT_TIMEOUT = 8
"""Seconds for one Slack Web API call: below SafeNotifier's 10 s, so a hung Slack fails here first."""


@dataclass(frozen=True)
class SlackSettings:
    """Slack secrets and endpoints, only ever from the environment (never from a file in the repo).

    ``signing_secret`` enables HTTP mode (``POST /slack/events``); ``app_token`` enables Socket Mode.
    ``api_url`` replaces ``https://slack.com/api/`` (a proxy, Enterprise Grid, or a local fake).
    """

    bot_token: str = field(repr=False)
    signing_secret: str = field(default="", repr=False)
    app_token: str = field(default="", repr=False)
    api_url: str | None = None
    timeout: int = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlackSettings | None:
        """Settings from ``SLACK_*`` variables; None when Slack is not configured (no bot token).

        A bot token without a way to receive clicks is a half-done setup: that raises
        :class:`ConfigError` instead of silently falling back to the console.
        """
        env = os.environ if env is None else env
        token = env.get("SLACK_BOT_TOKEN", "").strip()
        if not token:
            return None
        settings = cls(
            bot_token=token,
            signing_secret=env.get("SLACK_SIGNING_SECRET", "").strip(),
            app_token=env.get("SLACK_APP_TOKEN", "").strip(),
            api_url=env.get("SLACK_API_URL", "").strip() or None,
        )
        if not settings.signing_secret and not settings.app_token:
            raise ConfigError(
                [
                    Problem(
                        "environment",
                        "SLACK_SIGNING_SECRET",
                        "SLACK_BOT_TOKEN is set, but neither SLACK_SIGNING_SECRET (HTTP mode) nor"
                        " SLACK_APP_TOKEN (Socket Mode): the bot could post but never receive a click",
                    )
                ]
            )
        return settings

    @property
    def modes(self) -> str:
        modes = [m for m, on in (("HTTP", self.signing_secret), ("Socket Mode", self.app_token)) if on]
        return " and ".join(modes)
