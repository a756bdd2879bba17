"""Block Kit for the incident card and its thread: card, diagnosis digest, action result, calls.

The card is the channel's root message, edited in place as the incident moves: state and whom it
waits for, the finding that matters most, the decision and who took it, the outcome with before and
after figures, the time to resolution, and links. The thread holds only what a person reads or acts
on: one digest of every step (problems first, a line each), the approval request (in
:mod:`bot.chat.slack_blocks`), each action's result with its verification, and the calls for a
human (reminder, escalation). Pure functions over :mod:`bot.chat.incident_view`; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.chat import incident_view as view
from bot.chat.slack_blocks import (
    HAND_SOURCES,
    STEP_ICONS,
    TEXT_LIMIT,
    Block,
    code,
    context,
    cut,
    esc,
    fields,
    mrkdwn,
    state_label,
    when,
    who,
)
from bot.incidents import Approval, ApprovalState, Incident, IncidentState, StepRun, StepStatus

SECTION_CHARS = 2800
"""A digest section's text is cut into sections below Slack's 3,000 characters."""


@dataclass(frozen=True)
class CardContext:
    """What the card shows besides the incident itself (the notifier looks these up)."""

    waiting_for: str = ""
    """Whom a pending approval waits for, as mrkdwn (quiet on a first post: no mention tokens)."""
    decision: Approval | None = None
    """The incident's latest approval once it closed: the decision and who took it."""
    runbook: str = ""
    incident_url: str | None = None
    acknowledged: tuple[str, ...] = ()
    """Who said they are on it (the Acknowledge button), as audited identities."""
    silences: tuple[view.SilenceMark, ...] = ()
    """Active silences the bot created for the incident's alert."""
    ack_button: bool = False
    silence_buttons: tuple[str, ...] = ()
    """Durations offered as Silence buttons (``1h``, ``4h``); empty: none (no Alertmanager, not firing)."""


ACK_ACTION = "acknowledge"
SILENCE_ACTION = "silence"
"""Action ids of the card's buttons; a silence button's value is ``{"incident": id, "for": "1h"}``."""


def card_buttons(inc: Incident, ctx: CardContext) -> Block | None:
    """Acknowledge and Silence buttons under the card, while they mean something."""
    elements: list[Block] = []
    if ctx.ack_button:
        elements.append(
            {"type": "button", "action_id": ACK_ACTION, "text": {"type": "plain_text", "text": "Acknowledge"},
             "value": json.dumps({"incident": inc.id})}
        )  # fmt: skip
    for duration in ctx.silence_buttons:
        elements.append(
            {"type": "button", "action_id": f"{SILENCE_ACTION}_{duration}",
             "text": {"type": "plain_text", "text": f"Silence {duration}"},
             "value": json.dumps({"incident": inc.id, "for": duration})}
        )  # fmt: skip
    return {"type": "actions", "block_id": f"incident-{inc.id}", "elements": elements} if elements else None


# -- the card -------------------------------------------------------------------------------------


def _decision_line(ap: Approval) -> str:
    step = code(ap.step_id)
    at = when(ap.decided_at)
    if ap.state in (ApprovalState.APPROVED, ApprovalState.EXECUTING, ApprovalState.EXECUTED):
        return f":white_check_mark: *Decision:* {step} approved by {who(', '.join(ap.approvers) or ap.decided_by)} {at}"
    if ap.state == ApprovalState.DENIED:
        return f":no_entry_sign: *Decision:* {step} denied by {who(ap.decided_by)} {at}; nothing was changed"
    if ap.state == ApprovalState.EXPIRED:
        return f":hourglass: *Decision:* nobody decided on {step} in time (expired {at}); nothing was changed"
    if ap.state == ApprovalState.CANCELLED:
        why = "the alert resolved" if ap.decided_by == "alert resolved" else f"by {who(ap.decided_by)}"
        return f":no_entry_sign: *Decision:* {step} cancelled ({why}); nothing was changed"
    if ap.state == ApprovalState.SUPERSEDED:
        return f":arrows_counterclockwise: *Decision:* the plan for {step} changed; a new request is in the thread"
    if ap.state == ApprovalState.INTERRUPTED:
        return f":zap: *Decision:* {step} was interrupted by a restart and not re-run"
    return ""


def _outcome_line(inc: Incident) -> str:
    action = view.last_action(inc)
    took = view.time_to_resolution(inc)
    if action is None:
        if inc.status in view.FINAL and took:
            return f":stopwatch: {esc(took)}"
        return ""
    parts = [esc(view.one_line(action.summary or str(action.status), 160))]
    check = view.verdict(inc, action)
    parts += [esc(f) for f in view.figures(inc, action)]
    if check is not None:
        parts.append("helped" if check.status == StepStatus.OK else "*did not help*")
    if took:
        parts.append(esc(took))
    icon = STEP_ICONS.get(action.status, ":grey_question:")
    return f"{icon} *Outcome:* " + " · ".join(parts)


def state_text(inc: Incident, waiting_for: str = "") -> tuple[str, str]:
    """(icon, label) of the card's state, naming whom a pending approval waits for."""
    icon, label = state_label(inc.status)
    if inc.status == IncidentState.AWAITING_APPROVAL and waiting_for:
        label = f"{label} from {waiting_for}"
    if inc.status == IncidentState.RESOLVED and view.last_action(inc) is not None:
        label = "resolved (the bot acted)"
    return icon, label


def incident_message(inc: Incident, ctx: CardContext | None = None) -> tuple[str, list[Block]]:
    """The incident's card (the root message): where the bot is, and what matters, at a glance."""
    ctx = ctx or CardContext()
    icon, label = state_text(inc, ctx.waiting_for)
    plain_label = state_label(inc.status)[1]
    target = inc.target or "no target"
    text = cut(f"#{inc.id} {inc.alertname} on {target}: {plain_label}", TEXT_LIMIT)
    head = f"{icon} *{esc(inc.alertname)}* on {code(target)}: *{label}*"
    if inc.summary and inc.summary != inc.alertname:
        head += f"\n{esc(inc.summary)}"
    blocks: list[Block] = [mrkdwn(head)]
    found = view.finding(inc)
    if found:
        blocks.append(mrkdwn(f":mag_right: *Finding:* {esc(found)}"))
    if inc.pending_step:
        p = inc.pending_step
        have, need = len(p.get("approved_by") or []), int(p.get("required_approvals") or 1)
        blocks.append(
            mrkdwn(
                f":point_down: *Waiting for approval* of {code(p['id'])} ({have} of {need}) in the thread;"
                f" it expires {when(p.get('expires_at'))}"
            )
        )
    elif ctx.decision is not None and (line := _decision_line(ctx.decision)):
        blocks.append(mrkdwn(line))
    outcome = _outcome_line(inc)
    if outcome:
        blocks.append(mrkdwn(outcome))
    if inc.note and not (outcome and inc.status in (IncidentState.VERIFIED, IncidentState.RESOLVED)):
        blocks.append(context(f"_{esc(view.one_line(inc.note, 600))}_"))
    if ctx.acknowledged:
        blocks.append(mrkdwn(f":eyes: *Acknowledged* by {', '.join(who(a) for a in ctx.acknowledged)}"))
    for sil in ctx.silences:
        blocks.append(
            mrkdwn(
                f":no_bell: *Silenced* by {who(sil.by)} until {when(sil.ends_at)} (silence {code(sil.id)})"
            )
        )
    alert = "firing" if inc.alert_status == "firing" else "resolved"
    blocks.append(
        fields(
            [
                ("Target", code(target)),
                ("Playbook", code(inc.playbook or "none")),
                (
                    "Alert",
                    "started by hand"
                    if inc.source in HAND_SOURCES
                    else esc(alert)
                    + (f" ({inc.alert_count:,} alerts joined)" if inc.alert_count > 1 else ""),
                ),
                ("Incident", f"#{inc.id}" + (" (dry run)" if inc.dry_run else "")),
            ]
        )
    )
    found_links = view.links(inc, runbook=ctx.runbook, incident_url=ctx.incident_url)
    link_text = " · ".join(f"<{esc(link.url)}|{esc(link.label)}>" for link in found_links)
    runbook_text = (
        "" if any(link.label == "Runbook" for link in found_links) or not ctx.runbook else ctx.runbook
    )
    extra = [f"started {when(inc.created_at)}", f"source {esc(inc.source)}"]
    if inc.labels.get("requested_by"):
        extra.append(f"asked by {who(inc.labels['requested_by'])}")
    if inc.labels.get("severity"):
        extra.append(f"severity {esc(inc.labels['severity'])}")
    blocks.append(
        context(
            *[
                p
                for p in (
                    link_text,
                    f":book: Runbook: {esc(runbook_text)}" if runbook_text else "",
                    " · ".join(extra),
                )
                if p
            ]
        )
    )
    buttons = card_buttons(inc, ctx)
    if buttons is not None:
        blocks.append(buttons)
    return text, blocks


# -- the thread -----------------------------------------------------------------------------------


def _line(line: view.DigestLine) -> str:
    icon = STEP_ICONS.get(line.status, ":grey_question:")
    names = ", ".join(f"*{esc(s)}*" for s in line.steps)
    return f"{icon} {names} {esc(line.text)}"


def _sections(lines: list[str]) -> list[Block]:
    out: list[Block] = []
    buf = ""
    for line in lines:
        if buf and len(buf) + len(line) + 1 > SECTION_CHARS:
            out.append(mrkdwn(buf))
            buf = ""
        buf = f"{buf}\n{line}" if buf else line
    if buf:
        out.append(mrkdwn(buf))
    return out[:45]


def digest_message(
    inc: Incident, progress: dict[str, str] | None = None, *, details_file: bool = False
) -> tuple[str, list[Block]]:
    """The diagnosis digest: every step in one line, problems first; the full output elsewhere."""
    lines = view.digest(inc, progress)
    problems = sum(1 for line in lines if line.problem)
    head = f":clipboard: *Diagnosis* of incident #{inc.id} · {esc(view.counts(inc))}"
    text = cut(
        f"#{inc.id} diagnosis: {view.counts(inc).split(' · ')[0]}"
        + (f", {problems} need a look" if problems else "")
        + (f"; {view.finding(inc)}" if view.finding(inc) else ""),
        TEXT_LIMIT,
    )
    where = (
        "Full output: the file in this thread, or " if details_file else "Full output: "
    ) + f"`remediation-bot incidents {inc.id} --config …`"
    blocks = [mrkdwn(head), *_sections([_line(line) for line in lines]), context(where)]
    return text, blocks


def outcome_message(
    inc: Incident, action: StepRun, checks: list[StepRun], progress: str | None = None
) -> tuple[str, list[Block]]:
    """An action's result (or its progress while it runs), with the verification that followed."""
    if progress is not None:
        body = f":hourglass_flowing_sand: *{esc(action.step_id)}* running: {esc(progress)}"
        return cut(f"#{inc.id} {action.step_id}: {progress}", TEXT_LIMIT), [mrkdwn(body)]
    icon = STEP_ICONS.get(action.status, ":grey_question:")
    took = f" · {action.duration_s:.1f} s" if action.duration_s is not None else ""
    summary = action.summary or action.error or str(action.status)
    text = cut(f"#{inc.id} {action.step_id} {action.status}: {summary}", TEXT_LIMIT)
    body = f"{icon} *{esc(action.step_id)}* {esc(action.status)}{took}\n{esc(view.one_line(summary, 600))}"
    if action.error and action.error not in summary:
        body += f"\n:warning: {esc(view.one_line(action.error, 600))}"
    blocks = [mrkdwn(body)]
    if checks:
        blocks.append(
            mrkdwn(
                "*Verification*\n"
                + "\n".join(
                    f"{STEP_ICONS.get(c.status, ':grey_question:')} *{esc(c.step_id)}* {esc(view.one_line(c.summary or c.error or str(c.status)))}"
                    for c in checks
                )
            )
        )
    parts = [code(action.step_type), *(esc(f) for f in view.figures(inc, action))]
    parts.append(f"full output: `remediation-bot incidents {inc.id} --config …`")
    blocks.append(context(" · ".join(parts)))
    return text, blocks


def reminder_message(inc: Incident, ap: Approval, mention: str, link: str = "") -> tuple[str, list[Block]]:
    """Half the approval's lifetime passed and it still waits: call the approvers once more."""
    left = ap.required - len(ap.approvers)
    where = f"<{link}|the request above>" if link else "the request above"
    body = (
        f":alarm_clock: {mention + ' ' if mention else ''}*Still waiting for a decision* on {code(ap.step_id)}"
        f" (incident #{inc.id}, {left} more approver{'s' if left != 1 else ''} needed): see {where}."
        f" It expires {when(ap.expires_at)}; after that nothing runs."
    )
    return cut(f"#{inc.id} still waiting for approval of {ap.step_id}", TEXT_LIMIT), [mrkdwn(body)]


def escalation_message(inc: Incident, mention: str, why: str) -> tuple[str, list[Block]]:
    """The bot stopped and a person must take over: say why, and call the approvers again."""
    body = (
        f":rotating_light: {mention + ' ' if mention else ''}*Escalated: needs a human.* {esc(why)}\n"
        "The bot will not act on this incident by itself any more."
        f" Full output: `remediation-bot incidents {inc.id} --config …`"
    )
    return cut(f"#{inc.id} escalated: {why}", TEXT_LIMIT), [mrkdwn(body)]
