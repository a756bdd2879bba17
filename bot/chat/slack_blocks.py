"""Block Kit helpers, approval requests, notices and slash-command output.

Written for an on-call engineer reading a phone at 3 a.m.: the first line says what happened and
what the bot wants, figures come next. Every message also carries a plain ``text``, which is what
push notifications and screen readers show. The incident card and its thread (digest, results)
are in :mod:`bot.chat.slack_card`; raw output appears only in answers to ``/redis`` commands, in a
code block cut to a readable size. Pure functions: no I/O, so the views are easy to test and reuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bot.formatting import human_bytes
from bot.incidents import Approval, ApprovalState, Incident, IncidentState, StepStatus
from bot.planview import describe_changes

APPROVE_ACTION = "approve"
DENY_ACTION = "deny"

DETAILS_LIMIT = 2500
"""Characters of raw output in a ``/redis`` answer; Slack cuts a section at 3,000."""
SECTION_LIMIT = 2900
TEXT_LIMIT = 300
"""The plain ``text`` of a message: a push notification, so short."""

Block = dict[str, Any]

INCIDENT_STATES: dict[IncidentState, tuple[str, str]] = {
    IncidentState.NEW: (":new:", "new"),
    IncidentState.DIAGNOSING: (":mag:", "diagnosing"),
    IncidentState.AWAITING_APPROVAL: (":raised_hand:", "waiting for approval"),
    IncidentState.REMEDIATING: (":hammer_and_wrench:", "remediating"),
    IncidentState.DIAGNOSED: (":clipboard:", "diagnosed"),
    IncidentState.VERIFIED: (":white_check_mark:", "fixed and verified"),
    IncidentState.FAILED: (":x:", "failed"),
    IncidentState.ESCALATED: (":rotating_light:", "escalated: needs a human"),
    IncidentState.RESOLVED: (":large_green_circle:", "resolved"),
    IncidentState.UNMATCHED: (":grey_question:", "no playbook"),
}

STEP_ICONS: dict[StepStatus, str] = {
    StepStatus.OK: ":white_check_mark:",
    StepStatus.WARNING: ":warning:",
    StepStatus.FAILED: ":x:",
    StepStatus.ERROR: ":x:",
    StepStatus.TIMEOUT: ":stopwatch:",
    StepStatus.SKIPPED: ":fast_forward:",
    StepStatus.PLANNED: ":memo:",
    StepStatus.AWAITING_APPROVAL: ":raised_hand:",
    StepStatus.APPROVED: ":+1:",
    StepStatus.DENIED: ":no_entry_sign:",
    StepStatus.EXPIRED: ":hourglass:",
    StepStatus.CANCELLED: ":no_entry_sign:",
    StepStatus.INTERRUPTED: ":zap:",
    StepStatus.ESCALATED: ":rotating_light:",
    StepStatus.RUNNING: ":hourglass_flowing_sand:",
}

HAND_SOURCES = frozenset({"slack", "cli"})
"""Incident sources that are a person asking, not an alert firing."""

_SLACK_ACTOR = re.compile(r"slack:([UW][A-Z0-9]+)")


# -- text helpers ---------------------------------------------------------------------------------


def esc(text: object) -> str:
    """Escape the three characters Slack's mrkdwn treats as markup (``&``, ``<``, ``>``)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(text: object) -> str:
    """Inline code that survives any content (a backtick would end it early)."""
    plain = str(text).replace("`", "'")
    return f"`{esc(plain)}`"


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def who(actor: str | None) -> str:
    """A decider as people know them: ``slack:U123`` becomes a mention, others stay as they are."""
    if not actor:
        return "the bot"
    return ", ".join(
        f"<@{m.group(1)}>" if (m := _SLACK_ACTOR.fullmatch(part.strip())) else esc(part.strip())
        for part in actor.split(",")
    )


def mentionize(text: str) -> str:
    """Escape a message and turn every ``slack:U123`` in it into a mention."""
    return _SLACK_ACTOR.sub(lambda m: f"<@{m.group(1)}>", esc(text))


def when(iso: str | None) -> str:
    """A time shown in each reader's own time zone (Slack date token), with the UTC text as fallback."""
    if not iso:
        return "an unknown time"
    try:
        ts = int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return esc(iso)
    return f"<!date^{ts}^{{date_short_pretty}} {{time}}|{esc(iso)}>"


def truncate_details(text: str, limit: int = DETAILS_LIMIT, *, incident_id: int | None = None) -> str:
    """Raw output cut at a line boundary near ``limit``, saying how much was left out and where to see it."""
    text = text.rstrip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    if "\n" in head[limit // 2 :]:
        head = head[: head.rfind("\n")]
    hidden = text[len(head) :].strip("\n")
    where = f"; full output: `remediation-bot incidents {incident_id} --config …`" if incident_id else ""
    return f"{head}\n… {hidden.count(chr(10)) + 1} more lines cut{where}"


def mrkdwn(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_LIMIT)}}


def context(*parts: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(p, 2000)} for p in parts if p]}


def fields(pairs: Sequence[tuple[str, str]]) -> Block:
    """A two-column section (Slack allows at most ten fields)."""
    return {
        "type": "section",
        "fields": [{"type": "mrkdwn", "text": cut(f"*{k}*\n{v}", 2000)} for k, v in pairs[:10]],
    }


def details_block(details: str, *, incident_id: int | None = None) -> Block:
    body = truncate_details(details, incident_id=incident_id).replace("```", "'''")
    return mrkdwn(f"```{esc(body)}```")


def thread_link(ref: dict[str, Any]) -> str:
    """A link to a message from its chat_ref (Slack redirects it to the workspace)."""
    channel, ts = ref.get("channel"), str(ref.get("ts", ""))
    if not channel or not ts:
        return ""
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


# -- incidents ------------------------------------------------------------------------------------


def state_label(state: IncidentState) -> tuple[str, str]:
    return INCIDENT_STATES.get(state, (":grey_question:", str(state)))


# -- approvals ------------------------------------------------------------------------------------


def button_value(inc_id: int, ap: Approval) -> str:
    """What a button carries back: the approval it decides and the hash of the plan it showed."""
    return json.dumps({"incident": inc_id, "approval": ap.id, "plan": ap.plan_hash}, separators=(",", ":"))


def parse_button_value(value: str | None) -> tuple[int, int, str] | None:
    """(incident id, approval id, plan hash) from a button's value, or None when it is malformed."""
    try:
        data = json.loads(value or "")
        inc, ap, plan = data["incident"], data["approval"], data["plan"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(inc, int) or not isinstance(ap, int) or not isinstance(plan, str):
        return None
    return inc, ap, plan


def plan_fields(plan: dict[str, Any], required: int) -> list[tuple[str, str]]:
    out = [("Where", f"{code(plan.get('target'))} db {esc(plan.get('db'))}")]
    if plan.get("pattern"):
        out.append(("Pattern", code(plan["pattern"])))
    if plan.get("estimated_keys") is not None:
        out.append(("Keys", f"~{plan['estimated_keys']:,}"))
    if plan.get("estimated_bytes") is not None:
        out.append(("Memory", f"~{human_bytes(plan['estimated_bytes'])}"))
    if plan.get("protected_excluded") is not None:
        out.append(("Protected keys excluded", f"{plan['protected_excluded']:,} (never touched)"))
    out.append(("Approvers needed", f"{required}" + (" different people" if required > 1 else "")))
    return out


def _outcome(ap: Approval) -> str:
    at = when(ap.decided_at)
    state = ap.state
    if state in (ApprovalState.APPROVED, ApprovalState.EXECUTING, ApprovalState.EXECUTED):
        return f":white_check_mark: *Approved* by {who(', '.join(ap.approvers) or ap.decided_by)} {at}"
    if state == ApprovalState.DENIED:
        return f":no_entry_sign: *Denied* by {who(ap.decided_by)} {at}. Nothing was changed."
    if state == ApprovalState.EXPIRED:
        return f":hourglass: *Expired* {at}: nobody decided in time. Nothing was changed."
    if state == ApprovalState.CANCELLED:
        why = "the alert resolved" if ap.decided_by == "alert resolved" else f"by {who(ap.decided_by)}"
        return f":no_entry_sign: *Cancelled* {at}: {why}. Nothing was changed."
    if state == ApprovalState.SUPERSEDED:
        replaced = "*Replaced* by a newer plan: use the newest request in this thread."
        if ap.approvers:
            return (
                f":arrows_counterclockwise: Approved by {who(', '.join(ap.approvers))} {at} but *not executed*:"
                f" the plan changed before it ran. {replaced}"
            )
        return f":arrows_counterclockwise: {replaced}"
    if state == ApprovalState.INTERRUPTED:
        return ":zap: *Interrupted* by a restart of the bot; the action was not re-run."
    return f"*{esc(state)}*"


def approval_message(inc: Incident, ap: Approval, mention: str = "") -> tuple[str, list[Block]]:
    """The approval request: the exact plan, then Approve/Deny while open, else who decided what.

    ``mention`` (Slack mention tokens) calls the approvers while the request is open; Slack notifies
    them when the request is posted, never again when it is edited."""
    plan = ap.plan
    open_ = ap.state == ApprovalState.PENDING
    summary = str(plan.get("summary") or plan.get("action") or ap.step_type)
    verb = "Approval needed" if open_ else "Approval request"
    icon = ":raised_hand:" if open_ else ":lock:"
    call = f"{mention} " if mention and open_ else ""
    text = cut(f"{call}#{inc.id} {verb.lower()}: {summary}", TEXT_LIMIT)
    blocks: list[Block] = [
        mrkdwn(
            f"{call}{icon} *{verb}* for {code(ap.step_id)} ({esc(ap.step_type)}) on incident #{inc.id}\n{esc(summary)}"
        ),
    ]
    changes = describe_changes(plan)
    if changes:
        # Every change the action makes, one per line: what the approver approves is all of it.
        blocks.append(mrkdwn("*Changes*\n" + "\n".join(f"• {esc(c)}" for c in changes)))
    blocks.append(fields(plan_fields(plan, ap.required)))
    if plan.get("sample_keys"):
        blocks.append(context("Sample keys: " + ", ".join(code(k) for k in plan["sample_keys"][:5])))
    reminder = (plan.get("details") or {}).get("reminder")
    if reminder:
        blocks.append(context(esc(reminder)))
    if open_:
        if ap.approvers:
            left = ap.required - len(ap.approvers)
            blocks.append(
                mrkdwn(
                    f":ballot_box_with_check: Approved so far by {who(', '.join(ap.approvers))};"
                    f" needs {left} more approver{'s' if left != 1 else ''} (a different person)."
                )
            )
        blocks.append(approval_buttons(inc.id, ap, summary))
        blocks.append(context(f"Expires {when(ap.expires_at)} · plan {code(ap.plan_hash[:12])}"))
    else:
        blocks.append(mrkdwn(_outcome(ap)))
        blocks.append(context(f"plan {code(ap.plan_hash[:12])}"))
    return text, blocks


def approval_buttons(inc_id: int, ap: Approval, summary: str) -> Block:
    value = button_value(inc_id, ap)
    return {
        "type": "actions",
        "block_id": f"approval-{ap.id}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": value,
                "confirm": {
                    "title": {"type": "plain_text", "text": cut(f"Run {ap.step_id}?", 100)},
                    "text": {"type": "mrkdwn", "text": cut(esc(summary), 300)},
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Back"},
                },
            },
            {
                "type": "button",
                "action_id": DENY_ACTION,
                "text": {"type": "plain_text", "text": "Deny"},
                "style": "danger",
                "value": value,
            },
        ],
    }


def already_decided_text(state: str, decided_by: str | None, decided_at: str | None) -> str:
    """What the second clicker reads: who was first, and what that means for them."""
    at = when(decided_at) if decided_at else ""
    if state in ("approved", "executed"):
        return f":information_source: Already approved by {who(decided_by)} {at}; the bot runs it once. Follow the thread."
    if state == "denied":
        return f":information_source: Already denied by {who(decided_by)} {at}. Nothing was changed."
    if state == "expired":
        return f":hourglass: This approval expired {at}; nobody decided in time. Nothing was changed."
    if state == "cancelled":
        why = "the alert resolved" if decided_by == "alert resolved" else f"by {who(decided_by)}"
        return f":no_entry_sign: This approval was cancelled ({why}). Nothing was changed."
    if state == "superseded":
        return (
            ":arrows_counterclockwise: This button is for an older plan that was replaced."
            " Use the newest approval request in the thread."
        )
    if state == "interrupted":
        return ":zap: This approval was interrupted by a restart of the bot; the action was not re-run."
    return f":information_source: Already {esc(state)} by {who(decided_by)} {at}."


# -- notices ------------------------------------------------------------------------------------


def notice_message(text: str, level: str = "info") -> tuple[str, list[Block]]:
    """A channel message outside any incident: the first line bold, the rest as it came."""
    icon = ":warning:" if level == "warning" else ":information_source:"
    head, _, rest = text.strip().partition("\n")
    body = f"{icon} *{esc(head)}*" + (f"\n{esc(rest)}" if rest.strip() else "")
    return cut(text.strip(), TEXT_LIMIT), [mrkdwn(body)]


# -- command output -------------------------------------------------------------------------------


def result_blocks(title: str, summary: str, details: str = "", *, status: str = "ok") -> list[Block]:
    """One diagnostic's result for a slash command: title and summary, raw output below."""
    icon = {"ok": ":white_check_mark:", "warning": ":warning:", "failed": ":x:"}.get(status, ":x:")
    blocks = [mrkdwn(f"{icon} *{esc(title)}*\n{esc(summary)}")]
    if details.strip():
        blocks.append(details_block(details))
    return blocks
