"""Chaos: three real ``remediation-bot serve`` replicas sharing one PostgreSQL and one Redis, and
the failures a highly available deployment must survive (issue 12's Tests section).

Every part is real and local: PostgreSQL from Debian's binaries (a fresh database of the session's
server per test, or a server of the test's own where the test restarts it), ``serve`` processes on
free loopback ports, redis-server, and the ``approve`` command as processes of their own. Failures
are injected the way they happen: ``kill -9`` of a replica, Redis stopped, PostgreSQL stopped and
started again. Load is bounded in count and time and goes to 127.0.0.1 only; every wait is for a
real condition, with a deadline.

What must hold, whichever replica a request reaches:
- re-deliveries of one alert make one incident, run once;
- concurrent approvals make exactly one execution, the others are told it was already decided;
- an alert answered 200 is in the database, even when the replica that answered is killed next;
- a replica killed mid-diagnosis has its incident finished by exactly one other;
- Redis down makes one ``RedisDown`` incident (the scheduler's leader alone probes);
- PostgreSQL restarting gives 503s (never 500s, never a lost 200), and the replicas recover by
  themselves;
- work accepted but not started yet is run after its replica dies or the database returns (it holds
  no lease yet: the sweeper also takes over open work untouched for a lease period).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis

from bot.incidents import ApprovalState, Incident, IncidentState, StepStatus
from bot.lifecycle import AlertStatus
from bot.localpg import PostgresServer
from bot.store import Store, open_store
from tests.conftest import RedisServer, alert_payload, seed_platform, wait_for
from tests.test_leases import REPO, Replica

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The tests count runs of the ping step and want each ``ok``: a 1 s threshold (not the default 10 ms)
# keeps a PING slowed by a loaded test machine from turning a run into a ``warning``.
PING = "{id: ping, run: redis.ping, with: {threshold_ms: 1000}}"
PLAYBOOKS = {
    "quick.yaml": f"name: quick\nmatch: {{alertname: ChaosQuick}}\nsteps:\n  - {PING}\n",
    "slow.yaml": (
        "name: slow\nmatch: {alertname: ChaosSlow}\nsteps:\n"
        "  - {id: watch, run: redis.monitor_sample, with: {seconds: 2}}\n"
        f"  - {PING}\n"
    ),
    "evict.yaml": (
        "name: evict\nmatch: {alertname: ChaosEvict}\nsteps:\n"
        '  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}\n'
        '  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:*", max: 0, within: 5s}}\n'
    ),
    "down.yaml": (
        "name: down\nmatch: {alertname: RedisDown}\nsteps:\n"
        "  - {id: ping, run: redis.ping, on_failure: stop}\n"
    ),
}
"""ChaosStorm has no playbook on purpose: storm alerts are stored (``unmatched``) and nothing runs,
so the storm measures the webhook and the database, not Redis work."""

QUIET = "scheduler: {enabled: false}\n"
"""For scenarios that are not about scheduled jobs."""


def _without_db_env() -> dict[str, str]:
    """The environment minus ``BOT_DATABASE_URL``: the config file alone names the database."""
    return {k: v for k, v in os.environ.items() if k != "BOT_DATABASE_URL"}


class Cluster:
    """Replicas of ``serve`` on one config (PostgreSQL ``database_url``, one Redis target, 3 s
    leases), and read access to their database for the assertions."""

    def __init__(
        self, tmp_path: Path, database_url: str, redis_url: str, extra: str, size: int, runner: str
    ) -> None:
        self.database_url = database_url
        pb = tmp_path / "playbooks"
        pb.mkdir(exist_ok=True)
        for name, text in PLAYBOOKS.items():
            (pb / name).write_text(text)
        self.config = tmp_path / "bot.yaml"
        self.config.write_text(
            f"targets:\n  - match: {{job: redis}}\n    url: {redis_url}\nplaybooks: playbooks\n"
            f"database_url: {database_url}\nrunner: {runner}\n{extra}"
        )
        self.replicas = [Replica(self.config, tmp_path / f"replica{i}.log") for i in range(size)]
        self._store: Store | None = None

    async def up(self) -> Cluster:
        await wait_for(lambda: all(r.up() for r in self.replicas), timeout=30)
        return self

    @property
    async def store(self) -> Store:
        """A store on the replicas' database (opened once), for the lifecycle's own reads."""
        if self._store is None:
            self._store = await open_store(self.database_url)
        return self._store

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Read the database directly (each call its own connection: it may have restarted)."""
        conn = await asyncpg.connect(self.database_url, timeout=5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def incident(self, inc_id: int) -> Incident:
        return await (await self.store).get_incident(inc_id)

    async def stored(self, prefix: str) -> set[str]:
        rows = await self.sql("SELECT fingerprint FROM incidents WHERE fingerprint LIKE $1", f"{prefix}-%")
        return {str(r["fingerprint"]) for r in rows}

    def tails(self) -> str:
        return "\n".join(r.log_tail() for r in self.replicas)

    async def close(self) -> None:
        for r in self.replicas:
            r.stop()
        if self._store is not None:
            await self._store.close()


Launch = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """Start a cluster of replicas and wait until each answers; stopped (logs printed, shown on a
    failure) at the end of the test. Tests list their database fixture BEFORE this one, so the
    replicas stop before their database is dropped."""
    made: list[Cluster] = []

    async def start(
        database_url: str,
        redis_url: str,
        extra: str = QUIET,
        *,
        size: int = 3,
        runner: str = "{lease_ttl: 3s}",
    ) -> Cluster:
        cluster = Cluster(tmp_path, database_url, redis_url, extra, size, runner)
        made.append(cluster)
        return await cluster.up()

    yield start
    for cluster in made:
        await cluster.close()
        print(cluster.tails())


@pytest.fixture
def own_pg(pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop and start (``pg_server`` skips when none can run)."""
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


# -- load --------------------------------------------------------------------------------------------

Outcome = int | str
"""An HTTP status, or what went wrong without one (``refused``, ``disconnected``, ``timeout``)."""


class Storm:
    """Distinct alerts (``<prefix>-00000``, ...) posted by concurrent senders, round robin over the
    replicas, until stopped or a count or time bound is reached.

    With ``failover`` an alert that got no HTTP answer (its replica died) is sent to the next
    replica, as a Service routes around a dead pod and Alertmanager retries; without it the first
    answer is final. ``final`` holds each alert's last outcome, ``attempts`` every (replica index,
    outcome) pair.
    """

    def __init__(self, replicas: list[Replica], prefix: str, *, failover: bool = False) -> None:
        self.replicas = replicas
        self.prefix = prefix
        self.failover = failover
        self.final: dict[str, Outcome] = {}
        self.attempts: Counter[tuple[int, Outcome]] = Counter()
        self.stop = asyncio.Event()
        self._next = 0
        self._template = json.dumps(alert_payload("ChaosStorm", fingerprint="@FP@"))

    def payload(self, fingerprint: str) -> str:
        """The JSON body of the storm's alert ``fingerprint`` (built once, then a substitution)."""
        return self._template.replace("@FP@", fingerprint)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.final.values() if o == outcome)

    def answered(self, outcome: Outcome) -> set[str]:
        return {fp for fp, o in self.final.items() if o == outcome}

    async def run(self, *, seconds: float, limit: int, senders: int = 8) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:

            async def sender() -> None:
                while not self.stop.is_set() and loop.time() < deadline and self._next < limit:
                    i, self._next = self._next, self._next + 1
                    await self._send(http, i)

            await asyncio.gather(*(sender() for _ in range(senders)))

    async def _send(self, http: aiohttp.ClientSession, i: int) -> None:
        fp = f"{self.prefix}-{i:05d}"
        body = self.payload(fp)
        n = len(self.replicas)
        for k in range(n if self.failover else 1):
            at = (i + k) % n
            outcome = await post(http, self.replicas[at], body)
            self.attempts[(at, outcome)] += 1
            self.final[fp] = outcome
            if isinstance(outcome, int):
                return


async def post(http: aiohttp.ClientSession, replica: Replica, body: str) -> Outcome:
    try:
        async with http.post(
            f"{replica.url}/alerts", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientConnectorError:
        return "refused"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "disconnected"
    except TimeoutError:
        return "timeout"


async def post_json(
    http: aiohttp.ClientSession, replica: Replica, payload: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"{replica.url}/alerts", json=payload) as resp:
        return resp.status, await resp.json()


# -- scenarios ---------------------------------------------------------------------------------------


async def test_redeliveries_spread_across_replicas_make_one_incident_run_once(
    pg_url: str, launch: Launch, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """Alertmanager re-sends a notification until it gets a 200, and behind a Service each attempt
    may reach another replica, at the same moment: one incident, one playbook run."""
    cluster = await launch(pg_url, redis_server.url)
    payload = alert_payload("ChaosQuick", fingerprint="fp-redelivered")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        answers = await asyncio.gather(
            *(post_json(http, r, payload) for _ in range(4) for r in cluster.replicas)
        )
    assert [status for status, _ in answers] == [200] * 12, answers
    new = [i for _, body in answers for i in body["new_incidents"]]
    assert len(new) == 1, answers
    assert sum(body["duplicates"] for _, body in answers) == 11
    rows = await cluster.sql("SELECT id FROM incidents WHERE fingerprint = 'fp-redelivered'")
    assert [r["id"] for r in rows] == new

    async def diagnosed() -> Incident | None:
        inc = await cluster.incident(new[0])
        return inc if inc.status == IncidentState.DIAGNOSED else None

    inc = await wait_for(diagnosed, timeout=20)
    assert [(s.step_id, s.status) for s in inc.steps] == [("ping", StepStatus.OK)], "the playbook ran once"


async def test_ten_concurrent_approvals_make_exactly_one_execution(
    pg_url: str, launch: Launch, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """Ten ``approve`` commands at once, each a process of its own on the shared database (as the
    replicas are): one compare-and-set wins and executes; the nine others are told who decided."""
    seed_platform(redis_sync, agents=300)
    cluster = await launch(pg_url, redis_server.url, QUIET + "approvals: {cli_approvers: []}\n")
    body = cluster.replicas[1].post(alert_payload("ChaosEvict", fingerprint="fp-approve"))
    (inc_id,) = body["new_incidents"]
    store = await cluster.store
    pending = await wait_for(lambda: store.pending_approval(inc_id), timeout=20)
    # A barrier: the test holds the approval's row lock, so each command, once it has read the
    # pending approval and applied the rules, waits at the compare-and-set; released together,
    # they race there for real (started processes alone would arrive one after another).
    barrier = await asyncpg.connect(cluster.database_url, timeout=5)
    held = barrier.transaction()
    await held.start()
    await barrier.execute("SELECT 1 FROM approvals WHERE id = $1 FOR UPDATE", pending.id)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "approve",
            str(inc_id),
            "--config",
            str(cluster.config),
            "--yes",
            "--json",
            "--as",
            f"Person {i}",
            cwd=REPO,
            env=_without_db_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(10)
    ]

    async def waiting() -> tuple[int, float]:
        """How many wait for a lock, and the longest wait so far (s). From another connection:
        within a transaction, pg_stat_activity is a snapshot."""
        (row,) = await cluster.sql(
            "SELECT count(*) AS n, coalesce(max(extract(epoch FROM now() - query_start)), 0) AS oldest"
            " FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(row["n"]), float(row["oldest"])

    async def gathered() -> bool:
        n, oldest = await waiting()
        return n >= 10 or oldest > 6.0  # the first waiter's statement deadline is 10 s

    try:
        await wait_for(gathered, timeout=40)
        at_barrier, _ = await waiting()
    finally:
        await held.rollback()
        await barrier.close()
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=45)
    results = [(p.returncode, out.decode(), err.decode()) for p, (out, err) in zip(procs, outs, strict=True)]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1, results
    assert json.loads(winners[0][1].splitlines()[-1])["executed"] is True, winners
    for code, _, err in losers:
        assert code == 3, losers
        assert (
            "already approved by cli:" in err
            or "already executing by cli:" in err
            or ("already executed by cli:" in err)
        ), err

    async def verified() -> Incident | None:
        inc = await cluster.incident(inc_id)
        return inc if inc.status == IncidentState.VERIFIED else None

    inc = await wait_for(verified, timeout=20)
    assert at_barrier >= 5, f"only {at_barrier} decisions met at the barrier"
    executed = [e for e in await store.list_audit(incident_id=inc_id) if e.kind == "action.executed"]
    assert len(executed) == 1, executed
    assert (await store.get_approval(pending.id)).state == ApprovalState.EXECUTED
    evictions = [s for s in inc.steps if s.step_id == "evict" and s.status == StepStatus.OK]
    assert len(evictions) == 1 and "300" in evictions[0].summary, inc.steps
    assert sum(1 for _ in redis_sync.scan_iter(match="agent:*")) == 0


async def test_a_storm_while_a_replica_is_killed_loses_no_alert_answered_200(
    pg_url: str, launch: Launch, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """Distinct alerts at full speed over three replicas; one is SIGKILLed mid-storm. A 200 means
    committed: every alert answered 200 (by the dead replica too, just before it died) is in the
    database; the alerts it could not answer reach another replica and are stored there."""
    cluster = await launch(pg_url, redis_server.url)
    storm = Storm(cluster.replicas, "storm", failover=True)
    running = asyncio.create_task(storm.run(seconds=20, limit=5000))
    victim = cluster.replicas[2]
    await wait_for(lambda: storm.attempts[(2, 200)] >= 200 or running.done(), timeout=20)
    victim.kill()
    at_kill = storm.count(200)
    await wait_for(lambda: storm.count(200) >= at_kill + 400 or running.done(), timeout=20)
    storm.stop.set()
    await running
    assert storm.attempts[(2, 200)] >= 200, "the victim answered before it died"
    assert storm.attempts[(2, "refused")] + storm.attempts[(2, "disconnected")] >= 1, "killed mid-storm"
    assert Counter(storm.final.values()) == Counter({200: len(storm.final)}), Counter(storm.final.values())
    assert storm.count(200) >= at_kill + 400, "the storm went on after the kill"
    stored = await cluster.stored("storm")
    lost = storm.answered(200) - stored
    assert not lost, f"{len(lost)} alerts answered 200 are not in the database: {sorted(lost)[:10]}"
    assert all(r.proc.poll() is None for r in cluster.replicas[:2])


async def test_a_replica_killed_mid_diagnosis_has_its_incident_finished_by_another(
    pg_url: str, launch: Launch, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """The replica running read-only steps dies: within a lease period one of the two others (not
    both) takes the incident over, runs the interrupted step again and finishes it."""
    cluster = await launch(pg_url, redis_server.url)
    first = cluster.replicas[0]
    (inc_id,) = first.post(alert_payload("ChaosSlow", fingerprint="fp-takeover"))["new_incidents"]

    async def watching() -> bool:
        inc = await cluster.incident(inc_id)
        return any(s.step_id == "watch" and s.status == StepStatus.RUNNING for s in inc.steps)

    await wait_for(watching, timeout=20)
    (row,) = await cluster.sql("SELECT lease_owner FROM incidents WHERE id = $1", inc_id)
    assert row["lease_owner"] == first.owner, "the replica that took the alert runs it"
    first.kill()

    async def finished() -> Incident | None:
        inc = await cluster.incident(inc_id)
        return inc if inc.status == IncidentState.DIAGNOSED else None

    inc = await wait_for(finished, timeout=25)
    assert [s.status for s in inc.steps if s.step_id == "watch"] == [StepStatus.INTERRUPTED, StepStatus.OK]
    assert [s.status for s in inc.steps if s.step_id == "ping"] == [StepStatus.OK]
    store = await cluster.store
    taken = [e for e in await store.list_audit(incident_id=inc_id) if e.kind == "incident.taken_over"]
    survivors = {r.owner for r in cluster.replicas[1:]}
    assert len(taken) == 1, taken
    assert taken[0].detail["from"] == first.owner and taken[0].actor in survivors
    assert "run again" in taken[0].detail["note"]


async def test_redis_down_makes_one_incident_across_replicas(
    pg_url: str, make_redis: Callable[..., RedisServer], launch: Launch
) -> None:
    """Each replica schedules the health probe every second, but only the scheduler's leader runs
    it: Redis stopped makes one RedisDown incident, not three; back up, the probe resolves it."""
    server = make_redis()
    extra = (
        "scheduler:\n  health_probe: {every: 1s, failures: 2, timeout: 1s}\n"
        "  backup_check: {enabled: false}\n  digest: {enabled: false}\n"
    )
    cluster = await launch(pg_url, server.url, extra)

    def probing() -> list[Replica]:
        return [r for r in cluster.replicas if r.job_runs("health_probe") >= 1]

    leaders = await wait_for(probing, timeout=20)
    assert len(leaders) == 1, "one replica leads the scheduler"
    leader = leaders[0]
    server.stop()

    async def redis_down() -> list[Incident]:
        incs = await (await cluster.store).list_incidents(limit=100, steps=False)
        return [i for i in incs if i.alertname == "RedisDown"]

    (opened,) = await wait_for(redis_down, timeout=20)
    runs = leader.job_runs("health_probe")
    await wait_for(lambda: leader.job_runs("health_probe") >= runs + 3, timeout=20)
    assert [i.id for i in await redis_down()] == [opened.id], "one RedisDown for three replicas"
    assert [r.job_runs("health_probe") for r in cluster.replicas if r is not leader] == [0, 0]
    server.start()

    async def resolved() -> bool:
        return (await cluster.incident(opened.id)).alert_status == AlertStatus.RESOLVED

    await wait_for(resolved, timeout=20)
    assert [i.id for i in await redis_down()] == [opened.id]


async def test_postgres_restarted_mid_storm_gives_503s_loses_nothing_and_the_replicas_recover(
    own_pg: PostgresServer, launch: Launch, redis_server: RedisServer
) -> None:
    """The database goes away under load and comes back: the replicas answer 503 meanwhile (so
    Alertmanager retries), never 500, and every 200 is stored; they recover without a restart
    (ready again, 200s again), and the alerts answered 503, sent again, are stored once."""
    url = own_pg.create_database("chaos")
    cluster = await launch(url, redis_server.url)
    pids = [r.proc.pid for r in cluster.replicas]
    port = own_pg.port
    storm = Storm(cluster.replicas, "pgstorm")
    running = asyncio.create_task(storm.run(seconds=40, limit=50_000))

    def unless_over(cond: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: cond() or running.done()

    await wait_for(unless_over(lambda: storm.count(200) >= 150), timeout=20)
    await asyncio.to_thread(own_pg.stop)
    await wait_for(unless_over(lambda: storm.count(503) >= 30), timeout=20)
    await asyncio.to_thread(own_pg.start)
    assert own_pg.port == port, "restarted on its own port"

    async def all_ready() -> bool:
        return all(await asyncio.gather(*(asyncio.to_thread(r.ready) for r in cluster.replicas)))

    await wait_for(all_ready, timeout=30)
    after = storm.count(200)
    await wait_for(unless_over(lambda: storm.count(200) >= after + 150), timeout=20)
    storm.stop.set()
    await running

    outcomes = Counter(storm.final.values())
    assert set(outcomes) == {200, 503}, outcomes  # no 500, no hang, no dropped connection
    assert storm.count(503) >= 30 and storm.count(200) >= after + 150, outcomes
    assert [r.proc.pid for r in cluster.replicas] == pids and all(
        r.proc.poll() is None for r in cluster.replicas
    )
    stored = await cluster.stored("pgstorm")
    lost = storm.answered(200) - stored
    assert not lost, f"{len(lost)} alerts answered 200 are not in the database: {sorted(lost)[:10]}"

    # Alertmanager sends the 503s again: each replica takes them, and each alert is stored once.
    retry = sorted(storm.answered(503))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        again = await asyncio.gather(
            *(post(http, cluster.replicas[i % 3], storm.payload(fp)) for i, fp in enumerate(retry))
        )
    assert Counter(again) == Counter({200: len(retry)})
    rows = await cluster.sql(
        "SELECT count(*) AS n, count(DISTINCT fingerprint) AS d FROM incidents WHERE fingerprint LIKE 'pgstorm-%'"
    )
    assert rows[0]["n"] == rows[0]["d"] == len(storm.final), (rows[0], len(storm.final))


async def test_work_accepted_but_not_started_is_run_after_its_replica_dies_or_the_database_returns(
    own_pg: PostgresServer, launch: Launch, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    """A 200 promises the alert is handled, not only stored. One worker per replica, busy with a
    slow diagnosis, so a second incident waits in that replica's queue; then (1) the replica is
    killed, (2) on another replica, the database goes away and comes back. Either way another
    replica (or the same one) must run the queued incident, as the running one is taken over."""
    url = own_pg.create_database("chaos")
    cluster = await launch(url, redis_server.url, runner="{lease_ttl: 3s, concurrency: 1}")

    async def state(inc_id: int) -> str:
        (row,) = await cluster.sql("SELECT state FROM incidents WHERE id = $1", inc_id)
        return str(row["state"])

    async def busy_and_queued(replica: Replica, tag: str) -> tuple[int, int]:
        (busy,) = replica.post(alert_payload("ChaosSlow", fingerprint=f"busy-{tag}"))["new_incidents"]

        async def watching() -> bool:
            inc = await cluster.incident(busy)
            return any(s.step_id == "watch" and s.status == StepStatus.RUNNING for s in inc.steps)

        await wait_for(watching, timeout=20)
        (queued,) = replica.post(alert_payload("ChaosQuick", fingerprint=f"queued-{tag}"))["new_incidents"]
        assert await state(queued) == IncidentState.NEW, "queued behind the busy worker"
        return busy, queued

    async def finished(*ids: int, timeout: float) -> dict[int, str]:
        async def done() -> bool:
            return all([await state(i) == IncidentState.DIAGNOSED for i in ids])

        with contextlib.suppress(AssertionError):
            await wait_for(done, timeout=timeout)
        return {i: await state(i) for i in ids}

    # (1) The replica dies: a lease period plus a sweep, and both run elsewhere.
    busy, queued = await busy_and_queued(cluster.replicas[0], "kill")
    cluster.replicas[0].kill()
    assert await finished(busy, queued, timeout=12) == {busy: "diagnosed", queued: "diagnosed"}

    # (2) The database goes away while the step runs: its result cannot be written, then the
    # worker turns to the queued incident and cannot take its lease either.
    second = cluster.replicas[1]
    busy, queued = await busy_and_queued(second, "outage")
    await asyncio.to_thread(own_pg.stop)
    await wait_for(lambda: second.log_path.read_text().count("runner failed") >= 2, timeout=15)
    await asyncio.to_thread(own_pg.start)
    assert await finished(busy, queued, timeout=20) == {busy: "diagnosed", queued: "diagnosed"}
