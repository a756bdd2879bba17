"""Slack writes, queued per channel: paced under Slack's limit, coalesced, and patient with 429s.

Slack accepts about one message per second per channel. A burst of incidents (an alert storm, a
restart resuming work) would otherwise meet ``429 Too Many Requests`` and lose updates. Every write
the notifier makes goes through here:

- **one queue per channel**, worked by one task, so writes to a channel never overlap and keep
  the order they were asked in (the card before its thread, the digest before the approval);
- **coalesced by key**: a job for a key already waiting replaces it in place ("latest state wins"),
  so ten updates of one card while the queue is busy become one edit, rendered when it is sent;
- **paced**: at least ``min_interval`` between two calls to a channel;
- **429s honoured**: the channel waits for Slack's ``Retry-After`` and the same call is tried again.

Jobs are best effort, like every notification: a job that fails (Slack down, a bad request) is
logged and counted, and the next job for the incident repairs what it can (it posts a missing card).
The queue lives in the process: :meth:`Outbox.close` sends what is waiting, within a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[], Awaitable[None]]

MAX_ATTEMPTS = 5
"""Tries of one call that keeps meeting 429s before it is given up (and logged)."""
SAFETY = 0.02
"""Seconds added to each wait: a timer may fire a hair early, and Slack counts on its own clock."""


def retry_after(exc: SlackApiError, default: float = 1.0) -> float | None:
    """Seconds Slack asked us to wait, when ``exc`` is a 429; None for any other error."""
    response = exc.response
    if getattr(response, "status_code", None) != 429:
        return None
    headers = getattr(response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else default
    except (TypeError, ValueError):
        return default


def content_digest(text: str, blocks: list[dict[str, Any]]) -> str:
    """A message's content in a few bytes: an edit to what a message already shows is skipped."""
    return hashlib.sha1(
        json.dumps([text, blocks], sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()


def keep(cache: dict[Any, Any], key: Any, value: Any, limit: int = 4096) -> None:
    """Set ``cache[key]``, forgetting the oldest quarter past ``limit`` entries (a long-running
    service sees many incidents; what is forgotten is read again from the store)."""
    cache.pop(key, None)
    cache[key] = value
    if len(cache) > limit:
        for old in list(cache)[: limit // 4]:
            del cache[old]


@dataclass
class _Channel:
    pending: dict[Hashable, Job] = field(default_factory=dict)
    next_at: float = 0.0
    task: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Outbox:
    """The notifier's writes to Slack, per channel (see the module docstring)."""

    def __init__(self, min_interval: float = 1.0, *, on_error: Callable[[], None] | None = None) -> None:
        self.min_interval = min_interval
        self.on_error = on_error
        self.rate_limited = 0
        """429 answers met so far (for logs and tests: a burst should meet none)."""
        self._channels: dict[str, _Channel] = {}
        self._closed = False

    def _channel(self, name: str) -> _Channel:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel()
            ch.idle.set()
        return ch

    def submit(self, channel: str, key: Hashable, job: Job) -> None:
        """Queue ``job`` for ``channel``; a job already waiting under ``key`` is replaced in place."""
        if self._closed:
            return
        ch = self._channel(channel)
        ch.pending[key] = job
        ch.idle.clear()
        if ch.task is None or ch.task.done():
            ch.task = asyncio.create_task(self._work(channel, ch), name=f"slack-outbox-{channel}")

    def waiting(self) -> int:
        return sum(len(ch.pending) for ch in self._channels.values())

    async def _work(self, name: str, ch: _Channel) -> None:
        try:
            while ch.pending:
                key = next(iter(ch.pending))
                job = ch.pending.pop(key)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one failed write must not stop the channel's queue
                    log.warning("slack: %s in %s failed: %s: %s", key, name, type(exc).__name__, exc)
                    if self.on_error is not None:
                        self.on_error()
        finally:
            ch.task = None
            if not ch.pending:
                ch.idle.set()

    async def call(self, channel: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One Slack API call that writes to ``channel``: paced, and retried after a 429's wait."""
        ch = self._channel(channel)
        for _ in range(MAX_ATTEMPTS):
            wait = ch.next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                result = await fn()
            except SlackApiError as exc:
                delay = retry_after(exc)
                if delay is None:
                    ch.next_at = time.monotonic() + self.min_interval + SAFETY
                    raise
                self.rate_limited += 1
                log.info("slack: rate limited in %s; waiting %.0f s as Slack asked", channel, delay)
                ch.next_at = time.monotonic() + delay + SAFETY
                continue
            except BaseException:
                ch.next_at = time.monotonic() + self.min_interval + SAFETY
                raise
            ch.next_at = time.monotonic() + self.min_interval + SAFETY
            return result
        raise RuntimeError(f"Slack kept answering 429 in {channel} ({MAX_ATTEMPTS} tries)")

    async def drain(self, within: float | None = None) -> bool:
        """Wait until every queue is empty (True), or ``within`` seconds passed (False)."""
        try:
            async with asyncio.timeout(within):
                while any(not ch.idle.is_set() for ch in self._channels.values()):
                    await asyncio.gather(*(ch.idle.wait() for ch in self._channels.values()))
        except TimeoutError:
            return False
        return True

    async def close(self, within: float) -> None:
        """Send what is waiting (within ``within`` seconds), then stop; later jobs are ignored."""
        done = await self.drain(within)
        self._closed = True
        if not done:
            log.warning("slack: %d message(s) not sent before shutdown", self.waiting())
        tasks = [ch.task for ch in self._channels.values() if ch.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
