"""Operating the guardrails from the command line: kill switch, circuit breaker, audit trail.

Each command opens the store, does one thing and closes it; every change is audited with the
operator's identity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from bot.config import Config
from bot.metrics import Metrics
from bot.runner import KILL_SWITCH, BreakerStatus, Guardrails
from bot.store import open_store

EXIT_OK, EXIT_USAGE = 0, 2


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    a = cmd("audit", "Show the audit trail (append-only).")
    a.add_argument("--json", action="store_true")
    a.add_argument("--incident", type=int)
    a.add_argument("--limit", type=int, default=200)

    k = cmd("kill-switch", "Stop (on) or allow (off) every action at once, across all processes.")
    k.add_argument("state", choices=["on", "off", "status"])
    k.add_argument("--reason", default="")

    b = cmd(
        "breaker", "Inspect or reset the circuit breaker of a target (actions per hour, failures in a row)."
    )
    b.add_argument("action", choices=["status", "reset"])
    b.add_argument("target", nargs="?", help="target name (status: every configured target when omitted)")
    b.add_argument("--as", dest="actor", help="display name shown beside your account in the audit")
    b.add_argument("--reason", default="", help="why (recorded in the audit trail)")
    b.add_argument("--json", action="store_true")


async def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    store = await open_store(config)
    try:
        entries = await store.list_audit(limit=args.limit, incident_id=args.incident)
    finally:
        await store.close()
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return EXIT_OK
    for e in entries:
        inc = f"#{e.incident_id}" if e.incident_id is not None else "-"
        detail = ", ".join(f"{k}={v}" for k, v in e.detail.items() if v not in (None, "", [], {}))
        who = e.actor or "-"
        ph = f" plan={e.plan_hash[:12]}" if e.plan_hash else ""
        print(f"{e.ts} {e.kind:<18} {inc:<6} {who:<28} {e.target or '-'}{ph}  {detail}")
    return EXIT_OK


async def cmd_kill_switch(args: argparse.Namespace, config: Config, actor: str) -> int:
    store = await open_store(config)
    try:
        if args.state == "status":
            value = await store.get_setting(KILL_SWITCH)
        else:
            value = f"on since {datetime.now(UTC):%Y-%m-%d %H:%M}Z by {actor}"
            if args.reason:
                value += f": {args.reason}"
            await store.set_setting(KILL_SWITCH, value if args.state == "on" else None, actor=actor)
            value = value if args.state == "on" else None
    finally:
        await store.close()
    if config.guardrails.kill_switch:
        print("kill switch: ON in the config file (guardrails.kill_switch)")
    print(f"kill switch: {'ON (' + value + ')' if value else 'off'}")
    return EXIT_OK


def _targets(config: Config) -> list[str]:
    names = []
    for t in config.targets:
        if not t.label_names():
            names.append(t.target_name({}))
    return names


def _line(s: BreakerStatus) -> str:
    state = f"OPEN: {s.open_reason}" if s.open_reason else "closed"
    return (
        f"{s.target}: {state}\n  actions in the last hour: {s.actions_last_hour} (limit {s.limit_per_hour});"
        f" failed in a row: {s.failures_in_a_row} (pause after {s.pause_after_failures})"
    )


async def cmd_breaker(args: argparse.Namespace, config: Config, actor: str) -> int:
    store = await open_store(config)
    guard = Guardrails(config, store, Metrics())
    try:
        if args.action == "reset":
            if not args.target:
                print(
                    "error: say which target to reset: `remediation-bot breaker reset TARGET`",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            statuses = [await guard.reset_breaker(args.target, actor, args.reason)]
        else:
            names = [args.target] if args.target else _targets(config)
            statuses = [await guard.breaker(n) for n in names]
    finally:
        await store.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "target": s.target,
                        "open": s.open_reason is not None,
                        "reason": s.open_reason,
                        "actions_last_hour": s.actions_last_hour,
                        "limit_per_hour": s.limit_per_hour,
                        "failures_in_a_row": s.failures_in_a_row,
                        "pause_after_failures": s.pause_after_failures,
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
    else:
        if args.action == "reset":
            print(f"breaker of {args.target} reset by {actor}")
        for s in statuses:
            print(_line(s))
        if not statuses:
            print("no targets without alert labels in the config; name one: `breaker status TARGET`")
    return EXIT_OK
