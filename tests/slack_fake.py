"""A local fake of the Slack Web API (and of response_url), recording everything the bot sends.

It answers the methods the bot uses the way Slack does (``{"ok": true, ...}``), keeps the current
content of every message it was sent and the text of each earlier version (so a test can read a
message after its edits, and the states it went through), and can be made to fail (HTTP 500) or
hang, to show that Slack trouble never blocks the bot.

Rate limits are opt-in: with ``rate_limit=1.0`` a write to a channel (``chat.postMessage``,
``chat.update``, ``files.completeUploadExternal``) less than a second after the previous accepted
one is answered ``429`` with ``Retry-After``, as Slack does ("about one message per second per
channel"); ``rate_limit`` is that window in seconds. ``throttle(n)`` answers the next ``n`` writes
429 whatever their timing. Files are uploaded the current way: ``files.getUploadURLExternal``, a
POST of the bytes to the URL it returns, then ``files.completeUploadExternal``, which shares the
file into the thread as a message.
Point the bot at it with ``SlackSettings(api_url=fake.api_url)`` (``SLACK_API_URL`` in production).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

BOT_USER = "UBOT"
TEAM = "T0TEAM"


@dataclass
class Call:
    """One request the bot made: the API method (or ``response_url``) and its arguments."""

    method: str
    args: dict[str, Any]
    token: str | None
    answered: bool = True
    at: float = field(default_factory=time.monotonic)
    status: int = 200


@dataclass
class Message:
    """A message's current state in the fake workspace."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: int = 0
    history: list[str] = field(default_factory=list)
    """The plain ``text`` of every version, oldest first (the current one last)."""
    file: dict[str, Any] | None = None
    """A file shared into the conversation by ``files.completeUploadExternal`` (its content too)."""

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])]

    @property
    def all_text(self) -> str:
        """The text and every text inside the blocks, for simple assertions."""
        parts = [self.text]

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("text"), str):
                    parts.append(node["text"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(self.blocks)
        return "\n".join(parts)


@dataclass
class SlackFake:
    """The fake's state; ``app`` is the aiohttp application to serve on port 0."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    group_handles: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False
    hanging: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    """Method -> the Slack error it answers (``{"ok": false, "error": ...}``), e.g. a missing scope."""
    rate_limit: float | None = None
    rate_limited: list[Call] = field(default_factory=list)
    """Calls answered 429."""
    uploads: dict[str, bytes] = field(default_factory=dict)
    _last_write: dict[str, float] = field(default_factory=dict)
    _throttle: int = 0
    base_url: str = ""
    socket_inbox: list[dict[str, Any]] = field(default_factory=list)
    _socket_outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_route("*", "/api/{method}", self._api)
        self.app.router.add_post("/respond/{id}", self._respond)
        self.app.router.add_post("/upload/{id}", self._upload)
        self.app.router.add_get("/socket", self._socket)

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def response_url(self, name: str = "cmd") -> str:
        return f"{self.base_url}/respond/{name}"

    def throttle(self, n: int = 1) -> None:
        """Answer the next ``n`` channel writes 429 (Retry-After: 1), whatever their timing."""
        self._throttle = n

    def release(self) -> None:
        """End the hang: requests waiting are answered (with 500s)."""
        self.hanging = False
        self._release.set()

    # -- queries for tests -------------------------------------------------------------------------

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.answered]

    def posted(self, *, thread: bool | None = None) -> list[Message]:
        """Messages in posting order; ``thread`` selects replies (True) or top-level messages (False)."""
        out = list(self.messages.values())
        if thread is not None:
            out = [m for m in out if (m.thread_ts is not None) == thread]
        return out

    def find(self, needle: str) -> list[Message]:
        return [m for m in self.messages.values() if needle in m.all_text]

    def ephemerals(self, user: str) -> list[str]:
        return [
            str(c.args.get("text", "")) for c in self.of("chat.postEphemeral") if c.args.get("user") == user
        ]

    # -- handlers ---------------------------------------------------------------------------------

    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        for key in ("blocks",):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        return args

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args = await self._args(request)
        auth = request.headers.get("Authorization", "")
        call = Call(method, args, auth.removeprefix("Bearer ") or None, answered=False)
        self.calls.append(call)
        if self.hanging:  # the caller gives up long before; once released, still an error
            await self._release.wait()
            return web.Response(status=500, text="upstream was hanging")
        if self.failing:
            return web.Response(status=500, text="upstream trouble")
        limited = self._rate_limited(method, args, call)
        if limited is not None:
            return limited
        call.answered = True
        if method in self.errors:
            return web.json_response({"ok": False, "error": self.errors[method]})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response({"ok": True, **handler(args)})

    def _rate_limited(self, method: str, args: dict[str, Any], call: Call) -> web.Response | None:
        """429 for a channel write too soon after the previous one (when rate limits are on)."""
        channel = args.get("channel") or args.get("channel_id")
        if method not in _WRITES or not channel:
            return None
        now = time.monotonic()
        wait = 1.0
        if self._throttle > 0:
            self._throttle -= 1
        elif self.rate_limit is not None and now - self._last_write.get(channel, -1e9) < self.rate_limit:
            wait = self.rate_limit - (now - self._last_write[channel])
        else:
            self._last_write[channel] = now
            return None
        call.status = 429
        self.rate_limited.append(call)
        return web.json_response(
            {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(math.ceil(wait))}
        )

    async def _upload(self, request: web.Request) -> web.Response:
        self.uploads[request.match_info["id"]] = await request.read()
        self.calls.append(Call("upload", {"file": request.match_info["id"]}, None))
        return web.Response(text="OK - 200")

    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(Call("response_url", body, None))
        self.responses.append({"url": request.match_info["id"], **body})
        return web.Response(text="ok")

    def push_envelope(self, envelope: dict[str, Any]) -> None:
        """Send a Socket Mode envelope to the connected bot."""
        self._socket_outbox.put_nowait(envelope)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        """Socket Mode: say hello, push queued envelopes, record what the bot sends back (acks)."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.calls.append(Call("socket.connect", {}, None))
        await ws.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}})

        async def pump() -> None:
            while True:
                await ws.send_json(await self._socket_outbox.get())

        task = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT:
                    self.socket_inbox.append(json.loads(msg.data))
        finally:
            task.cancel()
        return ws

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    # -- methods ----------------------------------------------------------------------------------

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://fake.slack.com/", "team": "Fake", "user": "bot", "team_id": TEAM,
                "user_id": BOT_USER, "bot_id": "BBOT"}  # fmt: skip

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        ts = self._next_ts()
        msg = Message(str(args["channel"]), ts, str(args.get("text", "")), list(args.get("blocks") or []),
                      args.get("thread_ts"))  # fmt: skip
        msg.history.append(msg.text)
        self.messages[ts] = msg
        return {"channel": msg.channel, "ts": ts, "message": {"text": msg.text, "ts": ts}}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self.messages[str(args["ts"])]
        msg.text = str(args.get("text", msg.text))
        msg.blocks = list(args.get("blocks") or [])
        msg.edits += 1
        msg.history.append(msg.text)
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ts):08d}"
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = (
            json.loads(args["files"]) if isinstance(args.get("files"), str) else list(args.get("files") or [])
        )
        shared = []
        for f in files:
            raw = self.uploads.get(f["id"], b"")
            content = raw.decode("utf-8", "replace")
            info = {"id": f["id"], "title": f.get("title", ""), "content": content, "bytes": raw}
            shared.append({"id": f["id"], "title": info["title"]})
            if args.get("channel_id"):
                ts = self._next_ts()
                msg = Message(str(args["channel_id"]), ts, str(args.get("initial_comment") or ""), [],
                              args.get("thread_ts"), file=info)  # fmt: skip
                msg.history.append(msg.text)
                self.messages[ts] = msg
        return {"files": shared}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"message_ts": self._next_ts()}

    def _m_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"users": self.groups.get(str(args.get("usergroup")), [])}

    def _m_usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"usergroups": [{"id": gid, "handle": h, "name": h} for h, gid in self.group_handles.items()]}

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.base_url.replace("http", "ws", 1) + "/socket"}


_WRITES = frozenset({"chat.postMessage", "chat.update", "files.completeUploadExternal"})
"""Methods that write into a channel: what the opt-in rate limit counts."""


# -- signing requests as Slack does -----------------------------------------------------------------


def signed_headers(secret: str, body: str, *, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert sig is not None
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sig,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def forged_signature(body: str, timestamp: str) -> str:
    """A well-formed signature made with the wrong secret."""
    digest = hmac.new(b"not-the-secret", f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


def block_actions_body(
    *, user: str, action_id: str, value: str, message: dict[str, Any], response_url: str
) -> str:
    """A ``block_actions`` payload shaped like Slack's, form-encoded as ``payload=...``."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": message["channel"],
            "is_ephemeral": False,
            "thread_ts": message.get("thread_ts"),
        },
        "trigger_id": "1.2.3",
        "team": {"id": TEAM, "domain": "fake"},
        "channel": {"id": message["channel"], "name": "incidents"},
        "message": {
            "type": "message",
            "ts": message["ts"],
            "thread_ts": message.get("thread_ts"),
            "text": message.get("text", ""),
        },
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": "approval",
                "text": {"type": "plain_text", "text": action_id.title()},
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


def slash_command_body(*, user: str, text: str, channel: str, response_url: str) -> str:
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "incidents",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/redis",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )
