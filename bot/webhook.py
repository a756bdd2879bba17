"""``POST /alerts``: the Alertmanager webhook receiver.

Status codes are a contract with Alertmanager, which retries 5xx and gives up on 4xx:
200 once the alerts are persisted; 400 with a reason for a payload that will never be valid;
401 for a missing or wrong bearer token; 413 over the size limit; 503 when the store cannot persist
(so Alertmanager retries). Any other failure is still answered, never with a bare 500 traceback.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from bot.alerts import Notification
from bot.errors import StoreError
from bot.intake import Intake
from bot.validation import field_path

log = logging.getLogger(__name__)

INTAKE = web.AppKey("intake", Intake)
WEBHOOK_TOKEN = web.AppKey("webhook_token", str)
MAX_BODY = web.AppKey("max_body", int)


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
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is over the limit of {limit} bytes")
    if len(body) > limit:
        return _error(413, f"body is over the limit of {limit} bytes")
    try:
        # One pass from bytes to the model (pydantic's JSON parser): the webhook's hottest path.
        notification = Notification.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, f"body is not valid JSON: {errors[0]['msg']}")
        if any(e["type"] == "model_type" and not e["loc"] for e in errors):
            return _error(400, "expected a JSON object (an Alertmanager webhook notification)")
        problems = [f"{field_path(tuple(e['loc'])) or '(body)'}: {e['msg']}" for e in errors]
        return _error(
            400, "invalid Alertmanager notification: " + "; ".join(problems[:10]), problems=problems[:50]
        )
    try:
        result = await request.app[INTAKE].receive(notification)
    except StoreError as exc:
        log.error("cannot persist alerts: %s", exc)
        return _error(503, "cannot persist the alerts right now; Alertmanager will retry")
    return web.json_response(
        {
            "status": "ok",
            "accepted": result.accepted,
            "new_incidents": result.new,
            "joined": {str(k): v for k, v in result.merged.items()},
            "resolved_incidents": result.resolved,
            "duplicates": result.duplicates,
        }
    )


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
