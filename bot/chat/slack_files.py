"""Files into an incident's Slack thread: the details file and the charts.

Uploads use Slack's current API, as slack_sdk's ``files_upload_v2`` does:
``files.getUploadURLExternal``, a POST of the bytes to the URL it returns, then
``files.completeUploadExternal``, which shares the file into the thread. Each goes through the
channel's :class:`bot.chat.slack_outbox.Outbox` (paced, 429-aware) like every other write.

An app without the ``files:write`` scope gets an error that retrying will not fix: uploads stop for
this process, with one warning that says what to do, and the thread goes on without files.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.slack_outbox import Outbox

log = logging.getLogger(__name__)

FILE_ERRORS = frozenset({"missing_scope", "not_allowed_token_type", "no_permission", "unknown_method"})
"""Upload errors that will not go away by retrying: uploads stop for this process."""


class FileUploads:
    """Uploads a file into a thread; ``enabled`` turns False for good after a scope error."""

    def __init__(self, client: AsyncWebClient, outbox: Outbox, *, enabled: bool = True) -> None:
        self.client = client
        self.outbox = outbox
        self.enabled = enabled

    async def upload(self, channel: str, thread_ts: str, **kwargs: Any) -> str | None:
        """Upload into ``channel``'s thread ``thread_ts`` (``kwargs`` as for ``files_upload_v2``);
        the file's id, or None when uploads are off (missing scope). Other errors raise."""
        if not self.enabled:
            return None
        try:
            resp = await self.outbox.call(
                channel,
                lambda: self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, **kwargs),
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            if error not in FILE_ERRORS:
                raise
            self.enabled = False
            log.warning(
                "slack: cannot upload files (%s): add the files:write scope to the app (or set"
                " slack.details: command); charts stay on disk and on the incident page, the full"
                " output in `remediation-bot incidents ID`",
                error,
            )
            return None
        file = resp.get("file") or {}
        return str(file.get("id") or "uploaded")
