"""Playbooks: YAML files that mirror runbook sections, validated in full when they load.

Each file names the alerts it handles (label matchers) and an ordered list of steps. A step names a
registered step type (``run``), its parameters (``with``, checked against the type's model), a
timeout and what to do when it fails. Every problem in every file is reported at once, with file and
field, so a broken playbook is caught by ``check`` in CI and not by an alert at 3 a.m.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from bot.config import LabelMatcher
from bot.durations import Duration
from bot.errors import ConfigError, Problem
from bot.steps import REGISTRY, StepParams, StepType
from bot.validation import StrictModel, load_yaml, validation_problems

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CANDIDATES_MEMO = 4096
"""Alertnames whose candidate playbooks :class:`PlaybookSet` remembers at most."""


class StepSpec(StrictModel):
    """A step as written in YAML (parameters are checked separately, against the step type)."""

    id: str
    run: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: Duration | None = None
    on_failure: Literal["continue", "stop"] = "continue"
    when: Literal["always", "unresolved"] = "always"
    description: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' (at most 63 characters)")
        return v


class PlaybookSpec(LabelMatcher):
    """A playbook's top level; its steps are validated one by one so every bad step is reported."""

    name: str
    description: str = ""
    runbook: str = ""
    dry_run: bool = False
    steps: list[Any] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("use lower-case letters, digits, '-' and '_' (at most 63 characters)")
        return v


@dataclass(frozen=True)
class Step:
    """A validated step, ready to run."""

    id: str
    type: StepType
    params: StepParams
    timeout: float
    on_failure: Literal["continue", "stop"]
    when: Literal["always", "unresolved"]
    description: str

    @property
    def mutating(self) -> bool:
        return self.type.mutating


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    runbook: str
    matcher: LabelMatcher
    steps: tuple[Step, ...]
    dry_run: bool
    source: str

    def matches(self, labels: dict[str, str]) -> bool:
        return self.matcher.matches(labels)


def build_step(spec: StepSpec, file: str, loc: str, problems: list[Problem]) -> Step | None:
    """Check a step against the registry and its parameter model; report problems at ``loc``."""
    st = REGISTRY.get(spec.run)
    if st is None:
        close = difflib.get_close_matches(spec.run, list(REGISTRY), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f"; known steps: {', '.join(sorted(REGISTRY))}"
        problems.append(Problem(file, f"{loc}.run", f"unknown step {spec.run!r}{hint}"))
        return None
    try:
        params = st.params.model_validate(spec.with_)
    except ValidationError as exc:
        problems.extend(validation_problems(file, exc, prefix=(loc + ".with",)))
        return None
    timeout = spec.timeout if spec.timeout is not None else st.default_timeout
    return Step(spec.id, st, params, timeout, spec.on_failure, spec.when, spec.description)


def parse_playbook(raw: Any, file: str, problems: list[Problem]) -> Playbook | None:
    """Validate one playbook's parsed YAML; append every problem found and return None if any."""
    if not isinstance(raw, dict):
        problems.append(Problem(file, "", "expected a mapping with name, match and steps"))
        return None
    before = len(problems)
    spec: PlaybookSpec | None = None
    try:
        spec = PlaybookSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(file, exc))
    raw_steps = raw.get("steps")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        loc = f"steps[{i}]"
        step_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(step_id, str):
            if step_id in seen:
                problems.append(Problem(file, f"{loc}.id", f"duplicate step id {step_id!r}"))
            seen.add(step_id)
        try:
            step_spec = StepSpec.model_validate(item)
        except ValidationError as exc:
            problems.extend(validation_problems(file, exc, prefix=(loc,)))
            continue
        built = build_step(step_spec, file, loc, problems)
        if built is not None:
            steps.append(built)
    if spec is not None and not spec.match and not spec.match_re:
        problems.append(
            Problem(file, "match", "a playbook needs at least one label matcher (e.g. alertname)")
        )
    if spec is None or len(problems) > before:
        return None
    matcher = LabelMatcher(match=spec.match, match_re=spec.match_re)
    return Playbook(spec.name, spec.description, spec.runbook, matcher, tuple(steps), spec.dry_run, file)


class PlaybookSet:
    """All loaded playbooks; the first (by file name) whose matchers hold handles an alert."""

    def __init__(self, playbooks: list[Playbook]) -> None:
        self.playbooks = playbooks
        self.by_name = {p.name: p for p in playbooks}
        self._candidates: dict[str, tuple[Playbook, ...]] = {}

    def _for_alertname(self, alertname: str) -> tuple[Playbook, ...]:
        """The playbooks whose ``alertname`` matcher (exact or regex) admits ``alertname``, in file
        order: the webhook's hot path tries only these. Remembered per alertname; the memo is
        bounded because alertnames come from whoever can POST an alert."""
        found = self._candidates.get(alertname)
        if found is None:
            found = tuple(p for p in self.playbooks if p.matcher.admits("alertname", alertname))
            if len(self._candidates) >= _CANDIDATES_MEMO:
                self._candidates.clear()
            self._candidates[alertname] = found
        return found

    def match(self, labels: dict[str, str]) -> Playbook | None:
        alertname = labels.get("alertname")
        for p in self.playbooks if alertname is None else self._for_alertname(alertname):
            if p.matches(labels):
                return p
        return None

    def get(self, name: str, params: dict[str, Any] | None = None) -> Playbook | None:
        """The playbook called ``name``; ``params`` matter only for hand-started ones (see
        :class:`bot.oneshot.AdHocPlaybooks`)."""
        return self.by_name.get(name)

    def __len__(self) -> int:
        return len(self.playbooks)


def load_playbooks(folder: Path) -> PlaybookSet:
    """Load every ``*.yaml``/``*.yml`` file in ``folder``; raise :class:`ConfigError` listing all problems."""
    problems: list[Problem] = []
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise ConfigError([Problem(str(folder), "", "no playbooks (*.yaml) in this folder")])
    playbooks: list[Playbook] = []
    names: dict[str, str] = {}
    for path in files:
        file = str(path)
        raw = load_yaml(path, problems)
        if raw is None:
            if not any(p.file == file for p in problems):
                problems.append(Problem(file, "", "the file is empty"))
            continue
        pb = parse_playbook(raw, file, problems)
        if pb is None:
            continue
        if pb.name in names:
            problems.append(
                Problem(file, "name", f"playbook {pb.name!r} is also defined in {names[pb.name]}")
            )
            continue
        names[pb.name] = file
        playbooks.append(pb)
    if problems:
        raise ConfigError(problems)
    return PlaybookSet(playbooks)
