"""Signed, expiring links to the incident pages.

A link is ``BASE/incidents/7?exp=UNIX&sig=HMAC``: the HMAC-SHA256 of the path and the expiry, with
a key that never leaves the bot. Whoever has the link can read that page until it expires, and
nothing else: changing the path, the expiry or the signature makes it invalid. The key is
``BOT_UI_SECRET`` when set (several replicas behind one ingress set the same one), else a random
key generated once and kept in the store's settings, so links work out of the box and survive
restarts; it is never written to the audit.

Links are made when a message is rendered (the Slack card is re-rendered on each edit), so an active
incident's card always carries a fresh link. ``BOT_UI_TOKEN`` optionally lets people browse the
list without a link (``Authorization: Bearer``, or a cookie set by ``?token=``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol, runtime_checkable
from urllib.parse import urlencode

from bot.config import Config
from bot.store import Store

SECRET_ENV = "BOT_UI_SECRET"  # noqa: S105 - the variable's name, not a secret
TOKEN_ENV = "BOT_UI_TOKEN"  # noqa: S105 - the variable's name, not a secret
KEY_SETTING = "ui.link_key"
"""The store setting holding the generated key when ``BOT_UI_SECRET`` is unset."""


class Check(StrEnum):
    """What a link's signature says."""

    OK = "ok"
    MISSING = "missing"
    EXPIRED = "expired"
    INVALID = "invalid"


def listen_base(host: str, port: int) -> str:
    """``http://HOST:PORT`` for links when ``ui.public_url`` is unset; a wildcard address is
    replaced by this machine's name (nobody can open ``0.0.0.0``)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding to it
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def signature(key: bytes, path: str, expires: int) -> str:
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def check(key: bytes, path: str, exp: str | None, sig: str | None, now: float | None = None) -> Check:
    """Whether ``exp``/``sig`` (from the query string) sign ``path`` and have not expired."""
    if not exp or not sig:
        return Check.MISSING
    if not exp.isdigit() or not hmac.compare_digest(signature(key, path, int(exp)), sig):
        return Check.INVALID
    if int(exp) < (time.time() if now is None else now):
        return Check.EXPIRED
    return Check.OK


class PageLinks:
    """Makes signed links to the bot's pages; the key is read once (environment or store)."""

    def __init__(self, config: Config, store: Callable[[], Store], *, listen: str | None = None) -> None:
        self.base = config.ui.public_url or listen or listen_base(config.server.host, config.server.port)
        self.ttl = config.ui.link_ttl
        self._store = store
        self._key: bytes | None = None
        secret = os.environ.get(SECRET_ENV, "")
        if secret:
            self._key = secret.encode()

    async def key(self) -> bytes:
        if self._key is None:
            stored = await self._store().setting_default(KEY_SETTING, secrets.token_urlsafe(32), actor="ui")
            self._key = stored.encode()
        return self._key

    async def url(self, path: str, *, ttl: float | None = None, now: float | None = None) -> str:
        """``base + path`` signed to expire after ``ttl`` (default ``ui.link_ttl``)."""
        life = self.ttl if ttl is None else ttl
        # Rounded up to a step (an hour at most): a card re-rendered a minute later carries the same
        # link, so Slack is not sent an edit that changes nothing a person would see.
        step = max(1, int(min(3600.0, life / 10)))
        expires = -(-int((time.time() if now is None else now) + life) // step) * step
        query = urlencode({"exp": expires, "sig": signature(await self.key(), path, expires)})
        return f"{self.base}{path}?{query}"

    async def incident(self, incident_id: int) -> str:
        return await self.url(f"/incidents/{incident_id}")


@runtime_checkable
class LinksPages(Protocol):
    """A notifier that links the incident page (the console, Slack): the service hands it the links."""

    page_links: PageLinks | None


def ui_token() -> str:
    """``BOT_UI_TOKEN``: optional access to every page without a signed link ('' when unset)."""
    return os.environ.get(TOKEN_ENV, "")
