"""Hand-started work outside any alert: one read-only step against a target, or a small incident.

Chat commands (Slack's ``/redis``) need the same three things the CLI does: find a configured target
by name, run one registered read-only step against it with the usual context and timeout, and open
an incident by hand whose actions still go through plan + approval. Keeping them here means the
chat layer never re-implements diagnostics or bypasses the runner's safety model.

Hand-started evictions need a playbook whose pattern is only known at request time. Those are
synthesised from the playbook *name* (``evict:agent:*``), which the store keeps with the incident,
so a pending approval survives a restart and can be decided from any process that wraps its
playbooks with :func:`with_adhoc_playbooks`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bot.alerts import Alert
from bot.config import Config, LabelMatcher
from bot.errors import BotError, NotFound, StepTimeout
from bot.playbook import Playbook, PlaybookSet, Step
from bot.redisconn import RedisTarget, redact_url
from bot.steps import REGISTRY, StepContext, StepOutput
from bot.store import IngestItem, Store
from bot.target_pool import TargetPool
from bot.validation import field_path

EVICT_PREFIX = "evict:"
"""How hand-started evictions were named before their pattern was stored as a parameter (still read)."""
MANUAL_EVICT_PLAYBOOK = "manual-eviction"
"""The playbook of a hand-started eviction; its pattern is the incident's ``params``."""
"""Playbook names starting with this are hand-started evictions of the pattern that follows."""
MANUAL_EVICTION = "ManualEviction"


@dataclass(frozen=True)
class ResolvedTarget:
    """A configured target ready to use: its display name, index in ``targets`` and a client."""

    name: str
    index: int
    target: RedisTarget
    owned: bool = True
    """False when the client is the engine's shared one (then the engine closes it)."""

    async def release(self) -> None:
        if self.owned:
            await self.target.close()


def target_names(config: Config) -> list[str]:
    """Names people can type for the targets that need no alert labels to build their URL."""
    return [t.label for t in config.targets if not t.label_names()]


def resolve_target(config: Config, given: str | None, pool: TargetPool | None = None) -> ResolvedTarget:
    """A target from the config by name (or URL); the only one when ``given`` is None.

    Chat users may only name configured targets, never an arbitrary URL: the bot holds credentials
    and must not be pointed at any Redis someone types.
    """
    plain = [(i, t) for i, t in enumerate(config.targets) if not t.label_names()]
    names = ", ".join(target_names(config)) or "none (every target needs alert labels)"
    if given is None:
        if len(plain) != 1:
            raise BotError(f"say which target: one of {names}")
        index, tcfg = plain[0]
    else:
        match = [(i, t) for i, t in plain if given in (t.name, t.where, redact_url(t.where), t.label)]
        if not match:
            raise BotError(f"unknown target {given!r}; known targets: {names}")
        index, tcfg = match[0]
    if pool is not None:
        rt = pool.get(index)
        return ResolvedTarget(rt.name, index, rt, owned=False)
    rt = tcfg.resolve({}, config.runner.redis_timeout)
    return ResolvedTarget(rt.name, index, rt)


def is_target_name(config: Config, word: str) -> bool:
    return any(
        word in (t.name, t.where, redact_url(t.where), t.label) for t in config.targets if not t.label_names()
    )


def params_error(exc: ValidationError) -> str:
    """A pydantic error as one line a person can act on (``n: Input should be ...``)."""
    parts = [f"{field_path(tuple(e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)]
    return "; ".join(parts)


async def run_step(config: Config, target: RedisTarget, step_name: str, params: dict[str, Any]) -> StepOutput:
    """Run one registered read-only step against ``target`` with its default timeout.

    Raises :class:`BotError` for bad parameters or a mutating step (those need a plan and an
    approval, so they only run inside an incident), :class:`StepError` when Redis fails.
    """
    st = REGISTRY[step_name]
    if st.mutating or st.run is None:
        raise BotError(f"{step_name} changes data: it only runs inside an incident, after approval")
    try:
        p = st.params.model_validate(params)
    except ValidationError as exc:
        raise BotError(params_error(exc)) from None
    ctx = StepContext(
        target=target,
        protected_patterns=tuple(config.protected_patterns),
        settings={"max_keys_per_run": config.guardrails.max_keys_per_run},
    )
    try:
        async with asyncio.timeout(st.default_timeout):
            return await st.run(ctx, p)
    except TimeoutError:
        raise StepTimeout(f"{step_name} did not finish within {st.default_timeout:g} s") from None


def evict_playbook(pattern: str) -> Playbook:
    """The one-step playbook behind a hand-started eviction (raises BotError for a bad pattern)."""
    st = REGISTRY["redis.evict"]
    try:
        params = st.params.model_validate({"pattern": pattern})
    except ValidationError as exc:
        raise BotError(params_error(exc)) from None
    step = Step(
        id="evict",
        type=st,
        params=params,
        timeout=st.default_timeout,
        on_failure="stop",
        when="always",
        description="Cache invalidation asked for by hand; protected keys are never deleted.",
    )
    return Playbook(
        name=MANUAL_EVICT_PLAYBOOK,
        description=f"Invalidate the cache namespace {pattern} (SCAN + UNLINK), after approval.",
        runbook="Evicting Specific Cache Keys",
        matcher=LabelMatcher(match={"alertname": MANUAL_EVICTION}),
        steps=(step,),
        dry_run=False,
        source="built-in",
    )


class AdHocPlaybooks(PlaybookSet):
    """The loaded playbooks plus hand-started evictions, resolved from their name.

    Alerts never match an ad-hoc playbook: :meth:`match` only looks at the loaded files.
    """

    def __init__(self, base: PlaybookSet) -> None:
        super().__init__(base.playbooks)

    def get(self, name: str, params: dict[str, Any] | None = None) -> Playbook | None:
        found = super().get(name)
        if found is None and name == MANUAL_EVICT_PLAYBOOK and params and "pattern" in params:
            try:
                return evict_playbook(str(params["pattern"]))
            except BotError:
                return None
        if found is None and name.startswith(EVICT_PREFIX):
            try:
                return evict_playbook(name.removeprefix(EVICT_PREFIX))
            except BotError:
                return None
        return found


def with_adhoc_playbooks(playbooks: PlaybookSet) -> PlaybookSet:
    """Wrap a playbook set so hand-started evictions resolve (idempotent)."""
    return playbooks if isinstance(playbooks, AdHocPlaybooks) else AdHocPlaybooks(playbooks)


async def start_incident(
    store: Store,
    playbooks: PlaybookSet,
    playbook: str,
    target: ResolvedTarget,
    *,
    requested_by: str,
    source: str,
    dry_run: bool = False,
    params: dict[str, Any] | None = None,
) -> int:
    """Open a hand-started incident for ``playbook`` on ``target``; the caller submits it to a runner.

    ``requested_by`` is the verified identity key of who asked (``slack:U123``, ``cli:alice``, see
    :mod:`bot.identity`): the incident records it, and the approval rules keep that person from
    approving its actions alone. The incident is shaped like an alert (``alertname``,
    ``bot_target``) so every view of incidents shows it, and names who asked in a label too.
    """
    pb = playbooks.get(playbook, params)
    if pb is None:
        known = ", ".join(p.name for p in playbooks.playbooks)
        raise NotFound(f"no playbook named {playbook!r}; known: {known}")
    now = datetime.now(UTC)
    alertname = pb.matcher.match.get("alertname", pb.name)
    alert = Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": alertname, "bot_target": target.name, "requested_by": requested_by},
            "annotations": {"summary": f"{pb.name} started by hand"},
            "startsAt": now.isoformat(),
            "fingerprint": f"{source}-{uuid.uuid4().hex[:16]}",
        }
    )
    item = IngestItem(alert, pb.name, target.name, target.index, f"started by {requested_by}", source)
    return await store.open_incident(item, dry_run=dry_run, requested_by=requested_by, params=params)
