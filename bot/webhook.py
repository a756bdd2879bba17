"""``POST /alerts``: the Alertmanager webhook receiver.

Status codes are a contract with Alertmanager, which retries 5xx and gives up on 4xx:
200 once the valid alerts are persisted, listing any invalid alert of the group it rejected (index,
fingerprint, reason); 400 with the reasons for a payload that will never be valid (not JSON, a bad
envelope, or every alert invalid); 401 for a missing or wrong bearer token; 408 when the body does not
arrive in time; 413 over the size limit; 503 when the store cannot persist (so Alertmanager retries).
Any other failure is still answered, never with a bare 500 traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pydantic_core
from aiohttp import web

from bot.alerts import parse_notification
from bot.errors import InvalidNotification, RejectedAlert, StoreError
from bot.intake import Intake

log = logging.getLogger(__name__)

INTAKE = web.AppKey("intake", Intake)
WEBHOOK_TOKEN = web.AppKey("webhook_token", str)
MAX_BODY = web.AppKey("max_body", int)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
"""Seconds the whole request body may take to arrive (``server.body_timeout``)."""
DEFAULT_BODY_TIMEOUT = 5.0


def _error(status: int, reason: str, **extra: object) -> web.Response:
    return web.json_response({"status": "error", "error": reason, **extra}, status=status)


def _authorized(request: web.Request) -> bool:
    token = request.app[WEBHOOK_TOKEN]
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def handle_alerts(request: web.Request) -> web.Response:
    """``POST /alerts``, timed for the bot's own metrics (latency by status code)."""
    started = time.perf_counter()
    code = 500
    try:
        response = await _handle_alerts(request)
        code = response.status
        return response
    finally:
        request.app[INTAKE].runner.metrics.webhook_request(code, time.perf_counter() - started)


async def _handle_alerts(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response(
            {"status": "error", "error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="alerts"'},
        )
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"body of {request.content_length} bytes is over the limit of {limit} bytes")
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    try:
        # aiohttp waits for a body forever: a client that stalls mid-body would hold its slot.
        async with asyncio.timeout(timeout):
            body = await request.read()
    except TimeoutError:
        response = _error(408, f"the request body did not arrive within {timeout:g}s")
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is over the limit of {limit} bytes")
    if len(body) > limit:
        return _error(413, f"body is over the limit of {limit} bytes")
    try:
        notification, rejected = parse_notification(body)
    except InvalidNotification as exc:
        _report_rejected(request, exc.rejected, None)
        extra: dict[str, object] = {"problems": exc.problems} if exc.problems else {}
        if exc.rejected:
            extra["rejected"] = [r.as_json() for r in exc.rejected]
        return _error(400, exc.reason, **extra)
    try:
        result = await request.app[INTAKE].receive(notification)
    except StoreError as exc:
        log.error("cannot persist alerts: %s", exc)
        return _error(503, "cannot persist the alerts right now; Alertmanager will retry")
    _report_rejected(request, rejected, len(notification.alerts))  # after: a 503 is sent again
    answer = {
        "status": "ok",
        "accepted": len(notification.alerts),
        "new_incidents": result.new,
        "joined": {str(k): v for k, v in result.merged.items()},
        "resolved_incidents": result.resolved,
        "duplicates": result.duplicates,
        "rejected": [r.as_json() for r in rejected],
    }
    # Encoded in Rust (pydantic-core): the stdlib encoder showed in the profile of every answer.
    return web.Response(body=pydantic_core.to_json(answer), content_type="application/json")


def _report_rejected(request: web.Request, rejected: list[RejectedAlert], stored: int | None) -> None:
    """One log line per notification (not per alert: a hostile one may carry 10,000) and a count per
    field, so a sender that keeps sending broken alerts shows on a dashboard. ``stored`` is how many
    of its alerts were stored, ``None`` when the whole notification was refused."""
    if not rejected:
        return
    metrics = request.app[INTAKE].runner.metrics
    for field, n in Counter(r.field for r in rejected).items():
        metrics.alert_rejected(field, n)
    shown = "; ".join(f"#{r.index} (fingerprint {r.fingerprint or '-'}): {r.reason}" for r in rejected[:5])
    more = f"; and {len(rejected) - 5} more" if len(rejected) > 5 else ""
    outcome = "refused the notification" if stored is None else f"stored its other {stored}"
    log.warning("rejected %d invalid alert(s), %s: %s%s", len(rejected), outcome, shown, more)


@web.middleware
async def never_500(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn an unexpected exception into a JSON 500 with a short message (no traceback leaks)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal error; see the bot's log")
