"""Checks before the service starts, and the loading behind ``remediation-bot check``.

``serve`` refuses a setup where anyone on the network could drive the bot: ``POST /alerts``
without ``BOT_WEBHOOK_TOKEN`` on a non-loopback address (unless the config says
``server.allow_unauthenticated: true``), or Slack tokens without a way to verify Slack's requests.
On loopback an open webhook is allowed, with a warning: only local processes reach it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from bot.chat.slack_settings import SlackSettings
from bot.config import BUNDLED_PLAYBOOKS, Config, load_config
from bot.errors import ConfigError, Problem
from bot.playbook import PlaybookSet, load_playbooks
from bot.validation import load_yaml

TOKEN_VAR = "BOT_WEBHOOK_TOKEN"  # noqa: S105 - the variable's name, not a secret


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the port to this machine (``0.0.0.0``, ``::``, ``""`` and
    host names other than ``localhost`` count as reachable from the network)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def serve_preflight(config: Config, host: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Warnings to log before serving; raises :class:`ConfigError` for a setup that must not start.

    Call it before building the app, with the address the listener will bind.
    """
    env = os.environ if env is None else env
    warnings: list[str] = []
    SlackSettings.from_env(env)  # raises when Slack could post but never verify a click
    if not env.get(TOKEN_VAR, "").strip():
        if is_loopback(host):
            warnings.append(
                f"POST /alerts accepts alerts without authentication ({TOKEN_VAR} is not set);"
                f" only processes on this machine can reach {host}"
            )
        elif config.server.allow_unauthenticated:
            warnings.append(
                f"POST /alerts on {host} accepts alerts from anyone who can reach it: {TOKEN_VAR} is not"
                " set and server.allow_unauthenticated is true"
            )
        else:
            raise ConfigError(
                [
                    Problem(
                        "environment",
                        TOKEN_VAR,
                        f"not set, and serve would listen on {host or 'every address'}: anyone who can"
                        " reach the port could open incidents. Set BOT_WEBHOOK_TOKEN (and the same bearer"
                        " token in Alertmanager's webhook_configs), listen on 127.0.0.1, or set"
                        " server.allow_unauthenticated: true in the config to accept this",
                    )
                ]
            )
    return warnings


def _playbooks_folder(path: Path) -> Path | None:
    """Where a config that failed to load says its playbooks are, so they can be checked anyway."""
    raw = load_yaml(path, [])
    value = raw.get("playbooks") if isinstance(raw, dict) else None
    if value is None:
        return BUNDLED_PLAYBOOKS
    if not isinstance(value, str) or "${" in value:
        return None
    return path.resolve().parent / value


def load_for_check(path: Path) -> tuple[Config, PlaybookSet]:
    """Config and playbooks with every problem of both reported together, even when the config
    itself is broken (its ``playbooks`` folder is still read and checked)."""
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = load_config(path)
        folder: Path | None = config.playbooks
    except ConfigError as exc:
        problems.extend(exc.problems)
        folder = _playbooks_folder(path)
    playbooks = None
    if folder is not None and folder.is_dir():
        try:
            playbooks = load_playbooks(folder)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems or config is None or playbooks is None:
        raise ConfigError(problems)
    return config, playbooks
