"""``make demo-ha``: three replicas on one PostgreSQL, one killed mid-incident, one execution.

It starts, on loopback and in a temporary folder, a throwaway PostgreSQL (:mod:`bot.localpg`), a
real ``redis-server`` holding the runbook's namespaces, and three ``remediation-bot serve``
processes sharing the database, as three pods behind one Service would. Then it pushes Redis memory
over 80% and delivers the alert (as Alertmanager would, once to one replica and a re-delivery to
another), shows which replica runs the incident, kills that replica with SIGKILL in the middle of
the diagnosis, shows another replica take the incident over when its lease lapses, approves from
the command line (twice at once, as two people clicking would) and shows exactly one execution,
the queues untouched. Ctrl-C stops everything; nothing is left running.

What it shows is held by tests too (``tests/test_leases.py``, ``tests/test_demo_ha.py``); the
demo is the one-command tour for a newcomer, built from :mod:`bot.demo`'s pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis
import yaml

from bot.config import BUNDLED_PLAYBOOKS
from bot.demo import ask, fill, memory_line, note, say, seed, wait_incident, webhook_payload, write_config
from bot.formatting import human_bytes
from bot.incidents import AuditEntry, IncidentState, StepStatus
from bot.localpg import PostgresServer, missing_reason
from bot.localstack import Process, RedisServer, Stack, find_binary
from bot.store import Store, open_store

NAMES = ("replica-a", "replica-b", "replica-c")
LEASE_TTL = 5.0
"""The demo's ``runner.lease_ttl`` (the default is 15 s): a takeover within seconds, not a minute."""
SAMPLE_S = 6
"""The MONITOR sample the demo's playbook adds: a diagnosis long enough to kill a replica during it."""
QUEUES = "bull:*"
FOREIGN_ENV = ("BOT_DATABASE_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")
"""Settings of the user's shell that would send the replicas elsewhere (another database, Slack)."""


class Replica(Process):
    """One ``remediation-bot serve`` process on a free port, ready when ``/readyz`` answers 200
    (migrations done, database reachable). Stopped like every other process of the stack."""

    ready_path = "/readyz"
    package = "the project (make install)"
    start_timeout = 60.0

    def __init__(self, workdir: Path, name: str, config: Path) -> None:
        super().__init__(workdir)
        self.name = name
        self.binary = sys.executable
        self.config = config

    def args(self) -> list[str]:
        return ["-m", "bot", "serve", "--config", str(self.config), "--port", str(self.port)]

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def owner(self) -> str:
        """How the store names this process as a lease holder (``host:pid``)."""
        return f"{socket.gethostname()}:{self.pid}"

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no shutdown, no lease released."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def write_ha_config(workdir: Path, redis_url: str, database_url: str) -> Path:
    """:func:`bot.demo.write_config`'s file, plus the shared database, the lease period, and the
    bundled playbooks with a traffic sample added to the memory playbook's diagnosis."""
    books = workdir / "playbooks"
    books.mkdir()
    for book_file in BUNDLED_PLAYBOOKS.glob("*.yaml"):
        shutil.copy(book_file, books / book_file.name)
    memory = books / "redis-memory-high.yaml"
    book = yaml.safe_load(memory.read_text())
    sample = {"id": "traffic", "run": "redis.monitor_sample", "with": {"seconds": SAMPLE_S}, "timeout": "30s"}
    book["steps"].insert(1, sample)
    memory.write_text(yaml.safe_dump(book, sort_keys=False))
    config = write_config(workdir, redis_url, None)
    with config.open("a") as f:
        f.write(
            f"database_url: {database_url}\nplaybooks: playbooks\nrunner: {{lease_ttl: {LEASE_TTL:g}s}}\n"
        )
    return config


class Story:
    """The demo's state: the processes, the store as any replica sees it, and who is who."""

    def __init__(self, args: argparse.Namespace, replicas: list[Replica], store: Store, db: Any) -> None:
        self.args = args
        self.replicas = replicas
        self.store = store
        self.db = db  # an asyncpg connection, only to show who holds a lease (not in the Store protocol)
        self.token = os.environ["BOT_WEBHOOK_TOKEN"]
        self.starts = datetime.now(UTC).isoformat()

    def name(self, owner: str | None) -> str:
        for r in self.replicas:
            if r.owner == owner:
                return r.name
        return owner or "nobody"

    async def post(self, replica: Replica, status: str) -> None:
        url = f"{replica.url}/alerts"
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as http,
            http.post(url, json=webhook_payload(status, self.starts, "127.0.0.1:9121")) as resp,
        ):
            body = await resp.json()
        kept = {k: v for k, v in body.items() if v not in ([], {}, 0)}
        print(f"  POST {replica.name}/alerts ({status}) -> {resp.status} {kept}")

    async def audit(self, kind: str, incident_id: int | None = None) -> list[AuditEntry]:
        entries = await self.store.list_audit(limit=500, incident_id=incident_id)
        return [e for e in reversed(entries) if e.kind == kind]

    async def wait_audit(self, kind: str, incident_id: int | None, within: float) -> AuditEntry:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = await self.audit(kind, incident_id)
            if found:
                return found[-1]
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {kind} audit record after {within:.0f}s")

    async def holder(self, incident_id: int) -> tuple[str | None, int]:
        row = await self.db.fetchrow(
            "SELECT lease_owner, lease_token FROM incidents WHERE id = $1", incident_id
        )
        return (row["lease_owner"], int(row["lease_token"])) if row else (None, 0)


async def approve_twice(incident_id: int, config: Path) -> list[tuple[int, str]]:
    """Two ``remediation-bot approve --yes`` at the same moment, from processes that are none of
    the replicas (``kubectl exec`` into any pod does the same): one decision wins the
    compare-and-set in PostgreSQL and runs the action; the other is told it was decided."""
    cmd = [sys.executable, "-m", "bot", "approve", str(incident_id), "--config", str(config), "--yes"]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(2):
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
    return [
        (p.returncode or 0, out.decode(errors="replace")) for p, (out, _) in zip(procs, outs, strict=True)
    ]


async def decide(story: Story, incident_id: int, config: Path) -> bool:
    """Approve (after asking, on a terminal without --yes) or deny; True when approved."""
    if story.args.yes or not sys.stdin.isatty():
        note("(approving in 3 s; run the demo in a terminal without --yes to decide yourself)")
        await asyncio.sleep(3)
    else:
        typed = ask("Approve the eviction of agent:* now? [y/N] ")
        while not typed.done() and await story.store.pending_approval(incident_id) is not None:
            await asyncio.wait([typed], timeout=0.5)
        if not typed.done():
            typed.cancel()
            print("\ndecided in another terminal")
            latest = await story.store.latest_approval(incident_id)
            return latest is not None and latest.state in ("approved", "executing", "executed")
        if typed.result().strip().lower() not in ("y", "yes"):
            cmd = [sys.executable, "-m", "bot", "deny", str(incident_id), "--config", str(config)]
            denied = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, check=False)
            print(denied.stdout.strip())
            return False
    for code, out in sorted(await approve_twice(incident_id, config)):
        print(f"  $ remediation-bot approve {incident_id} --config bot.yaml --yes   (exit {code})")
        for line in out.strip().splitlines()[-6:]:
            print(f"    {line}")
    return True


async def story_of(args: argparse.Namespace, stack: contextlib.AsyncExitStack, workdir: Path) -> int:
    say("Starting PostgreSQL, Redis and three replicas of `remediation-bot serve` on loopback")
    pg = PostgresServer()
    stack.callback(pg.cleanup)
    await asyncio.to_thread(pg.start)
    database_url = pg.create_database("remediation_bot")
    local = stack.enter_context(Stack(workdir))
    rds = local.redis(["--maxmemory-policy", "noeviction"])
    client = redis.Redis(port=rds.port)
    stack.callback(client.close)
    used, limit = seed(client, args.agents, 0.70)
    queues = sum(1 for _ in client.scan_iter(match=QUEUES, count=1000))
    config = write_ha_config(workdir, rds.redis_url, database_url)
    replicas = [Replica(workdir / "replicas", name, config) for name in NAMES]
    for r in replicas:
        stack.callback(r.stop)
    # All three at once: the schema is migrated once, under an advisory lock.
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
    store = await open_store(database_url)
    stack.push_async_callback(store.close)
    db = await asyncpg.connect(database_url)
    stack.push_async_callback(db.close)
    story = Story(args, replicas, store, db)
    print(f"  PostgreSQL        {pg.address}  (pid {pg.proc.pid if pg.proc else 0})  {database_url}")
    print(f"  redis-server      {rds.address}  (pid {rds.proc.pid if rds.proc else 0})"
          f"  {human_bytes(used)} used of {human_bytes(limit)}, {queues} BullMQ keys")  # fmt: skip
    for r in replicas:
        print(f"  {r.name}         {r.url}  (pid {r.pid})")
    print(f"  config            {config}  (runner.lease_ttl {LEASE_TTL:g}s; the default is 15s)")
    leader = await story.wait_audit("leader.elected", None, 30)
    note(
        f"Each replica accepts alerts, runs the incidents it holds a lease on, and takes over lapsed"
        f" leases; the scheduler's jobs run on one leader only: {story.name(leader.actor)}."
    )

    say("Pushing Redis memory over 80%; Alertmanager (simulated) delivers the alert, then re-delivers it")
    fill(client, 0.86, args.agents)
    print(memory_line(client))
    await story.post(replicas[0], "firing")
    await story.post(replicas[1], "firing")
    note("(one incident per alert, whichever replica a delivery reaches: the re-delivery is a duplicate)")

    def sampling(i: Any) -> bool:
        return any(s.step_id == "traffic" and s.status == StepStatus.RUNNING for s in i.steps)

    inc = await wait_incident(store, sampling, "the diagnosis to start", 60)
    owner, token = await story.holder(inc.id)
    victim = next((r for r in replicas if r.owner == owner), None)
    if victim is None:
        print(f"incident #{inc.id} is held by {owner}, not by one of the replicas")
        return 1
    say(f"{victim.name} runs incident #{inc.id} (it holds the incident's lease, fencing token {token})")
    done = ", ".join(f"{s.step_id} {s.status}" for s in inc.steps)
    print(f"  steps so far: {done}  (the demo's playbook samples traffic for {SAMPLE_S} s here)")

    say(f"kill -9 {victim.name} (pid {victim.pid}) in the middle of the diagnosis")
    victim.kill()
    killed = time.monotonic()
    note(f"(its lease lapses within {LEASE_TTL:g} s; every replica's sweeper looks for lapsed leases)")
    taken = await story.wait_audit("incident.taken_over", inc.id, 4 * LEASE_TTL + 30)
    took = time.monotonic() - killed
    say(f"{story.name(taken.actor)} took incident #{inc.id} over {took:.1f} s after the kill")
    print(
        f"  audit incident.taken_over: from {story.name(str(taken.detail.get('from')))},"
        f" token {taken.detail.get('token')}, {taken.detail.get('note')}"
    )

    inc = await wait_incident(
        store,
        lambda i: i.id == inc.id and i.status not in ("new", "diagnosing"),
        "the rest of the diagnosis",
        120,
    )
    for s in inc.steps:
        print(f"  [{s.status}] {s.step_id}: {s.summary[:100]}")
    if inc.status != IncidentState.AWAITING_APPROVAL:
        print(f"incident #{inc.id} ended as {inc.status}: {inc.note}")
        return 1
    leaders = [story.name(e.actor) for e in await story.audit("leader.elected")]
    if len(leaders) > 1:
        note(f"(the scheduler's leader moved too: {' -> '.join(leaders)})")
    third = next(r for r in replicas if r is not victim and r.owner != taken.actor)

    say(
        f"The eviction waits for a human. Approve it from the command line, next to {third.name}"
        " (as `kubectl exec` into any pod would): twice at once, as two people clicking would"
    )
    print(f"  remediation-bot approve {inc.id} --config {config}")
    approved = await decide(story, inc.id, config)
    if not approved:
        say("Denied: nothing was changed.")
        return 0
    inc = await wait_incident(
        store,
        lambda i: i.id == inc.id and i.status not in ("awaiting_approval", "remediating"),
        "the eviction and its check",
        120,
    )
    executed = await story.audit("action.executed", inc.id)
    left = sum(1 for _ in client.scan_iter(match=QUEUES, count=1000))
    say(f"Exactly one execution: {len(executed)} action.executed record(s) for incident #{inc.id}")
    for e in executed:
        print(
            f"  {e.detail.get('step')}: ok {e.detail.get('ok')}, keys deleted {e.detail.get('keys_affected')},"
            f" by {e.actor}"
        )
    print(f"  after: {memory_line(client)}")
    print(f"  BullMQ queue keys untouched: {left} of {queues}")

    await story.post(third, "resolved")
    final = await wait_incident(
        store, lambda i: i.id == inc.id and i.alert_status == "resolved", "the alert to resolve", 60
    )
    say(f"Incident #{final.id} is {final.status}.")
    ok = len(executed) == 1 and executed[0].detail.get("ok") is True and left == queues
    ok = ok and final.status == IncidentState.RESOLVED
    print("HA demo: " + ("every check held" if ok else "a check FAILED (see above)"))
    return 0 if ok else 1


async def run(args: argparse.Namespace, workdir: Path) -> int:
    async with contextlib.AsyncExitStack() as stack:
        try:
            return await story_of(args, stack, workdir)
        finally:
            say("Stopping the replicas, Redis and PostgreSQL")


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bot.demo_ha", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--yes", action="store_true", help="approve without asking")
    p.add_argument("--agents", type=int, default=20000, help="agent cache entries to seed (default 20000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (config, logs)")
    args = p.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(reason)
        return 1
    try:
        find_binary(RedisServer.binary, RedisServer.package)
    except RuntimeError:
        print("redis-server is not installed: run `make install`, or `sudo apt-get install -y redis-server`")
        return 1
    for var in FOREIGN_ENV:
        os.environ.pop(var, None)
    os.environ["BOT_WEBHOOK_TOKEN"] = secrets.token_urlsafe(16)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="remediation-bot-demo-ha-"))
    try:
        return asyncio.run(run(args, workdir))
    except KeyboardInterrupt:
        print("\nstopped; every process was shut down")
        return 130
    except (TimeoutError, RuntimeError) as exc:
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
