"""Slack end to end: the real service, a real redis-server, and a fake Slack Web API on port 0.

Alerts arrive on ``POST /alerts`` as Alertmanager sends them; clicks and slash commands arrive on
``POST /slack/events`` signed exactly as Slack signs them. Assertions read what the fake recorded
(messages as they look after their edits, ephemerals, response_url posts) and what Redis holds.
The tests of decisions (clicks, double clicks, stale and expired buttons, two approvers, the CLI
approving what Slack asked) take ``backend``: they run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import TestClient, TestServer

from bot.alerts import Alert
from bot.app import ENGINE, create_app
from bot.chat.slack import SlackNotifier
from bot.chat.slack_commands import COMMAND
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.engine import Engine
from bot.errors import ConfigError
from bot.identity import cli_actor
from bot.incidents import IncidentState, StepStatus
from bot.runner import Runner
from bot.store import IngestItem, StepResult, Store
from tests.conftest import RecordingNotifier, RedisServer, alert_payload, seed_platform, wait_for
from tests.slack_fake import (
    Message,
    SlackFake,
    block_actions_body,
    forged_signature,
    signed_headers,
    slash_command_body,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0INCIDENTS"
ALICE, BOB, CAROL, MALLORY = "UALICE", "UBOB", "UCAROL", "UMALLORY"
GROUP_ID = "S0ONCALL"

PLAYBOOKS = {
    "evict.yaml": """\
name: evict-test
match: {alertname: TestEvict}
steps:
  - {id: memory, run: redis.info, with: {section: memory}}
  - {id: evict, run: redis.evict, with: {pattern: "agent:*", batch: 100}}
  - {id: check, run: redis.verify_key_count, with: {pattern: "agent:[0-9]*", max: 0, within: 5s}}
""",
    "flush.yaml": """\
name: flush-test
match: {alertname: TestFlush}
steps:
  - {id: flush, run: redis.flushdb, with: {snapshot_first: false}}
""",
    "diag.yaml": """\
name: diag-test
match: {alertname: TestDiag}
steps:
  - {id: ping, run: redis.ping}
  - {id: clients, run: redis.clients}
""",
}


class SlackBot:
    """The service under test with helpers that act as Alertmanager and as Slack users."""

    def __init__(self, client: TestClient, fake: SlackFake) -> None:
        self.client = client
        self.fake = fake

    @property
    def engine(self) -> Engine:
        """The one engine the app built (store, runner, intake): the tests reach the system through it."""
        return self.client.app[ENGINE]

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def runner(self) -> Runner:
        return self.engine.runner

    async def alert(self, name: str, status: str = "firing", fingerprint: str = "fp-1") -> dict[str, Any]:
        resp = await self.client.post("/alerts", json=alert_payload(name, status, fingerprint=fingerprint))
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    async def approval_message(self, other_than: Message | None = None) -> Message:
        """The newest message with Approve/Deny buttons, waiting for one if needed."""

        def find() -> Message | None:
            with_buttons = [m for m in self.fake.posted(thread=True) if m.buttons and m is not other_than]
            return with_buttons[-1] if with_buttons else None

        msg: Message = await wait_for(find)
        return msg

    async def post_event(self, body: str, headers: dict[str, str]) -> Any:
        return await self.client.post("/slack/events", data=body.encode(), headers=headers)

    async def click(
        self, user: str, action: str, msg: Message, *, value: str | None = None, timestamp: int | None = None
    ) -> Any:
        button = next(b for b in msg.buttons if b["action_id"] == action) if value is None else None
        body = block_actions_body(
            user=user,
            action_id=action,
            value=value if value is not None else str(button["value"] if button else ""),
            message={"ts": msg.ts, "channel": msg.channel, "thread_ts": msg.thread_ts, "text": msg.text},
            response_url=self.fake.response_url(f"click-{user}"),
        )
        return await self.post_event(body, signed_headers(SECRET, body, timestamp=timestamp))

    async def command(self, user: str, text: str, name: str = "cmd") -> tuple[int, dict[str, Any]]:
        body = slash_command_body(
            user=user, text=text, channel=CHANNEL, response_url=self.fake.response_url(name)
        )
        resp = await self.post_event(body, signed_headers(SECRET, body))
        raw = await resp.text()
        return resp.status, (json.loads(raw) if raw.startswith("{") else {"text": raw})

    async def response(self, name: str = "cmd", count: int = 1) -> dict[str, Any]:
        """The ``count``-th answer posted to the response_url ``name`` (waits for it)."""
        got = await wait_for(
            lambda: [r for r in self.fake.responses if r["url"] == name][count - 1 :], timeout=30
        )
        answer: dict[str, Any] = got[0]
        return answer

    async def ephemeral(self, user: str, count: int = 1) -> str:
        got = await wait_for(lambda: self.fake.ephemerals(user)[count - 1 :])
        return str(got[0])

    async def incident(self, inc_id: int = 1) -> Any:
        return await self.store.get_incident(inc_id)

    async def wait_status(self, status: IncidentState, inc_id: int = 1, timeout: float = 15.0) -> Any:
        async def check() -> Any:
            inc = await self.store.get_incident(inc_id)
            return inc if inc.status == status else None

        return await wait_for(check, timeout=timeout)

    def replies(self, parent: Message) -> list[Message]:
        return [m for m in self.fake.posted(thread=True) if m.thread_ts == parent.ts]

    def parent(self) -> Message:
        return self.fake.posted(thread=False)[0]

    @property
    def slack(self) -> SlackNotifier:
        """The Slack notifier itself (the runner holds it wrapped in a SafeNotifier)."""
        notifier = self.runner.notifier.inner
        assert isinstance(notifier, SlackNotifier)
        return notifier


def text_of(response: dict[str, Any]) -> str:
    """All text in a response_url answer or an ack (text plus block texts)."""
    return Message("", "", str(response.get("text", "")), list(response.get("blocks") or [])).all_text


def agent_keys(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter(match="agent:*", count=1000))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[SlackFake]:
    f = SlackFake(groups={GROUP_ID: [CAROL]}, group_handles={"redis-oncall": GROUP_ID})
    server = await aiohttp_server(f.app)
    f.base_url = str(server.make_url("")).rstrip("/")
    yield f
    f.release()


def write_bot_config(tmp_path: Path, redis_url: str, extra: str = "") -> Path:
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    for name, text in PLAYBOOKS.items():
        (pb / name).write_text(text)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    name: cache\n    url: {redis_url}\n"
        "playbooks: playbooks\nprotected_patterns: ['sess:*', 'agent:pinned:*']\n"
        "scheduler: {enabled: false}\n"  # expiry is driven by the tests, no probe surprises
        f"slack: {{channel: {CHANNEL}, approvers: [{ALICE}, {BOB}], approver_group: redis-oncall, min_interval: 0.01}}\n"
        f"{extra}"
    )
    return path


MakeBot = Callable[..., Awaitable[SlackBot]]


@pytest.fixture
def make_bot(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    fake: SlackFake,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    asked_database_line: str,
) -> MakeBot:
    """Builds the service against the fake; the fake is set up first so it outlives the bot. A test
    that takes ``backend`` runs on both stores (decisions, approvals and their races)."""

    async def make(extra: str = "", url: str | None = None, **settings: Any) -> SlackBot:
        config = load_config(write_bot_config(tmp_path, url or redis_server.url, extra + asked_database_line))
        slack = SlackSettings(
            **{
                "bot_token": "xoxb-test",
                "signing_secret": SECRET,
                "api_url": fake.api_url,
                "timeout": 1,
                **settings,
            }
        )
        client = await aiohttp_client(create_app(config, slack=slack, webhook_token=""))
        return SlackBot(client, fake)

    return make


@pytest.fixture
async def bot(make_bot: MakeBot) -> SlackBot:
    return await make_bot()


# -- incident threads and approvals ---------------------------------------------------------------


async def test_alert_to_approval_to_verified_result_in_one_thread(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=300)
    redis_sync.set("agent:pinned:1", "keep")
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    parent = bot.parent()
    assert parent.channel == CHANNEL and approval.thread_ts == parent.ts
    assert "TestEvict" in parent.all_text and "cache" in parent.all_text
    await wait_for(lambda: "waiting for approval" in parent.all_text)

    plan_text = approval.all_text
    for expected in ("Approval needed", "`evict`", "`agent:*`", "~300", "Protected keys excluded", "1 (never touched)",
                     "Sample keys", "Approvers needed", "Expires"):  # fmt: skip
        assert expected in plan_text, expected
    pending = (await bot.incident()).pending_step
    value = json.loads(approval.buttons[0]["value"])
    assert value == {"incident": 1, "approval": pending["approval_id"], "plan": pending["plan_hash"]}
    assert [b["action_id"] for b in approval.buttons] == ["approve", "deny"]
    digest = bot.replies(parent)[0]
    assert "*Diagnosis*" in digest.all_text and ":white_check_mark: *memory* memory" in digest.all_text
    assert "```" not in digest.all_text, "raw output goes to the details file, not into the thread"
    assert agent_keys(redis_sync) == 301, "nothing is deleted before the click"

    resp = await bot.click(ALICE, "approve", approval)
    assert resp.status == 200
    await bot.wait_status(IncidentState.VERIFIED)
    assert "executed: deleted 300 keys" in await bot.ephemeral(ALICE)
    await wait_for(lambda: "fixed and verified" in parent.all_text)
    await bot.slack.flush()  # the thread is written in the background, in order
    assert not approval.buttons and "*Approved* by <@UALICE>" in approval.all_text
    thread = "\n".join(m.all_text for m in bot.replies(parent))
    assert "deleted 300 keys matching agent:*" in thread and "1 protected skipped" in thread
    assert "helped: 0 keys match agent:[0-9]*" in thread
    assert agent_keys(redis_sync) == 1 and redis_sync.get("agent:pinned:1") == b"keep"
    assert redis_sync.dbsize() == 1 + 50 + 30 + 4, "sessions, rate limits and queues are intact"
    executed = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "action.executed"]
    assert len(executed) == 1 and executed[0].actor == "slack:UALICE"
    assert all(c.token == "xoxb-test" for c in fake.of("chat.postMessage"))


async def test_long_output_is_cut_for_a_phone(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    redis_sync.config_set("slowlog-log-slower-than", 0)
    for i in range(200):
        redis_sync.set(f"agent:{i}:" + "x" * 30, "v" * 50)
    status, _ = await bot.command(ALICE, "slowlog 200")
    assert status == 200
    answer = await bot.response()
    code_blocks = [
        b["text"]["text"] for b in answer["blocks"] if b.get("text", {}).get("text", "").startswith("```")
    ]
    assert code_blocks and len(code_blocks[0]) < 2700
    assert "more lines cut" in code_blocks[0]


async def test_unauthorized_click_changes_nothing_and_group_members_may_approve(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=100)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()

    assert (await bot.click(MALLORY, "approve", approval)).status == 200
    said = await bot.ephemeral(MALLORY)
    assert "Not allowed to approve" in said and "approver list" in said and "Nothing was changed" in said
    assert (await bot.click(MALLORY, "deny", approval)).status == 200
    assert "Not allowed to deny" in await bot.ephemeral(MALLORY, 2)
    inc = await bot.incident()
    assert inc.status == IncidentState.AWAITING_APPROVAL and inc.pending_step["approved_by"] == []
    assert approval.buttons and agent_keys(redis_sync) == 100
    refused = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "approval.refused"]
    assert [e.actor for e in refused] == ["slack:UMALLORY", "slack:UMALLORY"]

    # CAROL is not on the list but is in the approver group (resolved from its handle).
    await bot.click(CAROL, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    await bot.slack.flush()
    assert agent_keys(redis_sync) == 0
    assert fake.of("usergroups.users.list")[0].args["usergroup"] == GROUP_ID
    assert "<@UCAROL>" in approval.all_text and not approval.buttons


async def test_deny_closes_the_request_and_changes_nothing(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=50)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    await bot.click(BOB, "deny", approval)
    await wait_for(lambda: not approval.buttons)
    assert "*Denied* by <@UBOB>" in approval.all_text and "Nothing was changed" in approval.all_text
    assert "denied by <@UBOB>" in await bot.ephemeral(BOB)
    await wait_for(lambda: "diagnosed" in bot.parent().all_text)
    assert agent_keys(redis_sync) == 50


async def test_flushdb_needs_two_different_approvers(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    for i in range(100):
        redis_sync.set(f"agent:{i}", "v")
    await bot.alert("TestFlush")
    approval = await bot.approval_message()
    assert "2 different people" in approval.all_text and "FLUSHDB ASYNC" in approval.all_text

    await bot.click(ALICE, "approve", approval)
    assert "needs 1 more approver" in await bot.ephemeral(ALICE)
    await wait_for(lambda: "Approved so far by <@UALICE>" in approval.all_text)
    assert approval.buttons, "still open for the second approver"

    await bot.click(ALICE, "approve", approval)
    said = await bot.ephemeral(ALICE, 2)
    assert "<@UALICE> already approved" in said and "2 different approvers" in said
    assert redis_sync.dbsize() == 100, "the same person twice is not two people"

    await bot.click(BOB, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    assert redis_sync.dbsize() == 0
    await wait_for(lambda: not approval.buttons)
    assert "*Approved* by <@UALICE>, <@UBOB>" in approval.all_text
    executed = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "action.executed"]
    assert len(executed) == 1 and executed[0].detail["approvers"] == ["slack:UALICE", "slack:UBOB"]


async def test_bad_signatures_are_refused_and_nothing_runs(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    button = approval.buttons[0]
    body = block_actions_body(
        user=ALICE, action_id="approve", value=button["value"], response_url=fake.response_url("x"),
        message={"ts": approval.ts, "channel": approval.channel, "thread_ts": approval.thread_ts},
    )  # fmt: skip
    now = int(time.time())
    good = signed_headers(SECRET, body)
    cases = {
        "stale (6 minutes old)": signed_headers(SECRET, body, timestamp=now - 360),
        "from the future": signed_headers(SECRET, body, timestamp=now + 360),
        "signed with another secret": {**good, "X-Slack-Signature": forged_signature(body, good["X-Slack-Request-Timestamp"])},
        "malformed timestamp": {**good, "X-Slack-Request-Timestamp": "yesterday"},
        "unicode digits": {**good, "X-Slack-Request-Timestamp": "١٢٣"},
        "no signature": {k: v for k, v in good.items() if k != "X-Slack-Signature"},
        "no timestamp": {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"},
    }  # fmt: skip
    for name, headers in cases.items():
        resp = await bot.post_event(body, headers)
        assert resp.status == 401, name
    tampered = body.replace(ALICE, BOB)
    assert (await bot.post_event(tampered, good)).status == 401
    not_utf8 = b"payload=\xff\xfe"
    resp = await bot.client.post("/slack/events", data=not_utf8, headers=signed_headers(SECRET, "x"))
    assert resp.status == 401
    command = slash_command_body(
        user=ALICE, text="evict agent:*", channel=CHANNEL, response_url=fake.response_url()
    )
    stale = signed_headers(SECRET, command, timestamp=now - 600)
    assert (await bot.post_event(command, stale)).status == 401

    # Valid requests sent after the refused ones are answered: whatever the refused ones would have
    # said (an ephemeral, a response_url post) would have been said by now.
    await bot.click(MALLORY, "approve", approval)
    assert "Not allowed to approve" in await bot.ephemeral(MALLORY)
    await bot.command(MALLORY, "health", "later")
    await bot.response("later")
    assert [c.args.get("user") for c in fake.of("chat.postEphemeral")] == [MALLORY]
    assert [r["url"] for r in fake.responses] == ["later"]
    inc = await bot.incident()
    assert inc.status == IncidentState.AWAITING_APPROVAL and approval.buttons
    assert agent_keys(redis_sync) == 20
    assert len(await bot.store.list_incidents()) == 1, "the refused slash command started nothing"


async def test_double_click_executes_once_and_the_second_clicker_is_told(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=500)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    value = approval.buttons[0]["value"]
    r1, r2 = await asyncio.gather(bot.click(ALICE, "approve", approval), bot.click(BOB, "approve", approval))
    assert r1.status == r2.status == 200
    said = [await bot.ephemeral(ALICE), await bot.ephemeral(BOB)]
    winners = [s for s in said if "executed: deleted 500 keys" in s]
    losers = [s for s in said if "Already approved by" in s]
    assert len(winners) == 1 and len(losers) == 1, said
    winner = ALICE if winners[0] == said[0] else BOB
    assert f"<@{winner}>" in losers[0]

    # A replay of the same click (Slack retries, a second tab) is told the same.
    await bot.click(ALICE, "approve", approval, value=value)
    assert f"Already approved by <@{winner}>" in await bot.ephemeral(ALICE, 2)
    executed = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "action.executed"]
    assert len(executed) == 1 and agent_keys(redis_sync) == 0


async def test_stale_button_of_a_replaced_plan_cannot_approve_the_new_one(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=1000)
    await bot.alert("TestEvict")
    first = await bot.approval_message()
    old_value = first.buttons[0]["value"]
    seed_platform(redis_sync, agents=3000)  # the cache grew past the approved plan
    await bot.click(ALICE, "approve", first)
    assert "grew from 1000 to 3000" in await bot.ephemeral(ALICE)
    second = await bot.approval_message(other_than=first)
    assert second.ts != first.ts and "~3,000" in second.all_text
    await wait_for(lambda: "Replaced" in first.all_text)
    assert not first.buttons and "not executed" in first.all_text
    assert agent_keys(redis_sync) == 3000

    # Someone still has the old message open on their phone and taps it.
    await bot.click(BOB, "approve", first, value=old_value)
    assert "older plan that was replaced" in await bot.ephemeral(BOB)
    # A button naming the new approval but carrying the old plan's hash is refused too.
    forged = json.dumps({**json.loads(second.buttons[0]["value"]), "plan": json.loads(old_value)["plan"]})
    await bot.click(BOB, "approve", second, value=forged)
    assert "different plan" in await bot.ephemeral(BOB, 2)
    await bot.click(BOB, "approve", second, value="not json")
    assert "does not carry a valid approval" in await bot.ephemeral(BOB, 3)
    assert agent_keys(redis_sync) == 3000
    assert (await bot.incident()).pending_step["approved_by"] == []

    await bot.click(BOB, "approve", second)
    await bot.wait_status(IncidentState.VERIFIED)
    assert agent_keys(redis_sync) == 0


async def test_expired_request_loses_its_buttons(
    backend: str, make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("approvals: {ttl: 1s}\n")
    seed_platform(redis_sync, agents=40)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    value = approval.buttons[0]["value"]
    # The expiry job's pass, run until the 1 s TTL has passed (earlier passes close nothing).
    assert await wait_for(bot.runner.expire_approvals, timeout=10) == 1
    await wait_for(lambda: not approval.buttons)
    assert "*Expired*" in approval.all_text and "nobody decided in time" in approval.all_text
    await wait_for(lambda: "approval for evict expired" in bot.parent().all_text)
    await bot.click(ALICE, "approve", approval, value=value)
    assert "expired" in await bot.ephemeral(ALICE)
    assert agent_keys(redis_sync) == 40


async def test_resolved_alert_removes_the_buttons(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=40)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    value = approval.buttons[0]["value"]
    await bot.alert("TestEvict", "resolved")
    await wait_for(lambda: not approval.buttons)
    assert "*Cancelled*" in approval.all_text and "the alert resolved" in approval.all_text
    await wait_for(lambda: ":large_green_circle:" in bot.parent().all_text)
    assert "resolved" in bot.parent().text
    await bot.click(ALICE, "approve", approval, value=value)
    assert "cancelled (the alert resolved)" in await bot.ephemeral(ALICE)
    assert agent_keys(redis_sync) == 40


# -- slash commands -------------------------------------------------------------------------------


async def test_help_and_unknown_subcommands_answer_at_once(bot: SlackBot, fake: SlackFake) -> None:
    status, ack = await bot.command(MALLORY, "help")
    assert status == 200
    text = text_of(ack)
    for sub in (
        "health",
        "info",
        "bigkeys",
        "slowlog",
        "monitor",
        "incidents",
        "run PLAYBOOK",
        "evict PATTERN",
    ):
        assert f"/redis {sub}" in text, sub
    assert "`cache`" in text
    status, ack = await bot.command(MALLORY, "")
    assert "/redis health" in text_of(ack)
    status, ack = await bot.command(MALLORY, "flushall")
    assert "Unknown subcommand `flushall`" in text_of(ack)
    await bot.command(MALLORY, "health", "later")  # answered on its response_url, after the above
    await bot.response("later")
    assert [r["url"] for r in fake.responses] == ["later"], "help is answered in the ack itself"


async def test_health_is_the_runbook_ping_and_key_figures(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=10)
    status, ack = await bot.command(MALLORY, "health")
    assert status == 200 and "Working on `/redis health`" in text_of(ack)
    answer = await bot.response()
    text = text_of(answer)
    assert answer["response_type"] == "in_channel"
    assert "Redis `cache` is up" in text and "PONG from cache" in text
    for figure in ("memory", "hit ratio", "clients connected", "db0: 94 keys"):
        assert figure in text, figure
    assert "asked by <@UMALLORY>" in text
    audit = [e for e in await bot.store.list_audit() if e.kind == "slack.command"]
    assert audit and audit[-1].actor == "slack:UMALLORY" and audit[-1].detail["text"] == "health"


async def test_health_of_a_dead_redis_says_so(make_bot: MakeBot, fake: SlackFake, make_redis: Any) -> None:
    server = make_redis()
    server.stop()
    bot = await make_bot(url=server.url)
    await bot.command(ALICE, "health")
    text = text_of(await bot.response())
    assert "Redis `cache` does not answer PING" in text and "cannot reach Redis cache" in text


async def test_info_bigkeys_slowlog_and_monitor(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis, redis_server: RedisServer
) -> None:
    seed_platform(redis_sync, agents=200)
    redis_sync.set("agent:huge", "x" * 100_000)

    await bot.command(ALICE, "info stats", "info")
    assert "INFO stats on cache" in text_of(await bot.response("info")) and "hit ratio" in text_of(
        await bot.response("info")
    )
    await bot.command(ALICE, "info clients cache", "info2")
    assert "clients connected" in text_of(await bot.response("info2"))
    await bot.command(ALICE, "info mem-ory", "info3")
    bad = await bot.response("info3")
    assert bad["response_type"] == "ephemeral" and "section" in text_of(bad)

    await bot.command(ALICE, "bigkeys", "big")
    text = text_of(await bot.response("big"))
    assert "Memory report on cache" in text and "biggest key agent:huge" in text and "agent:*" in text

    redis_sync.config_set("slowlog-log-slower-than", 0)
    redis_sync.get("agent:1")
    await bot.command(ALICE, "slowlog 5", "slow")
    text = text_of(await bot.response("slow"))
    assert "Slowlog (last 5) on cache" in text and "slowlog:" in text
    await bot.command(ALICE, "slowlog many", "slow2")
    assert "n must be a number" in text_of(await bot.response("slow2"))

    traffic = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    stop = asyncio.Event()

    async def busy() -> None:
        # Stops between commands: cancelling redis-py mid-command can leave aclose() waiting.
        while not stop.is_set():
            await traffic.get("agent:1")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(busy())
    try:
        status, ack = await bot.command(ALICE, "monitor 1", "mon")
        assert status == 200 and "Watching live traffic" in text_of(ack)
        text = text_of(await bot.response("mon"))
    finally:
        stop.set()
        await task
        await traffic.aclose()
    assert "MONITOR sample (1 s) on cache" in text and "commands in" in text and "GET" in text.upper()
    await bot.command(ALICE, "monitor 99", "mon2")
    assert "seconds" in text_of(await bot.response("mon2"))
    await bot.command(ALICE, "health nosuch", "t")
    assert "unknown target 'nosuch'; known targets: cache" in text_of(await bot.response("t"))


async def test_incidents_lists_what_waits(bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis) -> None:
    await bot.command(ALICE, "incidents", "none")
    assert "No incidents" in text_of(await bot.response("none"))
    seed_platform(redis_sync, agents=10)
    await bot.alert("TestEvict")
    await bot.approval_message()
    await bot.command(ALICE, "incidents")
    text = text_of(await bot.response())
    assert "1 open" in text and "TestEvict on `cache`" in text and "waiting for approval of `evict`" in text
    assert f"https://slack.com/archives/{CHANNEL}/p" in text


async def test_run_a_playbook_by_hand(bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis) -> None:
    await bot.command(BOB, "run diag-test", "run")
    text = text_of(await bot.response("run"))
    assert "Incident #1" in text and "playbook `diag-test` on `cache`" in text and "<@UBOB>" in text
    inc = await bot.wait_status(IncidentState.DIAGNOSED)
    assert inc.source == "slack" and inc.labels["requested_by"] == "slack:UBOB"
    await bot.slack.flush()
    parent = bot.parent()
    assert "TestDiag" in parent.all_text and "asked by <@UBOB>" in parent.all_text
    digest, details = bot.replies(parent)  # every step in a line, and their full output as a file
    assert "*ping*" in digest.all_text and "*clients*" in digest.all_text and "PONG" in digest.all_text
    assert details.file is not None and "== clients (redis.clients" in details.file["content"]
    await bot.command(BOB, "run nosuch", "bad")
    bad = text_of(await bot.response("bad"))
    assert "no playbook named `nosuch`" in bad and "`evict-test`" in bad


async def test_evict_goes_through_plan_and_approval(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=120)
    redis_sync.set("agent:pinned:7", "keep")
    status, ack = await bot.command(MALLORY, "evict agent:*", "ev")
    assert status == 200 and "Working on" in text_of(ack)
    assert "Incident #1" in text_of(await bot.response("ev"))
    approval = await bot.approval_message()
    assert "`agent:*`" in approval.all_text and "~120" in approval.all_text
    assert "1 (never touched)" in approval.all_text
    assert agent_keys(redis_sync) == 121, "asking is not doing"

    await bot.click(MALLORY, "approve", approval)
    assert "Not allowed" in await bot.ephemeral(MALLORY)
    await bot.click(ALICE, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    assert agent_keys(redis_sync) == 1 and redis_sync.get("agent:pinned:7") == b"keep"
    inc = await bot.incident()
    assert (
        inc.playbook == "manual-eviction"
        and inc.params == {"pattern": "agent:*"}
        and inc.labels["requested_by"] == "slack:UMALLORY"
    )

    await bot.command(ALICE, "evict *", "all")
    assert "matches every key" in text_of(await bot.response("all"))
    await bot.command(ALICE, "evict", "none")
    assert "usage" in text_of(await bot.response("none"))
    await bot.command(ALICE, "evict sess:*", "prot")
    await bot.response("prot")
    inc = await bot.wait_status(IncidentState.DIAGNOSED, inc_id=2)
    assert "nothing to do" in inc.steps[0].summary and "50 protected keys left alone" in inc.steps[0].summary
    assert redis_sync.exists("sess:1")


async def test_evict_asked_in_slack_can_be_approved_from_the_cli(
    backend: str, bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=30)
    await bot.command(ALICE, "evict agent:*")
    approval = await bot.approval_message()
    value = approval.buttons[0]["value"]
    source = bot.runner.config.source
    assert source is not None
    # The CLI runs with the same Slack environment as the service, so it updates the thread too.
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": fake.api_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "approve", "1", "--config", str(source), "--as", "ops", "--yes",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "executed: deleted 30 keys" in out.decode()
    assert agent_keys(redis_sync) == 0
    await wait_for(lambda: not approval.buttons)
    ops = cli_actor("ops").label  # the OS account that ran the command, with the name it gave
    assert ops in approval.all_text, "the buttons are replaced by who decided"
    await bot.click(BOB, "approve", approval, value=value)
    assert f"Already approved by {ops}" in await bot.ephemeral(BOB)


# -- Slack trouble --------------------------------------------------------------------------------


async def test_slack_down_does_not_block_the_webhook_or_lose_the_incident(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=60)
    fake.failing = True
    started = time.monotonic()
    body = await bot.alert("TestEvict")
    assert time.monotonic() - started < 1.0 and body["new_incidents"] == [1]
    inc = await bot.wait_status(IncidentState.AWAITING_APPROVAL)
    await wait_for(lambda: fake.calls)
    await bot.slack.flush()
    assert inc.pending_step is not None and not (await bot.incident()).chat_ref
    assert not fake.messages, "Slack was asked and failed"

    fake.failing = False
    await bot.command(ALICE, "incidents")
    text = text_of(await bot.response())
    assert "waiting for approval of `evict`" in text and "Posted 1 approval request(s) again" in text
    approval = await bot.approval_message()
    assert approval.thread_ts == bot.parent().ts
    await bot.click(ALICE, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    assert agent_keys(redis_sync) == 0


async def test_slack_hanging_does_not_block_the_webhook(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    seed_platform(redis_sync, agents=60)
    fake.hanging = True
    started = time.monotonic()
    body = await bot.alert("TestEvict")
    assert time.monotonic() - started < 1.0 and body["new_incidents"] == [1]
    assert (await bot.client.get("/healthz")).status == 200
    await wait_for(lambda: fake.calls)  # the runner is talking to (waiting on) Slack
    assert (await bot.store.get_incident(1)).alertname == "TestEvict"
    fake.release()
    await bot.wait_status(IncidentState.AWAITING_APPROVAL)
    await bot.command(ALICE, "incidents")
    await bot.response()
    approval = await bot.approval_message()
    await bot.click(BOB, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)


# -- set-up ---------------------------------------------------------------------------------------


async def test_socket_mode_receives_commands_without_a_public_url(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot(signing_secret="", app_token="xapp-test")
    await wait_for(lambda: fake.of("socket.connect"))
    assert fake.of("apps.connections.open")[0].token == "xapp-test"
    assert (await bot.client.post("/slack/events", data=b"x")).status == 404, "no HTTP endpoint"
    payload = {
        "token": "t", "team_id": "T0TEAM", "channel_id": CHANNEL, "user_id": ALICE, "command": "/redis",
        "text": "health", "api_app_id": "A0APP", "response_url": fake.response_url("sock"), "trigger_id": "1",
    }  # fmt: skip
    fake.push_envelope(
        {
            "envelope_id": "env-1",
            "type": "slash_commands",
            "accepts_response_payload": True,
            "payload": payload,
        }
    )
    ack = await wait_for(lambda: [m for m in fake.socket_inbox if m.get("envelope_id") == "env-1"])
    assert "Working on" in json.dumps(ack[0])
    assert "is up" in text_of(await bot.response("sock"))


async def test_without_tokens_there_is_no_slack_and_alerts_still_work(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(write_bot_config(tmp_path, redis_server.url))
    notifier = RecordingNotifier()
    client = await aiohttp_client(create_app(config, notifier=notifier, webhook_token=""))
    assert (await client.post("/slack/events", data=b"x")).status == 404
    resp = await client.post("/alerts", json=alert_payload("TestDiag"))
    assert resp.status == 200
    await wait_for(lambda: notifier.of("updated"))


def test_slack_settings_come_only_from_the_environment() -> None:
    assert SlackSettings.from_env({}) is None
    s = SlackSettings.from_env(
        {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "sec", "SLACK_API_URL": "http://proxy/api"}
    )
    assert s is not None and s.api_url == "http://proxy/api" and s.modes == "HTTP"
    assert "xoxb-1" not in repr(s) and "sec" not in repr(s)
    with pytest.raises(ConfigError, match="neither SLACK_SIGNING_SECRET"):
        SlackSettings.from_env({"SLACK_BOT_TOKEN": "xoxb-1"})


def test_slack_needs_a_channel(tmp_path: Path, redis_server: RedisServer) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(f"targets:\n  - match: {{job: redis}}\n    url: {redis_server.url}\n")
    with pytest.raises(ConfigError, match=r"slack\.channel"):
        create_app(load_config(path), slack=SlackSettings(bot_token="xoxb", signing_secret="s"))


async def test_progress_edits_a_message_and_never_posts_one(
    bot: SlackBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    """A long step's progress adds no message: a diagnostic's shows in the digest, an action's in
    the message that then carries its result."""
    await bot.command(ALICE, "run diag-test")
    inc = await bot.wait_status(IncidentState.DIAGNOSED)
    safe, notifier = bot.runner.notifier, bot.slack
    await notifier.flush()
    digest = bot.replies(bot.parent())[0]
    before = len(fake.posted(thread=True))
    await safe.step_progress(inc, "scan", "scanned 1,000 of ~5,000 keys")
    await wait_for(lambda: "scanned 1,000 of ~5,000 keys" in digest.all_text)
    await safe.step_progress(inc, "scan", "scanned 2,000 of ~5,000 keys")  # too soon: not rendered
    await notifier.flush()
    assert "scanned 2,000" not in digest.all_text and len(fake.posted(thread=True)) == before

    # An action's progress (an incident held by hand mid-eviction, so nothing else moves it).
    alert = Alert.model_validate(alert_payload("TestEvict")["alerts"][0])
    inc_id = await bot.store.open_incident(IngestItem(alert, "evict-test", "cache", 0))
    assert await bot.store.begin(inc_id)
    run_id = await bot.store.start_step(inc_id, 1, "evict", "redis.evict", True)
    running = await bot.store.get_incident(inc_id)
    await safe.step_progress(running, "evict", "deleted 100 of ~300 keys")
    (msg,) = await wait_for(lambda: [m for m in fake.posted(thread=True) if "deleted 100 of" in m.all_text])
    threads = len(fake.posted(thread=True))
    run = await bot.store.finish_step(
        run_id, StepResult(StepStatus.OK, "deleted 300 keys"), next_step=2, target="cache"
    )
    await safe.step_finished(running, run)
    await wait_for(lambda: f"#{inc_id} evict ok: deleted 300 keys" in msg.text)
    await notifier.flush()
    assert msg.edits == 1, "the progress message became the result"
    assert len(fake.posted(thread=True)) == threads + 1, "and the digest is the only other message"


async def test_notices_go_to_the_channel(bot: SlackBot, fake: SlackFake) -> None:
    await bot.runner.notifier.notice("Daily digest\n2 incidents, 1 fixed <by the bot>", "info")
    await bot.runner.notifier.notice("Backups are stale", "warning")
    await wait_for(lambda: len(fake.posted(thread=False)) == 2)
    digest, warning = fake.posted(thread=False)
    assert digest.channel == CHANNEL and "*Daily digest*" in digest.all_text
    assert "1 fixed &lt;by the bot&gt;" in digest.all_text
    assert ":warning: *Backups are stale*" in warning.all_text


def test_manifest_matches_the_bot() -> None:
    path = Path(__file__).resolve().parent.parent / "deploy" / "slack-app-manifest.yaml"
    manifest = yaml.safe_load(path.read_text())
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands] == [COMMAND]
    assert commands[0]["url"] == "https://YOUR-HOST/slack/events"
    interactivity = manifest["settings"]["interactivity"]
    assert (
        interactivity["is_enabled"] is True
        and interactivity["request_url"] == "https://YOUR-HOST/slack/events"
    )
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "chat:write",
        "commands",
        "usergroups:read",
        "files:write",
    }
    assert manifest["settings"]["socket_mode_enabled"] is False
