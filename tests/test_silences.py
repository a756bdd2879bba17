"""Silence and acknowledge from Slack, through a real Alertmanager (Debian's prometheus-alertmanager).

The service runs with a real redis-server and the Slack fake; silences are read back from
Alertmanager's own API, so "exactly one active silence for the alert's labels" is what Alertmanager
holds, not what the bot believes. A non-approver's click creates nothing; an approver's creates one,
a second click none; ``/redis unsilence`` expires it; Alertmanager down leaves a clear message and
nothing recorded. Acknowledge records who is on it and stops the approval reminders.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot.alertmanager import matchers_for
from bot.app import create_app
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.localstack import Alertmanager, Stack, free_port, http_get
from bot.web.routes import LINKS
from tests.conftest import RedisServer, alert_payload, seed_platform, wait_for
from tests.slack_fake import Message, SlackFake
from tests.test_slack import ALICE, BOB, CAROL, MALLORY, SECRET, MakeBot, SlackBot, text_of, write_bot_config
from tests.test_slack import fake as fake  # the Slack fake and the service, shared fixtures
from tests.test_slack import make_bot as make_bot

LABELS = {"alertname": "TestDiag", "instance": "10.0.0.7:9121", "job": "redis", "severity": "warning"}


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    with Stack(tmp_path_factory.mktemp("am")) as st:
        yield st.alertmanager(webhook_url=f"http://127.0.0.1:{free_port()}/alerts")


def silences(am: Alertmanager, state: str | None = "active") -> list[dict[str, Any]]:
    status, body = http_get(am.url + "/api/v2/silences")
    assert status == 200
    found: list[dict[str, Any]] = json.loads(body)
    return [s for s in found if state is None or s["status"]["state"] == state]


@pytest.fixture
def clean_alertmanager(alertmanager: Alertmanager) -> Alertmanager:
    """No active silence left over from another test (the module shares one Alertmanager)."""
    for s in silences(alertmanager):
        req = urllib.request.Request(f"{alertmanager.url}/api/v2/silence/{s['id']}", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()
    assert silences(alertmanager) == []
    return alertmanager


async def firing(bot: SlackBot, name: str = "TestDiag") -> Message:
    """An alert with the test's labels; the incident's card, once it carries its buttons."""
    payload = alert_payload(name, labels=LABELS if name == "TestDiag" else None)
    assert (await bot.client.post("/alerts", json=payload)).status == 200
    card: Message = await wait_for(lambda: next(iter(bot.fake.posted(thread=False)), None))
    await wait_for(lambda: any(b["action_id"] == "silence_1h" for b in card.buttons))
    return card


async def page_text(bot: SlackBot, incident_id: int = 1) -> str:
    """The incident page, opened with a signed link."""
    parts = urlsplit(await bot.client.app[LINKS].incident(incident_id))
    resp = await bot.client.get(f"{parts.path}?{parts.query}")
    assert resp.status == 200
    return await resp.text()


def thread_text(bot: SlackBot, card: Message) -> str:
    return "\n".join(m.all_text for m in bot.replies(card))


async def test_an_approvers_click_silences_exactly_that_alert_once(
    make_bot: MakeBot, fake: SlackFake, clean_alertmanager: Alertmanager
) -> None:
    am = clean_alertmanager
    bot = await make_bot(f"alertmanager: {{url: '{am.url}', timeout: 5s}}\n")
    card = await firing(bot)
    before = silences(am, state=None)  # expired ones of earlier tests stay listed
    assert [b["action_id"] for b in card.buttons] == ["acknowledge", "silence_1h", "silence_4h"]

    assert (await bot.click(MALLORY, "silence_1h", card)).status == 200
    refusal = await bot.ephemeral(MALLORY)
    assert "Not allowed to silence" in refusal and "Nothing was changed" in refusal
    assert silences(am, state=None) == before, "a non-approver's click creates no silence"
    assert [e.actor for e in await bot.store.list_audit() if e.kind == "silence.refused"] == [
        "slack:UMALLORY"
    ]

    assert (await bot.click(ALICE, "silence_1h", card)).status == 200
    await wait_for(lambda: silences(am))
    (made,) = silences(am)
    assert sorted(
        (m["name"], m["value"], m["isRegex"], m.get("isEqual", True)) for m in made["matchers"]
    ) == sorted((k, v, False, True) for k, v in LABELS.items()), "one exact matcher per label of the alert"
    assert made["createdBy"] == "slack:UALICE"
    assert "incident #1" in made["comment"] and "/incidents/1?exp=" in made["comment"]
    ends = datetime.fromisoformat(made["endsAt"].replace("Z", "+00:00")).timestamp()
    assert 3500 < ends - time.time() < 3700, "one hour"
    await bot.slack.flush()
    assert f"silence `{made['id']}`" in thread_text(bot, card), "the silence id in the thread"
    assert "*Silenced* by <@UALICE>" in card.all_text and not any(
        b["action_id"].startswith("silence") for b in card.buttons
    ), "the card says so and drops the Silence buttons"
    (created,) = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "silence.created"]
    assert created.actor == "slack:UALICE" and created.detail["silence_id"] == made["id"]
    assert created.detail["matchers"] == matchers_for(LABELS)
    page = await page_text(bot)
    assert "silenced by slack:UALICE" in page and made["id"] in page, "the incident page shows it"

    await bot.click(BOB, "silence_4h", card, value=json.dumps({"incident": 1, "for": "4h"}))
    assert "Already silenced" in await bot.ephemeral(BOB)
    assert len(silences(am)) == 1, "a second click makes no second silence"

    await bot.command(MALLORY, f"unsilence {made['id']}", name="un-m")
    assert "Not allowed to silence" in text_of(await bot.response("un-m"))
    assert len(silences(am)) == 1
    await bot.command(BOB, f"unsilence {made['id']}", name="un-b")
    assert "expired silence" in text_of(await bot.response("un-b"))
    assert silences(am) == [] and made["id"] in {s["id"] for s in silences(am, state="expired")}
    assert [e.kind for e in await bot.store.list_audit(incident_id=1) if e.kind in ("silence.created", "silence.expired")] == [
        "silence.created", "silence.expired",
    ]  # fmt: skip


async def test_silence_by_command_with_a_reason(
    make_bot: MakeBot, fake: SlackFake, clean_alertmanager: Alertmanager
) -> None:
    am = clean_alertmanager
    bot = await make_bot(f"alertmanager: {{url: '{am.url}'}}\n")
    card = await firing(bot)
    status, _ = await bot.command(CAROL, "silence TestDiag 2h flapping during the deploy")
    assert status == 200
    assert "Silenced incident #1" in text_of(await bot.response())
    (made,) = silences(am)
    assert made["createdBy"] == "slack:UCAROL", "a member of the approver group may silence"
    assert made["comment"].startswith("flapping during the deploy | incident #1")
    await bot.slack.flush()
    assert "flapping during the deploy" in thread_text(bot, card)
    status, _ = await bot.command(ALICE, "silence NoSuchAlert 1h", name="none")
    assert "No firing alert named" in text_of(await bot.response("none"))


async def test_alertmanager_down_is_said_and_nothing_is_half_done(make_bot: MakeBot, fake: SlackFake) -> None:
    bot = await make_bot(f"alertmanager: {{url: 'http://127.0.0.1:{free_port()}', timeout: 2s}}\n")
    card = await firing(bot)
    await bot.click(ALICE, "silence_1h", card)
    said = await bot.ephemeral(ALICE)
    assert (
        "could not silence" in said and "cannot reach Alertmanager" in said and "Nothing was silenced" in said
    )
    await bot.slack.flush()
    assert "cannot reach Alertmanager" in thread_text(bot, card), "the thread says so too"
    assert not [e for e in await bot.store.list_audit() if e.kind == "silence.created"]
    assert any(b["action_id"] == "silence_1h" for b in card.buttons), "still offered"


async def test_acknowledge_records_who_and_stops_the_reminders(
    make_bot: MakeBot, fake: SlackFake, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    bot = await make_bot("approvals: {ttl: 2s}\n")
    seed_platform(redis_sync, agents=20)
    await bot.alert("TestEvict")
    await bot.approval_message()
    card = bot.parent()
    await wait_for(lambda: any(b["action_id"] == "acknowledge" for b in card.buttons))
    assert not any(b["action_id"].startswith("silence") for b in card.buttons), "no Alertmanager configured"
    await bot.click(MALLORY, "acknowledge", card)
    refusal = await bot.ephemeral(MALLORY)
    assert "Not allowed to acknowledge" in refusal and "approver list" in refusal
    await bot.click(BOB, "acknowledge", card)
    assert "You acknowledged incident #1" in await bot.ephemeral(BOB)
    await wait_for(lambda: "*Acknowledged* by <@UBOB>" in card.all_text)
    assert not any(b["action_id"] == "acknowledge" for b in card.buttons)
    ap = await bot.store.get_approval(1)
    await wait_for(lambda: time.time() > ap.expires_ts - 1.0 + 0.3 and not bot.slack.reminders)
    await bot.slack.flush()
    assert not fake.find("Still waiting for a decision"), "no reminder after the acknowledgement"
    assert "<@UBOB> is on it" in thread_text(bot, card)
    (ack,) = [e for e in await bot.store.list_audit(incident_id=1) if e.kind == "incident.acknowledged"]
    assert ack.actor == "slack:UBOB"
    assert "Acknowledged</dt><dd>slack:UBOB" in await page_text(bot)
    await bot.click(ALICE, "acknowledge", card, value=json.dumps({"incident": 1}))
    assert "Already acknowledged by <@UBOB>" in await bot.ephemeral(ALICE)


async def test_a_silencers_list_replaces_the_approvers(
    tmp_path: Path,
    redis_server: RedisServer,
    fake: SlackFake,
    clean_alertmanager: Alertmanager,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> None:
    am = clean_alertmanager
    path = write_bot_config(tmp_path, redis_server.url, f"alertmanager: {{url: '{am.url}'}}\n")
    path.write_text(
        path.read_text().replace("min_interval: 0.01}", f"min_interval: 0.01, silencers: [{MALLORY}]}}")
    )
    slack = SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=fake.api_url, timeout=2)
    bot = SlackBot(await aiohttp_client(create_app(load_config(path), slack=slack, webhook_token="")), fake)
    card = await firing(bot)
    before = silences(am, state=None)
    await bot.click(ALICE, "silence_1h", card)
    refusal = await bot.ephemeral(ALICE)
    assert "Not allowed to silence" in refusal and "silencer list" in refusal, (
        "approvers are not silencers now"
    )
    assert silences(am, state=None) == before
    await bot.click(MALLORY, "silence_1h", card)
    await wait_for(lambda: silences(am))
    assert [s["createdBy"] for s in silences(am)] == ["slack:UMALLORY"]
