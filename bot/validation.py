"""Turning YAML files into validated models while collecting every problem with its file and field.

Both the config and the playbooks go through here, so users get one consistent format:
``FILE: field.path: message``, all problems at once (opsdroid's stop-at-the-first is what we avoid).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from bot.errors import Problem

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def load_yaml(path: Path, problems: list[Problem]) -> Any:
    """Parse a YAML file; syntax errors become a problem with line and column, not an exception."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(name, "", f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(Problem(name, where, f"invalid YAML: {exc.problem or exc}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(name, "", f"invalid YAML: {exc}"))
    return None


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("targets", 0, "url")`` -> ``targets[0].url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problems(file: str, exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """One :class:`Problem` per pydantic error, with a readable field path and message."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        elif msg.startswith("Assertion failed, "):
            msg = msg.removeprefix("Assertion failed, ")
        problems.append(Problem(file, field_path(prefix + loc), msg))
    return problems


def interpolate_env(
    value: Any,
    file: str,
    problems: list[Problem],
    loc: tuple[int | str, ...] = (),
    env: dict[str, str] | None = None,
) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    Secrets (Redis passwords) stay out of the file. A variable that is unset and has no default is
    reported as a problem at its field, instead of silently becoming an empty password.
    """
    environ = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: interpolate_env(v, file, problems, (*loc, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, file, problems, (*loc, i), env) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(Problem(file, field_path(loc), f"environment variable {name} is not set"))
            return ""

        return _ENV.sub(repl, value)
    return value


class StrictModel(BaseModel):
    """Our own files: unknown keys are errors, so a typo is never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
