"""Command line: ``python -m bot`` (also installed as ``remediation-bot``).

Commands follow the contract in the design: serve, check, run, incidents, approve, deny, plus audit
and kill-switch. Errors are one clear message on stderr and a non-zero exit code, never a traceback:
0 success, 1 error or problems found, 2 usage, 3 nothing to decide / already decided (or expired),
4 a decision refused (not an approver, your own request, the same person twice, kill switch, circuit
breaker, plan changed) or an approved action that did not run, or ran and failed or was stopped
part-way. Whoever runs a command is its OS account
(:mod:`bot.identity`); ``--as`` only adds a display name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot import __version__
from bot.alerts import Alert
from bot.cli_ops import add_parsers as add_ops_parsers
from bot.cli_ops import cmd_audit, cmd_breaker, cmd_kill_switch
from bot.config import Config, load_config
from bot.engine import Engine
from bot.errors import AlreadyDecided, ApprovalError, BotError, ConfigError, IdentityError, NotFound, Problem
from bot.identity import Actor, cli_actor
from bot.logs import setup_logging
from bot.notifier import Notifier
from bot.playbook import PlaybookSet, load_playbooks
from bot.redisconn import RedisTarget, default_name, redact_url
from bot.runner import FAILED_STATUSES
from bot.store import IngestItem, Store, open_store

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFLICT, EXIT_REFUSED = 0, 1, 2, 3, 4
log = logging.getLogger("bot")

EPILOG = """\
examples:
  remediation-bot check --config bot.yaml
  remediation-bot serve --config bot.yaml --port 8080
  remediation-bot run redis-memory-high --config bot.yaml --target redis://127.0.0.1:6379/0 --dry-run
  remediation-bot incidents --config bot.yaml --json
  remediation-bot approve 12 --config bot.yaml
environment:
  BOT_WEBHOOK_TOKEN   bearer token Alertmanager must send to POST /alerts
                      (unset: serve starts only on loopback, or with server.allow_unauthenticated)
  SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, SLACK_APP_TOKEN   Slack (unset: console notifier)
  SLACK_API_URL       Slack Web API base URL (a proxy, Enterprise Grid, or a local fake)
  PROMETHEUS_BEARER_TOKEN, PROMETHEUS_USERNAME, PROMETHEUS_PASSWORD   Prometheus credentials
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remediation-bot",
        description="Runs the Redis runbook: Alertmanager alerts -> playbooks -> diagnostics -> approved fixes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument(
            "--config", "-c", required=True, type=Path, metavar="FILE", help="the bot's YAML config"
        )
        c.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        return c

    s = cmd("serve", "Run the service: webhook, runner, Slack, scheduler.")
    s.add_argument("--host", help="listen address (default: server.host in the config, 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default: server.port in the config, 8080)")
    s.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    s.set_defaults(log_level="INFO")

    c = cmd("check", "Validate the config and every playbook; list all problems; probe the targets.")
    c.add_argument("--offline", action="store_true", help="do not connect to the targets")
    c.add_argument("--strict", action="store_true", help="exit 1 when a target check warns")

    r = cmd(
        "run",
        "Run a playbook by hand against a target; actions still need approval, from someone other than"
        " you unless approvals.allow_self_approval is true.",
    )
    r.add_argument("playbook", help="playbook name (see `check`)")
    r.add_argument(
        "--target", "-t", help="Redis URL or target name from the config (default: the only target)"
    )
    r.add_argument("--dry-run", action="store_true", help="actions only report their plan")
    r.add_argument("--json", action="store_true", help="print the incident as JSON at the end")

    i = cmd("incidents", "List incidents, newest first.")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--open", action="store_true", help="only incidents still being worked on")
    i.add_argument("--limit", type=int, default=50)
    i.add_argument("id", nargs="?", type=int, help="show one incident in full")

    for verb in ("approve", "deny"):
        d = cmd(verb, f"{verb.capitalize()} the step waiting for approval in incident ID.")
        d.add_argument("id", type=int, help="incident id (see `incidents`)")
        d.add_argument(
            "--as",
            dest="actor",
            metavar="NAME",
            help='a display name shown next to you, e.g. "Alice Smith"; you are always your OS account'
            " (cli:ACCOUNT, the sudo caller behind sudo), and a name never counts as a second approver",
        )
        d.add_argument(
            "--yes", "-y", action="store_true", help="do not show the plan and ask first (on a terminal)"
        )
        d.add_argument("--json", action="store_true")

    add_ops_parsers(cmd)
    return p


def _load(path: Path) -> tuple[Config, PlaybookSet]:
    """Config and playbooks, with the problems of both reported together."""
    problems: list[Problem] = []
    config = load_config(path)
    try:
        playbooks = load_playbooks(config.playbooks)
    except ConfigError as exc:
        problems.extend(exc.problems)
        raise ConfigError(problems) from None
    from bot.oneshot import with_adhoc_playbooks

    # Evictions asked for in Slack (`/redis evict`) must resolve here too, for `approve`/`deny`.
    return config, with_adhoc_playbooks(playbooks)


def _actor(display: str | None = None) -> Actor:
    """Who runs this command: the OS account, never a name typed on the command line."""
    try:
        return cli_actor(display)
    except IdentityError as exc:
        raise IdentityError(
            f"--as {display!r}: {exc}; it is only a name shown next to your OS account"
        ) from None


def _print_incident_line(inc: Any) -> None:
    pending = f"  waiting: {inc.pending_step['id']} ({inc.pending_step['type']})" if inc.pending_step else ""
    print(
        f"#{inc.id:<5} {inc.created_at}  {inc.status:<18} {inc.alert_status:<8} {inc.alertname:<24}"
        f" {inc.target or '-'}{pending}"
    )


def _print_incident(inc: Any) -> None:
    print(f"Incident #{inc.id}: {inc.alertname} ({inc.alert_status}), status {inc.status}")
    print(f"  target: {inc.target or '-'}   playbook: {inc.playbook or '-'}   started: {inc.starts_at}")
    if inc.note:
        print(f"  note: {inc.note}")
    for s in inc.steps:  # in full: the chats show a digest and point here for the rest
        print(f"  [{s.status}] {s.step_id} ({s.step_type}): {s.summary}")
        if s.error and s.error != s.summary:
            print(f"      error: {s.error}")
        if s.details.strip():
            print(textwrap.indent(s.details.rstrip(), "      "))
    if inc.pending_step:
        print(
            f"  waiting for approval: {inc.pending_step['id']} -> remediation-bot approve {inc.id} --config ..."
        )


async def _with_store(config: Config) -> Store:
    return await open_store(config)


async def cmd_incidents(args: argparse.Namespace, config: Config) -> int:
    store = await _with_store(config)
    try:
        if args.id is not None:
            inc = await store.get_incident(args.id)
            if args.json:
                print(inc.model_dump_json(indent=2))
            else:
                from bot.web.links import PageLinks

                _print_incident(inc)
                print(f"  page: {await PageLinks(config, lambda: store).incident(inc.id)}")
            return EXIT_OK
        incidents = await store.list_incidents(limit=args.limit, open_only=args.open)
    finally:
        await store.close()
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in incidents], indent=2))
    elif not incidents:
        print("no incidents")
    else:
        for inc in incidents:
            _print_incident_line(inc)
    return EXIT_OK


def _cli_notifier(config: Config, engine: Engine, console: Notifier) -> Notifier:
    """The console, plus Slack when its tokens are set: a decision taken here must also replace
    the buttons in the incident's Slack thread, or a later click would meet a stale message."""
    from bot.chat.slack_settings import SlackSettings

    slack = SlackSettings.from_env()
    if slack is None or not config.slack.channel:
        return console
    from bot.chat.slack import SlackNotifier
    from bot.chat.slack_app import web_client
    from bot.notifier import FanoutNotifier

    return FanoutNotifier(console, SlackNotifier(web_client(slack), config.slack, engine))


def _confirm(step_id: str, plan: dict[str, Any], plan_hash: str) -> bool:
    """On a terminal, show the exact plan and ask: at 3 a.m. nobody should approve blind."""
    from bot.planview import describe_plan

    print(f"Step {step_id} will do this (plan {plan_hash[:12]}):")
    print(describe_plan(plan))
    try:
        return input("Approve? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def cmd_decide(args: argparse.Namespace, config: Config, playbooks: PlaybookSet, approve: bool) -> int:
    from bot.chat.console import ConsoleNotifier

    engine = Engine(config, playbooks, workers=False)
    engine.notifier = _cli_notifier(
        config,
        engine,
        ConsoleNotifier(stream=sys.stderr if args.json else sys.stdout, config_path=args.config),
    )
    actor = _actor(args.actor)
    print(
        f"{'approving' if approve else 'denying'} as {actor.label}",
        file=sys.stderr if args.json else sys.stdout,
    )
    async with engine:
        shown: dict[str, Any] = {}
        if approve and not args.yes and not args.json and sys.stdin.isatty():
            pending = await engine.store.pending_approval(args.id)
            if pending is not None:
                if not _confirm(pending.step_id, pending.plan, pending.plan_hash):
                    print("not approved; nothing was changed")
                    return EXIT_OK
                # Bind the decision to what was shown: a re-plan meanwhile must be looked at again.
                shown = {"approval_id": pending.id, "plan_hash": pending.plan_hash}
        report = await engine.runner.decide(args.id, actor, approve, **shown)
    if args.json:
        print(
            json.dumps(
                {
                    "incident": report.incident_id,
                    "approval": report.approval.id,
                    "state": str(report.approval.state),
                    "executed": report.executed,
                    "message": report.message,
                    **report.extra,
                }
            )
        )
    else:
        print(f"incident #{report.incident_id}: {report.message}")
    # A decision that did not lead to what was asked (refused at execution) is not a success, and
    # neither is an action that ran and failed or was stopped part-way (kill switch, cap): a script
    # must not read "exit 0" as "the fix was applied".
    if report.extra.get("refused"):
        return EXIT_REFUSED
    if report.executed and report.result is not None and report.result.status in FAILED_STATUSES:
        return EXIT_REFUSED
    return EXIT_OK


def _resolve_target(config: Config, given: str | None) -> tuple[str, int | None, RedisTarget]:
    """A target for a hand-started run: a config target by name or URL, or an ad-hoc URL."""
    if given is None:
        plain = [t for t in config.targets if not t.label_names()]
        if len(plain) != 1:
            raise BotError("say which target with --target (a Redis URL or a target name from the config)")
        given = plain[0].name or plain[0].where
    for i, t in enumerate(config.targets):
        if given in (t.name, t.where, t.label) or (not t.label_names() and redact_url(t.where) == given):
            rt = t.resolve({}, config.runner.redis_timeout)
            return rt.name, i, rt
    if not given.startswith(("redis://", "rediss://", "unix://")):
        raise BotError(f"--target {given!r} is neither a target name from the config nor a redis:// URL")
    rt = RedisTarget(name=default_name(given), url=given, timeout=config.runner.redis_timeout)
    return rt.name, None, rt


async def cmd_run(args: argparse.Namespace, config: Config, playbooks: PlaybookSet) -> int:
    from bot.chat.console import ConsoleNotifier

    pb = playbooks.get(args.playbook)
    if pb is None:
        names = ", ".join(p.name for p in playbooks.playbooks)
        raise BotError(f"no playbook named {args.playbook!r}; known: {names}")
    name, index, rt = _resolve_target(config, args.target)
    requester = _actor()  # the requester of the run's actions may not approve them alone
    labels = {"alertname": pb.matcher.match.get("alertname", pb.name), "bot_target": name}
    alert = Alert.model_validate(
        {
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": f"{pb.name} run by hand"},
            "startsAt": datetime.now(UTC).isoformat(),
            "fingerprint": f"manual-{datetime.now(UTC).timestamp()}",
        }
    )
    notifier = ConsoleNotifier(stream=sys.stderr if args.json else sys.stdout, config_path=args.config)
    async with Engine.open(
        config,
        notifier,
        playbooks=playbooks,
        workers=False,
        ad_hoc_targets={name: rt} if index is None else None,
    ) as engine:
        inc_id = await engine.store.open_incident(
            IngestItem(alert, pb.name, name, index, f"run by hand by {requester.label}", "cli"),
            dry_run=args.dry_run,
            requested_by=requester.key,
        )
        inc = await engine.runner.run_incident(inc_id)
    if args.json:
        print(inc.model_dump_json(indent=2))
    elif inc.pending_step and index is None:
        print(
            f"note: {name} is not in the config, so only this command's process knew its URL;"
            " add it to `targets` to approve from another process"
        )
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from bot.oneshot import with_adhoc_playbooks
    from bot.preflight import load_for_check
    from bot.target_check import probe_and_print

    config, playbooks = load_for_check(args.config)
    playbooks = with_adhoc_playbooks(playbooks)
    print(f"config OK: {args.config}")
    print(f"  targets: {len(config.targets)}; state: {config.state_location}")
    print(f"  protected patterns: {', '.join(config.protected_patterns)}")
    print(f"  playbooks ({len(playbooks)}) from {config.playbooks}:")
    for pb in playbooks.playbooks:
        gated = sum(1 for s in pb.steps if s.mutating)
        print(f"    {pb.name:<24} {len(pb.steps)} steps ({gated} need approval)  {pb.description[:60]}")
    return probe_and_print(config, playbooks, offline=args.offline, strict=args.strict)


def cmd_serve(args: argparse.Namespace, config: Config, playbooks: PlaybookSet) -> int:
    from aiohttp import web

    from bot.app import create_app
    from bot.chat.console import ConsoleNotifier
    from bot.chat.slack_settings import SlackSettings

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    from bot.preflight import serve_preflight

    for warning in serve_preflight(config, host):
        log.warning("%s", warning)
    slack = SlackSettings.from_env()  # Slack tokens in the environment: Slack is the notifier
    notifier = None if slack is not None else ConsoleNotifier(config_path=args.config)
    from bot.web.links import listen_base

    app = create_app(
        config, playbooks=playbooks, notifier=notifier, slack=slack, listen=listen_base(host, port)
    )
    print(
        f"remediation-bot {__version__} listening on http://{host}:{port} "
        f"({len(playbooks)} playbooks, {len(config.targets)} targets, state {config.state_location}"
        + (f"; Slack via {slack.modes} in {config.slack.channel}" if slack else "")
        + ")",
        flush=True,
    )
    from bot.app import tune_runtime

    tune_runtime()
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        handle_signals=True,
        # aiohttp has no header timeout, but its keep-alive timer runs from the moment a connection
        # opens (and again after each response) and closes it while no complete request has come:
        # a slowloris client dribbling header lines is cut off at this deadline.
        keepalive_timeout=config.server.header_timeout,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, json_format=getattr(args, "log_json", False))
    try:
        if args.command == "check":
            return cmd_check(args)
        config, playbooks = _load(args.config)
        if args.command == "serve":
            return cmd_serve(args, config, playbooks)
        if args.command == "incidents":
            return asyncio.run(cmd_incidents(args, config))
        if args.command in ("approve", "deny"):
            return asyncio.run(cmd_decide(args, config, playbooks, args.command == "approve"))
        if args.command == "audit":
            return asyncio.run(cmd_audit(args, config))
        if args.command == "kill-switch":
            return asyncio.run(cmd_kill_switch(args, config, _actor().label))
        if args.command == "breaker":
            return asyncio.run(cmd_breaker(args, config, _actor(args.actor).label))
        if args.command == "run":
            return asyncio.run(cmd_run(args, config, playbooks))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (AlreadyDecided, NotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except IdentityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApprovalError as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
