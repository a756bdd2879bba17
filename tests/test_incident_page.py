"""The read-only incident page: a real incident, its signed link from the Slack card, a real browser.

The service runs with a real redis-server and the Slack fake; an alert goes through diagnosis, an
approver's click and the eviction. The card's "Incident page" link is then opened by headless
Chromium (Debian's ``chromium``), which must show what a person needs: the alert's name, the plan,
and who decided. The screenshot is kept in the test's tmp folder. The link checks ask the service
directly: a valid signature 200, none 401, expired or altered 403, the optional token for the list.
"""

from __future__ import annotations

import asyncio
import html
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from aiohttp.test_utils import TestClient
from PIL import Image

from bot.app import create_app
from bot.chat.slack_settings import SlackSettings
from bot.config import load_config
from bot.incidents import IncidentState
from bot.localstack import free_port
from bot.web.links import KEY_SETTING, SECRET_ENV, TOKEN_ENV, PageLinks, signature
from bot.web.routes import LINKS
from tests.conftest import RedisServer, alert_payload, seed_platform, wait_for
from tests.slack_fake import SlackFake
from tests.test_slack import ALICE, SECRET, SlackBot, write_bot_config
from tests.test_slack import fake as fake  # the Slack fake fixture, shared

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


class PageBot(SlackBot):
    """The service on a known port, so that its links (built from the listen address) open."""

    port: int

    async def card_link(self) -> str:
        """The "Incident page" link on the incident's Slack card (unescaped, as Slack shows it)."""

        def find() -> str | None:
            cards = self.fake.posted(thread=False)
            m = re.search(r"<(https?://[^|>]+)\|Incident page>", cards[0].all_text) if cards else None
            return html.unescape(m.group(1)) if m else None

        link: str = await wait_for(find)
        return link

    async def get(self, url: str, **kw: object) -> tuple[int, str, dict[str, str]]:
        parts = urlsplit(url)
        resp = await self.client.get(parts.path + (f"?{parts.query}" if parts.query else ""), **kw)  # type: ignore[arg-type]
        return resp.status, await resp.text(), dict(resp.headers)


MakePageBot = Callable[..., Awaitable[PageBot]]


@pytest.fixture
def make_page_bot(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    fake: SlackFake,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> MakePageBot:
    async def make(extra: str = "") -> PageBot:
        port = free_port()
        config = load_config(write_bot_config(tmp_path, redis_server.url, extra))
        slack = SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=fake.api_url, timeout=2)
        app = create_app(config, slack=slack, webhook_token="", listen=f"http://127.0.0.1:{port}")
        bot = PageBot(await aiohttp_client(app, server_kwargs={"port": port}), fake)
        bot.port = port
        return bot

    return make


async def approved_incident(bot: PageBot, redis_sync: redis.Redis) -> None:
    """An eviction incident, approved by Alice and verified; the alert carries a URL with a password."""
    seed_platform(redis_sync, agents=40)
    payload = alert_payload("TestEvict")
    payload["alerts"][0]["annotations"]["description"] = "replica at redis://:hunter2@10.0.0.9:6379/0 is full"
    assert (await bot.client.post("/alerts", json=payload)).status == 200
    approval = await bot.approval_message()
    assert (await bot.click(ALICE, "approve", approval)).status == 200
    await bot.wait_status(IncidentState.VERIFIED)
    await bot.slack.flush(10)


async def chromium(*args: str, profile: Path) -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `make install` (Debian package chromium)")
    proc = await asyncio.create_subprocess_exec(
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


@pytest.mark.timeout(240)
async def test_a_browser_shows_the_alert_the_plan_and_the_decision(
    make_page_bot: MakePageBot, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    bot = await make_page_bot()
    await approved_incident(bot, redis_sync)
    link = await bot.card_link()
    assert link.startswith(f"http://127.0.0.1:{bot.port}/incidents/1?exp=")

    dom = await chromium("--dump-dom", link, profile=tmp_path / "profile")
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "Incident #1: TestEvict on cache" in text
    assert "delete 40 keys matching agent:*" in text, "the plan"
    assert re.search(r"Approved by\s+slack:UALICE", text), "who decided"
    assert "Verification" in text and "check" in text
    assert "hunter2" not in dom and "redis://:***@10.0.0.9:6379/0" in text, "no password on the page"

    shot = tmp_path / "incident-page.png"
    await chromium(f"--screenshot={shot}", "--window-size=412,1600", link, profile=tmp_path / "profile")
    img = Image.open(shot).convert("L")
    assert img.size == (412, 1600)
    dark = sum(img.histogram()[:128])
    assert dark > 2000, "the screenshot shows text, not an empty page"


async def test_signed_links_valid_missing_expired_and_tampered(
    make_page_bot: MakePageBot, redis_sync: redis.Redis
) -> None:
    bot = await make_page_bot()
    await approved_incident(bot, redis_sync)
    link = await bot.card_link()
    status, body, headers = await bot.get(link)
    assert status == 200 and "TestEvict" in body
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"

    assert (await bot.get("/incidents/1"))[0] == 401, "no signature"
    assert (await bot.get("/incidents"))[0] == 401, "the list too"
    query = parse_qs(urlsplit(link).query)
    exp, sig = query["exp"][0], query["sig"][0]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert (await bot.get(f"/incidents/1?exp={exp}&sig={flipped}"))[0] == 403, "altered signature"
    assert (await bot.get(f"/incidents/1?exp={int(exp) + 3600}&sig={sig}"))[0] == 403, "longer life"
    assert (await bot.get(f"/incidents/2?exp={exp}&sig={sig}"))[0] == 403, "another incident"
    links = bot.client.app[LINKS]
    expired = await links.url("/incidents/1", ttl=-60)
    status, body, _ = await bot.get(expired)
    assert status == 403 and "expired" in body
    key = await bot.store.get_setting(KEY_SETTING)
    assert key and key.encode() == await links.key(), "the generated key is kept in the store"
    entries = await bot.store.list_audit()
    assert key not in str([e.model_dump() for e in entries]), "and never audited"


async def test_the_list_with_a_signed_link_or_the_token(
    make_page_bot: MakePageBot, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "let-me-browse")
    bot = await make_page_bot()
    await approved_incident(bot, redis_sync)
    status, body, _ = await bot.get(await bot.client.app[LINKS].url("/incidents"))
    assert status == 200 and "#1" in body and "TestEvict" in body
    assert re.search(r"href='http://127\.0\.0\.1:\d+/incidents/1\?exp=\d+&amp;sig=[0-9a-f]{64}'", body)
    filtered = await bot.get(await bot.client.app[LINKS].url("/incidents") + "&state=failed")
    assert filtered[0] == 200 and "No incident matches" in filtered[1]

    assert (await bot.get("/incidents", headers={"Authorization": "Bearer wrong"}))[0] == 401
    status, body, _ = await bot.get("/incidents", headers={"Authorization": "Bearer let-me-browse"})
    assert status == 200 and "TestEvict" in body
    resp = await bot.client.get("/incidents?token=let-me-browse", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/incidents"
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Strict" in resp.headers["Set-Cookie"]
    status, body, _ = await bot.get("/incidents/1")  # the cookie jar now holds the token
    assert status == 200 and "All incidents" in body
    assert (await bot.client.get("/incidents?token=guess", allow_redirects=False)).status == 403


async def test_links_from_the_environment_secret_and_the_public_url(
    make_page_bot: MakePageBot, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "shared-by-every-replica")
    bot = await make_page_bot("ui: {public_url: 'https://bot.example.com/'}\n")
    assert (await bot.client.post("/alerts", json=alert_payload("TestDiag"))).status == 200
    await bot.wait_status(IncidentState.DIAGNOSED)
    link = await bot.card_link()
    assert link.startswith("https://bot.example.com/incidents/1?exp=")
    query = parse_qs(urlsplit(link).query)
    assert query["sig"][0] == signature(b"shared-by-every-replica", "/incidents/1", int(query["exp"][0]))
    assert (await bot.get(link))[0] == 200
    assert await bot.store.get_setting(KEY_SETTING) is None, "no key generated when the secret is set"
    other = PageLinks(bot.engine.config, lambda: bot.store)
    assert (await bot.get(await other.incident(1)))[0] == 200, "another replica's link works here"
