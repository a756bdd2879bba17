"""``make demo``: the whole loop on one machine, in one command, with nothing to set up.

It starts, on loopback and in a temporary folder, a real ``redis-server`` holding the runbook's four
namespaces (BullMQ queues, the agent cache, sessions, rate limits), ``prometheus-redis-exporter``,
Prometheus with the shipped alert rules, Alertmanager routed to the bot, and the bot itself with the
console notifier. Then it pushes Redis memory over 80%: the alert fires on its own, the bot
diagnoses, and you approve the eviction (here, or with the printed command in another terminal).
You see memory drop, the check pass, the alert resolve and the incident close. Ctrl-C stops
everything; nothing is left running.

Without the Prometheus/Alertmanager binaries (``make install`` installs them) it says how to get
them and runs ``--simulate``: the same story, with the demo delivering the alerts to the webhook
exactly as Alertmanager would.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import redis
from aiohttp import web

from bot.app import ENGINE, create_app
from bot.chat.console import ConsoleNotifier
from bot.config import load_config
from bot.formatting import human_bytes
from bot.identity import cli_actor
from bot.incidents import Incident, IncidentState
from bot.localstack import RedisServer, Stack, fast_rules, find_binary, free_port
from bot.runner import Runner
from bot.store import Store
from bot.web.routes import LINKS

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "redis-alerts.yml"
STACK_BINARIES = {
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "prometheus-redis-exporter": "prometheus-redis-exporter",
}


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def note(text: str) -> None:
    print(f"{DIM}{text}{RESET}", flush=True)


def seed(client: redis.Redis, agents: int, ratio: float) -> tuple[int, int]:
    """Fill the runbook's namespaces, then set maxmemory so usage sits at ``ratio``."""
    pipe = client.pipeline(transaction=False)
    profile = '{"name":"agent","skills":["sql","python","redis"],"bio":"' + "x" * 300 + '"}'
    for i in range(agents):
        pipe.set(f"agent:profile:{i}", profile, ex=86400)
        if i % 5000 == 4999:
            pipe.execute()
    for i in range(2000):
        pipe.hset(f"sess:{i:05d}", mapping={"user": f"u{i}", "token": "t" * 40})
        pipe.set(f"rl:api:{i:05d}", i % 100, ex=3600)
    for q in ("email", "billing"):
        pipe.rpush(f"bull:{q}:wait", *[str(j) for j in range(50)])
        pipe.set(f"bull:{q}:id", 50)
        for j in range(50):
            pipe.hset(f"bull:{q}:{j}", mapping={"name": q, "data": '{"to":"user@example.com"}'})
    pipe.execute()
    used = int(client.info("memory")["used_memory"])
    limit = int(used / ratio)
    client.config_set("maxmemory", limit)
    return used, limit


def fill(client: redis.Redis, ratio: float, start: int) -> int:
    """More cache entries until used memory passes ``ratio`` of maxmemory (what an app would do)."""
    i = start
    profile = '{"name":"agent","bio":"' + "y" * 300 + '"}'
    while True:
        info = client.info("memory")
        if info["used_memory"] / info["maxmemory"] > ratio:
            return i
        pipe = client.pipeline(transaction=False)
        for _ in range(1000):
            pipe.set(f"agent:profile:{i}", profile, ex=86400)
            i += 1
        pipe.execute()


def memory_line(client: redis.Redis) -> str:
    info = client.info("memory")
    used, limit = int(info["used_memory"]), int(info["maxmemory"])
    return f"used memory {human_bytes(used)} of maxmemory {human_bytes(limit)} ({used / limit:.0%})"


def webhook_payload(status: str, starts: str, instance: str) -> dict[str, object]:
    """A notification shaped exactly like Alertmanager's (for ``--simulate``)."""
    labels = {
        "alertname": "RedisMemoryUsageHigh",
        "instance": instance,
        "job": "redis",
        "severity": "warning",
    }
    return {
        "version": "4",
        "status": status,
        "receiver": "remediation-bot",
        "groupKey": '{}:{alertname="RedisMemoryUsageHigh"}',
        "groupLabels": {"alertname": "RedisMemoryUsageHigh"},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.demo:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "Redis memory above 80% of maxmemory"},
                "startsAt": starts,
                "endsAt": datetime.now(UTC).isoformat() if status == "resolved" else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.demo:9090/graph",
                "fingerprint": "demo0000cafe0001",
            }
        ],
    }


async def wait_incident(
    store: Store, predicate: Callable[[Incident], bool], what: str, within: float
) -> Incident:
    """Poll the store until an incident satisfies ``predicate``; say what we wait for while waiting."""
    deadline = time.monotonic() + within
    told = 0.0
    while time.monotonic() < deadline:
        for inc in await store.list_incidents(limit=20):
            if predicate(inc):
                return inc
        if time.monotonic() - told > 10:
            note(f"(waiting for {what}...)")
            told = time.monotonic()
        await asyncio.sleep(0.25)
    raise TimeoutError(f"gave up waiting for {what} after {within:.0f}s")


def ask(prompt: str) -> asyncio.Future[str]:
    """Read a line from the terminal without blocking the event loop (and without a thread, so
    Ctrl-C and a decision made in another terminal both end the wait cleanly)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    fd = sys.stdin.fileno()
    print(prompt, end="", flush=True)

    def on_input() -> None:
        line = sys.stdin.readline()
        if not answer.done():
            answer.set_result(line)

    loop.add_reader(fd, on_input)
    answer.add_done_callback(lambda _: loop.remove_reader(fd))
    return answer


async def decide(args: argparse.Namespace, runner: Runner, store: Store, inc: Incident) -> bool:
    """Approve here (prompt, or automatically with --yes / without a terminal), unless someone
    decides in another terminal first. Returns whether the eviction was approved."""
    if args.yes or not sys.stdin.isatty():
        note("(approving as demo-operator in 3 s; run the demo in a terminal to decide yourself)")
        await asyncio.sleep(3)
        answer = "y"
    else:
        typed = ask("Approve the eviction of agent:* now? [y/N] ")
        while not typed.done() and await store.pending_approval(inc.id) is not None:
            await asyncio.wait([typed], timeout=0.5)
        if not typed.done():
            typed.cancel()
            print("\ndecided in another terminal")
        answer = typed.result() if typed.done() and not typed.cancelled() else ""
    if (await store.pending_approval(inc.id)) is None:
        latest = await store.latest_approval(inc.id)
        return latest is not None and latest.state in ("approved", "executed")
    approve = answer.strip().lower() in ("y", "yes")
    report = await runner.decide(inc.id, cli_actor("demo-operator"), approve)
    print(report.message)
    return approve


async def serve_bot(
    config_path: Path, token: str, quiet: bool, port: int
) -> tuple[web.AppRunner, web.Application]:
    """The bot's service on loopback, exactly as ``serve`` runs it, with the console notifier."""
    app = create_app(
        load_config(config_path),
        notifier=ConsoleNotifier(config_path=config_path, details=not quiet),
        webhook_token=token,
        listen=f"http://127.0.0.1:{port}",
    )
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    return app_runner, app


def write_config(workdir: Path, redis_url: str, prometheus_url: str | None) -> Path:
    path = workdir / "bot.yaml"
    prom = f"prometheus: {{url: '{prometheus_url}'}}\n" if prometheus_url else ""
    path.write_text(
        "targets:\n"
        "  - name: demo-redis\n"
        "    match: {job: redis}\n"
        f"    url: {redis_url}\n"
        "    maxmemory_ceiling: 256mb\n"
        "protected_patterns: ['sess:*', 'rl:*']\n"
        "approvals: {ttl: 15m}\n" + prom
    )
    return path


async def story(
    args: argparse.Namespace,
    client: redis.Redis,
    app: web.Application,
    fire: Callable[[], Awaitable[None]],
    resolve: Callable[[], Awaitable[None]],
) -> int:
    """The part both modes share: fill memory, let the alert arrive, approve, watch it resolve."""
    store, runner = app[ENGINE].store, app[ENGINE].runner
    say("Pushing Redis memory over 80%: the cache keeps growing")
    fill(client, 0.86, args.agents)
    print(memory_line(client))
    await fire()
    inc = await wait_incident(
        store,
        lambda i: i.alertname == "RedisMemoryUsageHigh" and i.status not in ("new", "diagnosing"),
        "the RedisMemoryUsageHigh alert and the diagnostics",
        120,
    )
    if inc.status != IncidentState.AWAITING_APPROVAL:
        print(f"incident #{inc.id} ended as {inc.status}: {inc.note}")
        return 1
    say("The eviction waits for a human. Approve it here, or in another terminal with the command above.")
    if not await decide(args, runner, store, inc):
        say("Denied: nothing was changed. The alert keeps firing until someone acts.")
        return 0
    await wait_incident(
        store,
        lambda i: i.id == inc.id and i.status not in ("awaiting_approval", "remediating"),
        "the eviction and its check",
        120,
    )
    bull = sum(1 for _ in client.scan_iter(match="bull:*", count=1000))
    say(f"After: {memory_line(client)}; BullMQ keys untouched: {bull}")
    await resolve()
    final = await wait_incident(
        store, lambda i: i.id == inc.id and i.alert_status == "resolved", "the alert to resolve", 120
    )
    say(f"Incident #{final.id} is {final.status}.")
    for s in final.steps:
        print(f"  [{s.status}] {s.step_id}: {s.summary[:110]}")
    page = await app[LINKS].incident(final.id)
    charts = [s.data["chart_path"] for s in final.steps if s.data.get("chart_path")]
    for path in charts:
        print(f"  chart: {path}")
    say("The incident's page: every step, the chart, the plan, who approved, the audit")
    print(f"  {page}")
    if not args.yes and sys.stdin.isatty():
        await ask("The page is served until you press Enter. ")
    print(
        f"\nLook around: remediation-bot incidents --config {args.config_path}"
        f"  |  remediation-bot audit --config {args.config_path}"
    )
    return 0 if final.status == IncidentState.RESOLVED else 1


async def run_stack(args: argparse.Namespace, workdir: Path) -> int:
    token = secrets.token_urlsafe(16)
    with Stack(workdir) as stack:
        rds = stack.redis(["--maxmemory-policy", "noeviction"])
        client = redis.Redis(port=rds.port)
        used, limit = seed(client, args.agents, 0.70)
        # The bot listens first: Alertmanager needs its address.
        bot_port = free_port()
        am = stack.alertmanager(webhook_url=f"http://127.0.0.1:{bot_port}/alerts", bearer_token=token)
        exporter = stack.exporter(rds.redis_url)
        prom = stack.prometheus(
            scrape=[exporter.address],
            rules={"redis-alerts.yml": fast_rules(RULES.read_text())},
            alertmanagers=[am.address],
        )
        args.config_path = write_config(workdir, rds.redis_url, prom.url)
        app_runner, app = await serve_bot(args.config_path, token, args.quiet, bot_port)
        try:
            say("Running on loopback")
            print(f"  redis-server      {rds.address}  ({human_bytes(used)} used of {human_bytes(limit)})")
            print(f"  redis_exporter    {exporter.url}/metrics")
            print(
                f"  Prometheus        {prom.url}/alerts   (shipped rules, `for:` shortened to 0s for the demo)"
            )
            print(f"  Alertmanager      {am.url}")
            print(
                f"  remediation-bot   http://127.0.0.1:{bot_port}/alerts  (console notifier, CLI approvals)"
            )
            await asyncio.to_thread(prom.wait_for_value, "redis_up", lambda v: v == 1, 60)

            async def nothing() -> None:
                note("(Prometheus evaluates the rule every second; Alertmanager forwards to the bot)")

            return await story(args, client, app, nothing, nothing)
        finally:
            client.close()
            await app_runner.cleanup()


async def run_simulated(args: argparse.Namespace, workdir: Path) -> int:
    with Stack(workdir) as stack:
        rds = stack.redis(["--maxmemory-policy", "noeviction"])
        client = redis.Redis(port=rds.port)
        used, limit = seed(client, args.agents, 0.70)
        args.config_path = write_config(workdir, rds.redis_url, None)
        port = free_port()
        app_runner, app = await serve_bot(args.config_path, "", args.quiet, port)
        url = f"http://127.0.0.1:{port}/alerts"
        starts = datetime.now(UTC).isoformat()
        say(f"Redis on {rds.address} ({human_bytes(used)} of {human_bytes(limit)}); the bot on {url}")

        async def post(status: str) -> None:
            say(f"Alertmanager (simulated) -> POST {url} (RedisMemoryUsageHigh, {status})")
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=webhook_payload(status, starts, "127.0.0.1:9121")) as resp,
            ):
                print(f"webhook answered {resp.status}: {await resp.json()}")

        try:
            return await story(args, client, app, lambda: post("firing"), lambda: post("resolved"))
        finally:
            client.close()
            await app_runner.cleanup()


def missing_stack_binaries() -> list[str]:
    missing = []
    for binary, package in STACK_BINARIES.items():
        try:
            find_binary(binary, package)
        except RuntimeError:
            missing.append(package)
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bot.demo", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--yes", action="store_true", help="approve without asking")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="no Prometheus/Alertmanager: the demo posts Alertmanager's notifications itself",
    )
    p.add_argument("--agents", type=int, default=20000, help="agent cache entries to seed (default 20000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (config, state, logs)")
    p.add_argument("--quiet", action="store_true", help="summaries only, no detail tables")
    args = p.parse_args(argv)
    try:
        find_binary(RedisServer.binary, RedisServer.package)
    except RuntimeError:
        print("redis-server is not installed: run `make install`, or `sudo apt-get install -y redis-server`")
        return 1
    missing = missing_stack_binaries()
    if missing and not args.simulate:
        print(
            f"{', '.join(missing)} not installed (`sudo apt-get install -y {' '.join(missing)}`,"
            " or `make install`); running with --simulate instead."
        )
        args.simulate = True
    workdir = Path(tempfile.mkdtemp(prefix="remediation-bot-demo-"))
    try:
        return asyncio.run(run_simulated(args, workdir) if args.simulate else run_stack(args, workdir))
    except KeyboardInterrupt:
        print("\nstopped; every process was shut down")
        return 130
    except TimeoutError as exc:
        print(f"\ndemo failed: {exc}; logs are in {workdir}")
        args.keep = True
        return 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
