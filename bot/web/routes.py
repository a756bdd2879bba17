"""``GET /incidents`` and ``GET /incidents/{id}``: the read-only incident pages, behind signed links.

Access (see :mod:`bot.web.links`): a valid signature of the exact path (``?exp=…&sig=…``), or the
optional ``BOT_UI_TOKEN`` as a bearer token or a cookie. No signature and no token answers 401; an
expired or altered link 403. Nothing here writes to the store. Pages are served with headers that
keep them to themselves: no scripts or external loads (CSP), no referrer (the link is a
credential), no caching, no framing.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from pathlib import Path

from aiohttp import web

from bot.charts import chart_bytes
from bot.config import Config
from bot.errors import NotFound
from bot.incidents import Approval, AuditEntry, IncidentState
from bot.store import Store
from bot.web.links import Check, PageLinks, check, ui_token
from bot.web.pages import IncidentPage, clean, document, incident_list, incident_page

log = logging.getLogger(__name__)

LINKS = web.AppKey("page_links", PageLinks)
PAGE_STORE = web.AppKey("page_store", Store)
PAGE_CONFIG = web.AppKey("page_config", Config)
COOKIE = "bot_ui_token"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline';"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def page(body: str, status: int = 200, **headers: str) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers={**HEADERS, **headers})


def refusal(result: Check) -> web.Response:
    if result == Check.MISSING:
        return page(
            document(
                "Sign-in needed",
                "<main><h1>This page needs a signed link</h1><p>Open it from the incident's Slack message"
                " or the bot's console output, which carry a link that is valid for a while.</p></main>",
            ),
            401,
            **{"WWW-Authenticate": 'Bearer realm="incidents"'},
        )
    why = "has expired" if result == Check.EXPIRED else "is not valid (it was changed or cut short)"
    return page(
        document("Link refused", f"<main><h1>This link {clean(why)}</h1><p>Open the incident again from"
                 " its Slack message or the console for a fresh link.</p></main>"),
        403,
    )  # fmt: skip


def _has_token(request: web.Request) -> bool:
    token = ui_token()
    if not token:
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or request.cookies.get(
        COOKIE, ""
    )
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


async def authorize(request: web.Request) -> web.Response | bool:
    """A refusal to send, or whether the reader came with the token (True) or a signed link."""
    if _has_token(request):
        return True
    result = check(
        await request.app[LINKS].key(), request.path, request.query.get("exp"), request.query.get("sig")
    )
    return False if result == Check.OK else refusal(result)


async def token_login(request: web.Request) -> web.Response | None:
    """``?token=…`` once: the token goes into a cookie and the address bar loses it."""
    given, token = request.query.get("token", ""), ui_token()
    if not given:
        return None
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return refusal(Check.INVALID)
    resp = web.HTTPSeeOther(request.path)
    resp.set_cookie(
        COOKIE, token, httponly=True, samesite="Strict", path="/incidents", secure=request.secure,
        max_age=30 * 86400,
    )  # fmt: skip
    raise resp


async def incidents_list(request: web.Request) -> web.Response:
    login = await token_login(request)
    if login is not None:
        return login
    allowed = await authorize(request)
    if isinstance(allowed, web.Response):
        return allowed
    store, links = request.app[PAGE_STORE], request.app[LINKS]
    state, target = request.query.get("state", ""), request.query.get("target", "").strip()
    incidents = await store.list_incidents(limit=500, steps=False)
    shown = [
        i
        for i in incidents
        if (not state or i.status == state) and (not target or target in (i.target or ""))
    ][:200]
    rows = [(inc, await links.incident(inc.id)) for inc in shown]
    hidden = {k: request.query[k] for k in ("exp", "sig") if k in request.query}
    states = [str(s) for s in IncidentState]
    return page(incident_list(rows, state=state, target=target, states=states, hidden=hidden))


async def _approvals(store: Store, audit: list[AuditEntry]) -> list[Approval]:
    ids = [e.detail["approval_id"] for e in audit if e.kind == "approval.requested"]
    out = []
    for approval_id in dict.fromkeys(i for i in ids if isinstance(i, int)):
        try:
            out.append(await store.get_approval(approval_id))
        except NotFound:
            continue
    return out


def _read_chart(path: str, folder: Path) -> bytes | None:
    """A chart the store does not hold (drawn before charts were kept there), if it is a PNG in
    this replica's chart folder (and not huge)."""
    p = Path(path).resolve()
    return chart_bytes(p) if p.is_relative_to(folder.resolve()) else None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


async def incident_detail(request: web.Request) -> web.Response:
    allowed = await authorize(request)
    if isinstance(allowed, web.Response):
        return allowed
    store = request.app[PAGE_STORE]
    try:
        inc = await store.get_incident(int(request.match_info["id"]))
    except NotFound:
        return page(document("Not found", "<main><h1>No such incident</h1></main>"), 404)
    audit = await store.list_audit(incident_id=inc.id, limit=2000)
    folder = request.app[PAGE_CONFIG].state_file.parent / "charts"
    drawn = {
        run.id: path
        for run in inc.steps
        if run.step_type == "prometheus.chart"
        and isinstance(path := run.data.get("chart_path"), str)
        and path
    }
    # From the store: whichever replica drew a chart, every replica shows it.
    stored = await store.charts(list(drawn))
    charts: dict[int, str] = {}
    for run_id, path in drawn.items():
        png = stored.get(run_id) or await asyncio.to_thread(_read_chart, path, folder)
        if png is not None:
            charts[run_id] = _data_uri(png)
    view = IncidentPage(
        incident=inc,
        approvals=await _approvals(store, audit),
        audit=audit,
        charts=charts,
        list_url="/incidents" if allowed is True else None,
    )
    return page(incident_page(view))


def add_pages(app: web.Application, config: Config, links: PageLinks) -> None:
    """Register the pages; ``app[PAGE_STORE]`` must be set once the store is open."""
    app[LINKS] = links
    app[PAGE_CONFIG] = config
    app.router.add_get("/incidents", incidents_list)
    app.router.add_get(r"/incidents/{id:\d+}", incident_detail)
