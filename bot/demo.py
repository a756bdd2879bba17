"""``make demo``: the whole bot on the embedded default, in one command, with nothing to set up.

It starts a throwaway ``redis-server`` on loopback holding the runbook's four namespaces (BullMQ
queues, the agent cache, sessions, rate limits) with memory pushed over 80% of ``maxmemory``, runs
the bot with the console notifier, and delivers a RedisMemoryUsageHigh alert to its webhook exactly
as Alertmanager would. You watch the diagnostics, approve the eviction (here, or with the printed
command in another terminal), see memory drop and the check pass, then the alert resolve.
Ctrl-C stops everything; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import redis
from aiohttp import web

from bot.app import RUNNER, STORE, create_app
from bot.chat.console import ConsoleNotifier
from bot.config import load_config
from bot.incidents import IncidentState
from bot.planview import human_bytes

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        sys.exit(
            "redis-server is not installed: run `make install`, or `sudo apt-get install -y redis-server`"
        )
    port = free_port()
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            time.sleep(0.05)
        else:
            sys.exit(f"redis-server did not start; see {workdir / 'redis.log'}")
        client.close()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def seed(port: int, agents: int) -> tuple[int, int]:
    """Fill the runbook's namespaces, then set maxmemory so usage sits at about 85%."""
    r = redis.Redis(port=port)
    pipe = r.pipeline(transaction=False)
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
    used = int(r.info("memory")["used_memory"])
    limit = int(used / 0.85)
    r.config_set("maxmemory", limit)
    r.close()
    return used, limit


def alert(status: str, starts: str, port: int) -> dict[str, object]:
    labels = {
        "alertname": "RedisMemoryUsageHigh",
        "instance": "127.0.0.1:9121",
        "job": "redis",
        "severity": "warning",
        "redis": f"127.0.0.1:{port}",
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


async def run_demo(args: argparse.Namespace, workdir: Path) -> int:
    with redis_server(workdir) as port:
        say(f"Redis on 127.0.0.1:{port} with queues (bull:*), agent cache, sessions and rate limits")
        used, limit = seed(port, args.agents)
        print(f"used memory {human_bytes(used)} of maxmemory {human_bytes(limit)} ({used / limit:.0%})")
        cfg_path = workdir / "bot.yaml"
        cfg_path.write_text(
            "targets:\n"
            "  - name: demo-redis\n"
            "    match: {job: redis}\n"
            f"    url: redis://127.0.0.1:{port}/0\n"
            "    maxmemory_ceiling: 256mb\n"
            "protected_patterns: ['sess:*', 'rl:*']\n"
            "approvals: {ttl: 15m}\n"
        )
        config = load_config(cfg_path)
        app = create_app(
            config, notifier=ConsoleNotifier(config_path=cfg_path, details=not args.quiet), webhook_token=""
        )
        runner = web.AppRunner(app)
        await runner.setup()
        bot_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", bot_port).start()
        try:
            return await _story(args, app, bot_port, port, cfg_path)
        finally:
            await runner.cleanup()


async def _story(
    args: argparse.Namespace, app: web.Application, bot_port: int, port: int, cfg_path: Path
) -> int:
    store, runner = app[STORE], app[RUNNER]
    starts = datetime.now(UTC).isoformat()
    say(f"Alertmanager -> POST http://127.0.0.1:{bot_port}/alerts (RedisMemoryUsageHigh, firing)")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{bot_port}/alerts", json=alert("firing", starts, port)
        ) as resp:
            body = await resp.json()
            print(f"webhook answered {resp.status}: {body}")
        inc_id = body["new_incidents"][0]

        async def state() -> IncidentState:
            return (await store.get_incident(inc_id, steps=False)).status

        while await state() in (IncidentState.NEW, IncidentState.DIAGNOSING):  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.1)
        if await state() != IncidentState.AWAITING_APPROVAL:
            print(f"incident ended as {await state()}; nothing to approve")
            return 1
        say("The eviction waits for a human. Approve it here, or in another terminal with the command above.")
        decided = await _approve(args, runner, inc_id, store)
        if not decided:
            return 0
        while await state() in (IncidentState.AWAITING_APPROVAL, IncidentState.REMEDIATING):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        r = redis.Redis(port=port)
        info = r.info("memory")
        bull = sum(1 for _ in r.scan_iter(match="bull:*", count=1000))
        r.close()
        say(
            f"After: used memory {human_bytes(info['used_memory'])} of {human_bytes(info['maxmemory'])}"
            f" ({info['used_memory'] / info['maxmemory']:.0%}); BullMQ keys untouched: {bull}"
        )
        say("Alertmanager -> the alert resolved")
        async with http.post(
            f"http://127.0.0.1:{bot_port}/alerts", json=alert("resolved", starts, port)
        ) as resp:
            print(f"webhook answered {resp.status}: {await resp.json()}")
        await asyncio.sleep(0.3)
        inc = await store.get_incident(inc_id)
        say(
            f"Incident #{inc.id} is {inc.status}. Try: remediation-bot incidents --config {cfg_path}"
            f" / remediation-bot audit --config {cfg_path}"
        )
        for s in inc.steps:
            print(f"  [{s.status}] {s.step_id}: {s.summary[:110]}")
        return 0 if inc.status == IncidentState.RESOLVED else 1


async def _approve(args: argparse.Namespace, runner: object, inc_id: int, store: object) -> bool:
    from bot.runner import Runner
    from bot.store import Store

    assert isinstance(runner, Runner) and isinstance(store, Store)
    if args.yes or not sys.stdin.isatty():
        print(
            f"{DIM}(non-interactive: approving as demo-operator in 2 s; use a terminal to decide yourself){RESET}"
        )
        await asyncio.sleep(2)
        answer = "y"
    else:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, input, "Approve the eviction of agent:* now? [y/N] ")
    if (await store.pending_approval(inc_id)) is None:
        return True  # decided in another terminal meanwhile
    if answer.strip().lower() not in ("y", "yes"):
        report = await runner.decide(inc_id, "demo-operator", False)
        print(report.message)
        return False
    report = await runner.decide(inc_id, "demo-operator", True)
    print(report.message)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bot.demo", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    p.add_argument("--yes", action="store_true", help="approve without asking")
    p.add_argument("--agents", type=int, default=30000, help="agent cache entries to seed (default 30000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (config, state, logs)")
    p.add_argument("--quiet", action="store_true", help="summaries only, no detail tables")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="remediation-bot-demo-"))
    try:
        return asyncio.run(run_demo(args, workdir))
    except KeyboardInterrupt:
        print("\nstopped; everything was shut down")
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
