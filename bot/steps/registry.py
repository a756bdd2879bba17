"""The step registry: what a playbook's ``run:`` names, with its parameter model and mutating flag.

Steps are validated when a playbook loads (unknown name, bad parameters), never first at 3 a.m.
Whether a step mutates is declared at registration and never guessed: the runner refuses to run a
mutating step without an approval bound to its plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from bot.redisconn import RedisTarget

if TYPE_CHECKING:
    from bot.prom import PromClient

StepStatus = Literal["ok", "warning", "failed", "skipped"]


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are an error, so typos are caught at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StepOutput(BaseModel):
    """What a step returns: a one-line human summary, structured data, and how it went.

    ``status`` is ``ok`` when nothing needs attention, ``warning`` when the step found a problem
    worth reading (e.g. a slow command), ``failed`` when a check did not hold (e.g. a verification
    that shows the action did not help), ``skipped`` when the step does not apply to this setup
    (e.g. a Prometheus step when no Prometheus is configured). Exceptions are for steps that could
    not run at all.
    """

    summary: str
    data: dict[str, Any] = Field(default_factory=dict)
    status: StepStatus = "ok"
    details: str = ""


ChangeOp = Literal["config_set", "unlink", "flushdb", "bgsave", "client_kill", "memory_purge"]


class Change(BaseModel):
    """One change an action makes on the target: ``CONFIG SET name before -> after``, ``UNLINK`` of
    the keys matching ``name``, ``FLUSHDB``, ``BGSAVE``, ``CLIENT KILL ID name`` (``before``: the
    client's address), ``MEMORY PURGE``.

    A plan lists every change its action will make, so the approver sees each one (a policy change
    cannot hide behind a memory limit), the plan hash covers each one, and ``execute`` performs the
    listed changes and nothing else. Values are strings, as ``CONFIG GET`` returns them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: ChangeOp
    name: str = ""
    before: str | None = None
    after: str | None = None
    node: str | None = None
    """The cluster primary (``host:port``) the change is made on, when it is one node's (a client
    connected there); None: the target as a whole."""

    @model_serializer(mode="wrap")
    def _without_no_node(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Left out when None, so a change without a node reads and hashes as before the field."""
        data: dict[str, Any] = handler(self)
        if data.get("node") is None:
            data.pop("node", None)
        return data


class Plan(BaseModel):
    """The exact, reviewable plan of a mutating action; an approval is bound to its hash.

    ``changes`` is the complete list of what executing it changes; everything else describes size
    and safety (estimates, protected keys, samples) or pacing (``params``).
    """

    model_config = ConfigDict(frozen=True)

    action: str
    target: str
    db: int
    summary: str
    pattern: str | None = None
    estimated_keys: int | None = None
    estimated_bytes: int | None = None
    protected_excluded: int | None = None
    sample_keys: list[str] = Field(default_factory=list)
    approvers_required: int = 1
    changes: list[Change] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    node: str | None = None
    """The server (``host:port``) the plan was made on, for targets whose primary can move (Sentinel):
    after a failover the plan no longer holds, and the runner plans again on the new primary."""

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: the same plan always gives the same hash (a plan
        without ``node``, and changes without one, hash as plans did before those fields existed)."""
        data = self.model_dump(mode="json", exclude={"node"} if self.node is None else None)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


ProgressFn = Callable[[str], Awaitable[None]]


async def _no_progress(_message: str) -> None:
    return None


StopFn = Callable[[], Awaitable[str | None]]
"""Asked by a running action before each batch: a reason to stop now (kill switch), or None."""


async def _never_stop() -> str | None:
    return None


@dataclass(frozen=True)
class EarlierStep:
    """A read-only step this incident already ran, as later steps of the same incident see it.

    The eviction plan reads the memory report made minutes earlier instead of scanning the keyspace
    a second time (see :func:`bot.steps.redis_actions.plan_evict`).
    """

    step_id: str
    type: str
    status: str
    data: dict[str, Any]
    finished_at: str | None = None


@dataclass
class StepContext:
    """What a step may touch: the target's Redis client, the alert's labels, and a progress callback.

    Steps reach Redis and Prometheus only through the clients given here, which keeps them testable
    against real servers and lets the runner pick least-privilege credentials. ``prometheus`` is None
    when the config has no ``prometheus`` section. ``earlier`` lets a step reuse what the incident
    already measured.
    """

    target: RedisTarget
    labels: dict[str, str] = field(default_factory=dict)
    protected_patterns: tuple[str, ...] = ("bull:*",)
    progress: ProgressFn = _no_progress
    settings: dict[str, Any] = field(default_factory=dict)
    prometheus: PromClient | None = None
    should_stop: StopFn = _never_stop
    earlier: tuple[EarlierStep, ...] = ()
    """The incident's finished read-only steps, oldest first; empty for the execute-time re-check,
    which must measure afresh."""


P = TypeVar("P", bound=StepParams)
RunFn = Callable[[StepContext, Any], Awaitable[StepOutput]]
PlanFn = Callable[[StepContext, Any], Awaitable[Plan]]
ExecuteFn = Callable[[StepContext, Any, Plan], Awaitable[StepOutput]]


@dataclass(frozen=True)
class StepType:
    """A registered step type. ``run`` is set for read-only steps, ``plan``/``execute`` for actions."""

    name: str
    params: type[StepParams]
    mutating: bool
    description: str
    default_timeout: float
    run: RunFn | None = None
    plan: PlanFn | None = None
    execute: ExecuteFn | None = None
    verifies: bool = False
    """A check that tells whether an earlier action helped (declared at registration, never guessed)."""


REGISTRY: dict[str, StepType] = {}


def _register(st: StepType) -> None:
    if st.name in REGISTRY:
        raise ValueError(f"step {st.name!r} is registered twice")
    if not st.description:
        raise ValueError(f"step {st.name!r} needs a docstring: it is shown in `check` and `help`")
    REGISTRY[st.name] = st


def step(
    name: str, *, params: type[P], timeout: float = 30.0, verifies: bool = False
) -> Callable[
    [Callable[[StepContext, P], Awaitable[StepOutput]]], Callable[[StepContext, P], Awaitable[StepOutput]]
]:
    """Register a read-only step. Use as a decorator: ``@step("redis.ping", params=PingParams)``."""

    def deco(
        fn: Callable[[StepContext, P], Awaitable[StepOutput]],
    ) -> Callable[[StepContext, P], Awaitable[StepOutput]]:
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _register(StepType(name, params, False, doc, timeout, run=fn, verifies=verifies))
        return fn

    return deco


def action(
    name: str, *, params: type[P], plan: Callable[[StepContext, P], Awaitable[Plan]], timeout: float = 300.0
) -> Callable[
    [Callable[[StepContext, P, Plan], Awaitable[StepOutput]]],
    Callable[[StepContext, P, Plan], Awaitable[StepOutput]],
]:
    """Register a mutating action: ``plan`` computes the reviewable plan (read-only); the decorated
    function executes an approved plan."""

    def deco(
        fn: Callable[[StepContext, P, Plan], Awaitable[StepOutput]],
    ) -> Callable[[StepContext, P, Plan], Awaitable[StepOutput]]:
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _register(StepType(name, params, True, doc, timeout, plan=plan, execute=fn))
        return fn

    return deco
