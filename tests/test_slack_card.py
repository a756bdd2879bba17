"""The incident card and its thread, end to end: the real service, a real redis-server, the Slack fake.

What an on-call engineer sees for the bundled memory-high playbook (twelve steps): one card in the
channel edited through every state, and at most five messages in its thread (digest, details file,
approval request, action result). Skipped steps are digest lines, mentions reach the approvers once
per request, reminder and escalation, and a burst of incidents stays under Slack's rate limit.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot.alerts import Notification
from bot.app import create_app
from bot.chat.console import ConsoleNotifier
from bot.chat.slack import SlackNotifier
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.engine import Engine
from bot.incidents import IncidentState
from tests.conftest import RedisServer, alert_payload, seed_platform, wait_for
from tests.slack_fake import Call, Message, SlackFake
from tests.test_slack import ALICE, BOB, CHANNEL, PLAYBOOKS, SECRET, SlackBot, agent_keys
from tests.test_slack import fake as fake  # the Slack fake fixture, shared

MENTION_GROUP, MENTION_ALICE = "<!subteam^S0ONCALL>", f"<@{ALICE}>"
MEMORY_HIGH_STEPS = (
    "memory", "caching", "consumers", "trend", "chart", "evict-agent-cache", "check-after-evict",
    "raise-maxmemory", "check-after-raise", "flush-db", "check-after-flush", "chart-after",
)  # fmt: skip


def card_config(tmp_path: Path, redis_url: str, extra: str = "", *, bundled: bool = True) -> Path:
    """The bot's config: the bundled playbooks (or the Slack tests' own), Slack with mentions."""
    pb = tmp_path / "playbooks"
    pb.mkdir(exist_ok=True)
    for name, text in PLAYBOOKS.items():
        (pb / name).write_text(text)
    path = tmp_path / "bot.yaml"
    path.write_text(
        f"targets:\n  - match: {{job: redis}}\n    name: cache\n    url: {redis_url}\n    maxmemory_ceiling: 1gb\n"
        + ("" if bundled else "playbooks: playbooks\n")
        + "protected_patterns: ['sess:*']\nscheduler: {enabled: false}\n"
        f"slack: {{channel: {CHANNEL}, approvers: [{ALICE}, {BOB}], approver_group: redis-oncall,"
        " min_interval: 0.01, incident_url: 'https://incidents.example/redis/{id}'}\n" + extra
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
) -> MakeBot:
    async def make(extra: str = "", *, bundled: bool = True) -> SlackBot:
        config = load_config(card_config(tmp_path, redis_server.url, extra, bundled=bundled))
        slack = SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=fake.api_url, timeout=2)
        client = await aiohttp_client(create_app(config, slack=slack, webhook_token=""))
        return SlackBot(client, fake)

    return make


def posts_calling(fake: SlackFake, token: str) -> list[Call]:
    """The messages *posted* with ``token`` in them: Slack notifies a mention in a new message, never
    in an edit, so these are the times a person was called."""
    return [
        c
        for c in fake.of("chat.postMessage")
        if token in str(c.args.get("text", "")) + json.dumps(c.args.get("blocks") or [])
    ]


def posts_mentioning(fake: SlackFake, token: str) -> list[str]:
    return [str(c.args.get("text", "")) for c in posts_calling(fake, token)]


def in_order(history: list[str], states: list[str]) -> bool:
    """Every state appears in ``history`` (the card's texts, oldest first), in this order."""
    at = 0
    for text in history:
        if at < len(states) and text.endswith(f": {states[at]}"):
            at += 1
    return at == len(states)


def fill_memory(r: redis.Redis) -> None:
    """Memory at ~90% of maxmemory, most of it a 2 MB key the eviction does not touch: after the
    eviction the verification keeps waiting (the card shows "remediating") until the test frees it."""
    seed_platform(r, agents=300)
    base = int(r.info("memory")["used_memory"])
    r.set("blob:ballast", b"x" * (2 << 20))
    # Not used_memory now: it still counts the 2 MB query buffer of the SET, freed a moment later.
    r.config_set("maxmemory", int((base + int(r.memory_usage("blob:ballast") or 0)) / 0.9))


# -- the memory-high flow -------------------------------------------------------------------------


async def test_memory_high_is_one_card_and_a_short_thread(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot()
    fill_memory(redis_sync)
    memory = redis_sync.info("memory")
    await wait_for(lambda: 0.85 < redis_sync.info("memory")["used_memory"] / memory["maxmemory"] < 1)
    await bot.alert("RedisMemoryUsageHigh")
    approval = await bot.approval_message()
    card = bot.parent()
    assert approval.thread_ts == card.ts
    await wait_for(lambda: "waiting for approval from" in card.all_text)
    assert MENTION_GROUP in card.all_text, "the edited card names whom it waits for"
    text = card.all_text
    assert "*Finding:* blob:* holds" in text, "the one line that matters most"
    for link in (
        "<https://incidents.example/redis/1|Incident page>",
        "<http://vm:9090/graph?g0.expr=",  # the alert's generatorURL
        "|Prometheus graph>",
        "<http://vm:9093/#/alerts?filter=",
        "|Silence>",
        "Runbook: RedisMemoryUsageHigh; Issue: Redis is Out of Memory (OOM)",
    ):
        assert link in text, link

    # The request calls the approvers once; the thread so far: digest, details file, request.
    assert len(posts_mentioning(fake, MENTION_GROUP)) == 1
    assert len(posts_mentioning(fake, MENTION_ALICE)) == 1
    await bot.click(ALICE, "approve", approval)
    await wait_for(lambda: card.text.endswith(": remediating"), timeout=20)
    redis_sync.delete("blob:ballast")  # now the verification sees memory fall
    await bot.wait_status(IncidentState.VERIFIED, timeout=20)
    await wait_for(lambda: card.text.endswith(": fixed and verified"))
    await bot.alert("RedisMemoryUsageHigh", "resolved")
    await wait_for(lambda: card.text.endswith(": resolved"))
    await bot.slack.flush()

    assert in_order(
        card.history,
        ["diagnosing", "waiting for approval", "remediating", "fixed and verified", "resolved"],
    ), card.history
    text = card.all_text
    assert f"*Decision:* `evict-agent-cache` approved by {MENTION_ALICE}" in text
    assert "*Outcome:* deleted 300 keys matching agent:*" in text
    assert "of maxmemory" in text and "→" in text and "helped" in text and "fixed in" in text

    thread = bot.replies(card)
    assert len(thread) <= 5, [m.text for m in thread]
    digest, details, request, outcome = thread
    for step in MEMORY_HIGH_STEPS:
        assert f"*{step}*" in digest.all_text, step
    assert digest.all_text.index(":warning: *memory*") < digest.all_text.index("*caching*"), "warnings first"
    assert "the file in this thread" in digest.all_text
    assert details.file is not None and "used_memory_human" in details.file["content"]
    assert all("used_memory_human" not in m.all_text and "```" not in m.all_text for m in thread)
    assert request is approval and not request.buttons
    assert "deleted 300 keys" in outcome.all_text and "*check-after-evict* helped" in outcome.all_text
    skipped = (
        "trend",
        "chart",
        "raise-maxmemory",
        "check-after-raise",
        "flush-db",
        "check-after-flush",
        "chart-after",
    )
    for step in skipped:
        assert [m for m in thread if f"*{step}*" in m.all_text] == [digest], (
            f"{step} has no message of its own"
        )
    assert agent_keys(redis_sync) == 0
    assert len(posts_mentioning(fake, MENTION_ALICE)) == 1, "no mention on any later message"


async def test_without_the_files_scope_the_digest_points_at_the_command(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    fake.errors["files.getUploadURLExternal"] = "missing_scope"
    bot = await make_bot(bundled=False)
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    await bot.approval_message()
    await bot.slack.flush()
    digest = bot.replies(bot.parent())[0]
    assert "Full output: `remediation-bot incidents 1 --config …`" in digest.all_text
    assert not [m for m in fake.messages.values() if m.file], "no file, and no error in the thread"


# -- calling people: reminder and escalation ------------------------------------------------------


async def test_a_reminder_at_half_life_when_nobody_decided(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("approvals: {ttl: 2s}\n", bundled=False)
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    await bot.approval_message()
    reminders = await wait_for(lambda: fake.find("Still waiting for a decision"))
    await wait_for(lambda: not bot.slack.reminders)  # the timer is done
    asked, reminded = posts_mentioning(fake, MENTION_ALICE)
    assert "approval needed" in asked and "still waiting" in reminded
    calls = posts_calling(fake, MENTION_ALICE)
    assert 0.8 <= calls[1].at - calls[0].at < 2.0, "at half the 2 s lifetime, before it expires"
    assert await wait_for(bot.runner.expire_approvals, timeout=10) == 1
    await bot.slack.flush()
    assert len(reminders) == len(fake.find("Still waiting for a decision")) == 1, "once"
    assert (await bot.store.get_approval(1)).chat_ref["reminded"] == reminders[0].ts


async def test_a_restarted_bot_arms_the_reminder_again(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    """The timer lives in the process; the service re-arms pending requests' timers when it starts."""
    bot = await make_bot("approvals: {ttl: 2s}\n", bundled=False)
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    await bot.approval_message()
    for task in list(bot.slack.reminders.values()):
        task.cancel()  # the process that set the timer is gone
    await wait_for(lambda: not bot.slack.reminders)
    restarted = SlackNotifier(bot.slack.client, bot.slack.config, bot.engine)
    try:
        assert await restarted.rearm_reminders() == 1
        await wait_for(lambda: fake.find("Still waiting for a decision"))
    finally:
        await restarted.close()


async def test_no_reminder_after_a_decision(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("approvals: {ttl: 2s}\n", bundled=False)
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    approval = await bot.approval_message()
    await bot.click(BOB, "approve", approval)
    await bot.wait_status(IncidentState.VERIFIED)
    ap = await bot.store.get_approval(1)
    half = ap.expires_ts - 1.0
    await wait_for(lambda: time.time() > half + 0.3 and not bot.slack.reminders)
    await bot.slack.flush()
    assert not fake.find("Still waiting for a decision")
    assert len(posts_mentioning(fake, MENTION_ALICE)) == 1


async def test_an_escalation_calls_the_approvers_once(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("guardrails: {kill_switch: true}\n", bundled=False)
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    await bot.wait_status(IncidentState.ESCALATED)
    (call,) = await wait_for(lambda: fake.find("Escalated: needs a human"))
    assert (
        MENTION_GROUP in call.all_text and MENTION_ALICE in call.all_text and "kill switch" in call.all_text
    )
    await bot.runner.notifier.incident_updated(await bot.store.get_incident(1))  # told again: no new call
    await bot.slack.flush()
    assert len(fake.find("Escalated: needs a human")) == 1
    assert len(posts_mentioning(fake, MENTION_ALICE)) == 1
    assert bot.parent().text.endswith(": escalated: needs a human")


# -- rate limits ----------------------------------------------------------------------------------


async def test_a_burst_of_incidents_stays_under_the_rate_limit(
    tmp_path: Path, make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    """20 incidents in one second. The fake answers 429 to a second write within 0.1 s in the
    channel (Slack's one-a-second, ten times faster so the test takes seconds): the queue paces
    itself, meets no 429, and every card ends in its final state."""
    pb = tmp_path / "playbooks"
    pb.mkdir()
    for i in range(20):
        (pb / f"burst{i}.yaml").write_text(
            f"name: burst-{i}\nmatch: {{alertname: Burst{i}}}\nsteps:\n  - {{id: ping, run: redis.ping}}\n"
        )
    fake.rate_limit = 0.1
    bot = await make_bot("", bundled=False)
    bot.slack.outbox.min_interval = 0.1
    started = time.monotonic()
    await asyncio.gather(*(bot.alert(f"Burst{i}", fingerprint=f"b{i}") for i in range(20)))
    assert time.monotonic() - started < 1.0

    def finals() -> list[Message]:
        cards = fake.posted(thread=False)
        return [c for c in cards if c.text.endswith(": diagnosed")] if len(cards) == 20 else []

    await wait_for(lambda: len(finals()) == 20, timeout=30)
    await bot.slack.flush()
    assert fake.rate_limited == [], f"{len(fake.rate_limited)} answers 429"
    assert len({c.text.split(" ")[1] for c in fake.posted(thread=False)}) == 20, "one card per incident"
    writes = [c for c in fake.calls if c.method in ("chat.postMessage", "chat.update")]
    gaps = [b.at - a.at for a, b in itertools.pairwise(writes)]
    assert min(gaps) >= 0.1, "paced"


async def test_a_429_is_waited_out_as_slack_asks(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis
) -> None:
    bot = await make_bot("", bundled=False)
    fake.throttle(2)  # the next two writes are answered 429, Retry-After: 1
    await bot.runner.notifier.notice("Daily digest")
    (msg,) = await wait_for(lambda: fake.posted(thread=False), timeout=10)
    assert msg.text == "Daily digest"
    posts = [c for c in fake.calls if c.method == "chat.postMessage"]
    assert [c.status for c in posts] == [429, 429, 200]
    assert all(b.at - a.at >= 0.95 for a, b in itertools.pairwise(posts)), "Retry-After honoured"


# -- the console has the same shape ---------------------------------------------------------------


async def test_the_console_shows_a_digest_and_the_cli_the_full_output(
    tmp_path: Path, redis_server: RedisServer, redis_sync: redis.Redis
) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "diag.yaml").write_text(
        "name: diag\nmatch: {alertname: TestDiag}\nsteps:\n  - {id: memory, run: redis.info, with: {section: memory}}\n"
        "  - {id: trend, run: prometheus.redis_overview}\n  - {id: chart, run: prometheus.chart,"
        " with: {query: up, title: up}}\n  - {id: ping, run: redis.ping}\n"
    )
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(
        f"targets:\n  - match: {{job: redis}}\n    name: cache\n    url: {redis_server.url}\n"
        "playbooks: playbooks\nscheduler: {enabled: false}\n"
    )
    out = io.StringIO()
    async with Engine.open(load_config(cfg), ConsoleNotifier(stream=out, config_path=cfg)) as engine:
        await engine.intake.receive(Notification.model_validate(alert_payload("TestDiag")))
        await engine.runner.drain()
    text = out.getvalue()
    assert text.count("#1 diagnosis: 4 steps · 2 skipped") == 1
    assert "skip trend, chart: skipped: no Prometheus configured" in text, "skips grouped in one line"
    assert "ok   memory:" in text and "ok   ping:" in text and "#1 is now diagnosed" in text
    assert f"full output: remediation-bot incidents 1 --config {cfg}" in text
    assert "used_memory_human" not in text, "no raw INFO on the console"
    full = subprocess.run(
        [sys.executable, "-m", "bot", "incidents", "1", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "used_memory_human" in full.stdout, "incidents ID shows every step in full"


def test_card_shows_links_only_when_known() -> None:
    """A hand-started incident has no alert to link to: the card says so by leaving them out."""
    from bot.chat.slack_card import CardContext, incident_message
    from bot.incidents import Incident

    inc = Incident(
        id=3, fingerprint="f", starts_at="2026-11-25T19:39:47Z", alertname="RedisDown", alert_status="firing",
        status=IncidentState.DIAGNOSING, target="cache", source="slack", links={},
    )  # fmt: skip
    _, blocks = incident_message(inc, CardContext())
    assert "Prometheus graph" not in json.dumps(blocks) and "Alertmanager" not in json.dumps(blocks)
    with_links = inc.model_copy(
        update={
            "source": "alertmanager",
            "links": {"generator": "http://p/graph", "alertmanager": "http://am"},
        }
    )
    shown = json.dumps(incident_message(with_links, CardContext(incident_url="https://x/{id}"))[1])
    assert "<http://p/graph|Prometheus graph>" in shown and "<https://x/3|Incident page>" in shown
    assert "http://am/#/alerts?filter=" in shown
