"""A small client of Alertmanager's v2 API: create, find and expire silences.

Silences are made for **exactly one alert**: one equality matcher per label of the alert (not its
group, not a regex), so silencing a flapping ``RedisMemoryUsageHigh`` on one instance leaves every
other alert alone. Every call has a timeout; failures become :class:`AlertmanagerError` with a
sentence a person can act on (unreachable, refused with the API's reason, bad credentials).
Credentials come from the environment, as for Prometheus: ``ALERTMANAGER_BEARER_TOKEN``, or
``ALERTMANAGER_USERNAME`` and ``ALERTMANAGER_PASSWORD``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bot.config_chatops import AlertmanagerConfig
from bot.errors import BotError
from bot.redisconn import redact_url

SILENCE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
ENV_TOKEN = "ALERTMANAGER_BEARER_TOKEN"  # noqa: S105 - the name of a variable, not a token
ENV_USERNAME = "ALERTMANAGER_USERNAME"
ENV_PASSWORD = "ALERTMANAGER_PASSWORD"  # noqa: S105 - the name of a variable, not a password


class AlertmanagerError(BotError):
    """Alertmanager could not be reached, or refused the request; the message says which."""


def matchers_for(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """One exact matcher per label: the silence covers this alert and no other."""
    return [
        {"name": k, "value": v, "isRegex": False, "isEqual": True}
        for k, v in sorted(labels.items())
        if k and v != ""
    ]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def key(ms: list[dict[str, Any]]) -> set[tuple[str, str, bool, bool]]:
        return {
            (str(m["name"]), str(m["value"]), bool(m.get("isRegex")), bool(m.get("isEqual", True)))
            for m in ms
        }

    return key(a) == key(b)


@dataclass(frozen=True)
class Silence:
    id: str
    state: str
    ends_at: str
    created_by: str
    comment: str
    matchers: list[dict[str, Any]]


class AlertmanagerClient:
    """Alertmanager at ``config.url``; one aiohttp session per call (silences are rare)."""

    def __init__(self, config: AlertmanagerConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.url = config.url
        self.shown = redact_url(config.url)
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.ssl: bool = config.verify_tls
        self.headers: dict[str, str] = {}
        self.auth: aiohttp.BasicAuth | None = None
        if env.get(ENV_TOKEN):
            self.headers["Authorization"] = f"Bearer {env[ENV_TOKEN]}"
        elif env.get(ENV_USERNAME):
            self.auth = aiohttp.BasicAuth(env[ENV_USERNAME], env.get(ENV_PASSWORD, ""))

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout, headers=self.headers, auth=self.auth) as http,
                http.request(method, self.url + path, ssl=self.ssl, **kw) as resp,
            ):
                text = await resp.text()
                if resp.status in (401, 403):
                    raise AlertmanagerError(
                        f"Alertmanager at {self.shown} refused the bot's credentials (HTTP {resp.status});"
                        f" set {ENV_TOKEN}, or {ENV_USERNAME} and {ENV_PASSWORD}"
                    )
                if resp.status >= 400:
                    reason = " ".join(text.split())[:300] or resp.reason
                    raise AlertmanagerError(
                        f"Alertmanager at {self.shown} refused: HTTP {resp.status}: {reason}"
                    )
                return await resp.json(content_type=None) if text.strip() else None
        except TimeoutError as exc:
            raise AlertmanagerError(f"Alertmanager at {self.shown} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise AlertmanagerError(f"cannot reach Alertmanager at {self.shown}: {exc}") from exc

    async def create(
        self, matchers: list[dict[str, Any]], *, starts: float, ends: float, created_by: str, comment: str
    ) -> str:
        """A new silence; its id."""
        body = {
            "matchers": matchers,
            "startsAt": _iso(starts),
            "endsAt": _iso(ends),
            "createdBy": created_by,
            "comment": comment,
        }
        answer = await self._call("POST", "/api/v2/silences", json=body)
        silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
        if not silence_id:
            raise AlertmanagerError(
                f"Alertmanager at {self.shown} answered without a silence id: {answer!r:.200}"
            )
        return str(silence_id)

    async def silences(self) -> list[Silence]:
        answer = await self._call("GET", "/api/v2/silences")
        out = []
        for s in answer if isinstance(answer, list) else []:
            out.append(
                Silence(
                    id=str(s.get("id")),
                    state=str((s.get("status") or {}).get("state", "")),
                    ends_at=str(s.get("endsAt", "")),
                    created_by=str(s.get("createdBy", "")),
                    comment=str(s.get("comment", "")),
                    matchers=list(s.get("matchers") or []),
                )
            )
        return out

    async def active_for(self, matchers: list[dict[str, Any]]) -> Silence | None:
        """An active silence with exactly these matchers (a second click finds the first's)."""
        for s in await self.silences():
            if s.state == "active" and _same(s.matchers, matchers):
                return s
        return None

    async def get(self, silence_id: str) -> Silence | None:
        return next((s for s in await self.silences() if s.id == silence_id), None)

    async def expire(self, silence_id: str) -> None:
        """Expire (end now) a silence; Alertmanager keeps it, expired, for its retention."""
        if not SILENCE_ID.fullmatch(silence_id):
            raise AlertmanagerError(f"{silence_id[:80]!r} is not a silence id (like 4f3c…-…)")
        await self._call("DELETE", f"/api/v2/silence/{silence_id}")
