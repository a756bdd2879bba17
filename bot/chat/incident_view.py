"""What a person should read about an incident, whatever the chat: pure functions, no markup.

Both chats (Slack, the console) show an incident the same way: one card with the state, the one
finding that matters most, the decision and the outcome; one digest listing every step in a line,
problems first; and a message of its own only for what a human must read or act on (an approval
request, an action's result with its verification, an escalation). This module decides which is
which and computes the figures; :mod:`bot.chat.slack_card` and :mod:`bot.chat.console` render them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.formatting import format_duration, human_bytes
from bot.incidents import AuditEntry, Incident, IncidentState, StepRun, StepStatus, epoch

PROBLEMS = frozenset(
    {
        StepStatus.WARNING,
        StepStatus.FAILED,
        StepStatus.ERROR,
        StepStatus.TIMEOUT,
        StepStatus.ESCALATED,
        StepStatus.INTERRUPTED,
    }
)
"""Step outcomes a reader must see first."""

RAN = frozenset({StepStatus.OK, StepStatus.FAILED, StepStatus.ERROR, StepStatus.TIMEOUT})
"""A mutating step with one of these statuses was executed (it changed, or tried to change, data)."""

FINAL = frozenset(
    {
        IncidentState.VERIFIED,
        IncidentState.FAILED,
        IncidentState.ESCALATED,
        IncidentState.RESOLVED,
        IncidentState.DIAGNOSED,
        IncidentState.UNMATCHED,
        IncidentState.MERGED,
    }
)
"""States in which the bot does nothing more on its own."""

SUMMARY_LIMIT = 220
"""Characters of one step's summary in a digest line: a line on a phone, not a paragraph."""


class Part(StrEnum):
    """Where a finished step is shown."""

    DIGEST = "digest"
    """Only as a line of the digest (diagnostics, skipped steps, decisions shown elsewhere)."""
    ACTION = "action"
    """A message of its own: what an approved (or dry-run) action did."""
    CHECK = "check"
    """Added to the message of the action it follows (the verification)."""
    ESCALATION = "escalation"
    """The incident needs a human: a message that calls the approvers."""


def part_of(inc: Incident, run: StepRun) -> Part:
    """Where ``run`` belongs. ``inc`` may be the snapshot from before ``run`` finished."""
    if run.mutating:
        if run.status == StepStatus.ESCALATED:
            return Part.ESCALATION
        if run.status in RAN or run.status == StepStatus.PLANNED:
            return Part.ACTION
        return Part.DIGEST
    if run.status != StepStatus.SKIPPED and not is_chart(run) and action_before(inc, run) is not None:
        return Part.CHECK
    return Part.DIGEST


def is_chart(run: StepRun) -> bool:
    """A chart is a picture of the incident, never a verification, even when it follows an action."""
    return run.step_type == "prometheus.chart"


def chart_path(run: StepRun) -> str | None:
    """The PNG a chart step drew, or None (no data, skipped, or not a chart)."""
    path = run.data.get("chart_path") if is_chart(run) else None
    return path if isinstance(path, str) and path else None


def action_before(inc: Incident, run: StepRun) -> StepRun | None:
    """The executed action a read-only step follows (its verification), or None."""
    done = [
        s
        for s in inc.steps
        if s.mutating and s.status in RAN and s.step_index < run.step_index and s.id != run.id
    ]
    return max(done, key=lambda s: (s.step_index, s.id)) if done else None


def checks_after(inc: Incident, action: StepRun) -> list[StepRun]:
    """The read-only steps that ran after ``action`` and before the next action: its verification."""
    later = [s for s in inc.steps if s.mutating and s.status in RAN and s.step_index > action.step_index]
    stop = min((s.step_index for s in later), default=1 << 30)
    return [
        s
        for s in inc.steps
        if not s.mutating
        and s.status != StepStatus.SKIPPED
        and not is_chart(s)
        and action.step_index < s.step_index < stop
    ]


def one_line(text: str, limit: int = SUMMARY_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- the digest -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestLine:
    """One line of the digest: a step (or several skipped for the same reason) and its summary."""

    status: StepStatus
    steps: tuple[str, ...]
    text: str

    @property
    def problem(self) -> bool:
        return self.status in PROBLEMS


def digest(inc: Incident, progress: Mapping[str, str] | None = None) -> list[DigestLine]:
    """Every step in a line: problems first, then the rest in playbook order, skipped ones last and
    grouped by reason (six "skipped: the problem is fixed" are one line). ``progress`` adds steps
    still running (step id -> latest progress message)."""
    problems: list[DigestLine] = []
    rest: list[DigestLine] = []
    skipped: dict[str, list[str]] = {}
    for run in inc.steps:
        if run.status == StepStatus.SKIPPED:
            skipped.setdefault(one_line(run.summary or "skipped"), []).append(run.step_id)
            continue
        if run.status == StepStatus.RUNNING and run.step_id in (progress or {}):
            continue
        text = one_line(run.summary or run.error or str(run.status))
        if run.error and run.error not in text:
            text = one_line(f"{text} ({run.error})")
        line = DigestLine(run.status, (run.step_id,), text)
        (problems if line.problem else rest).append(line)
    running = [
        DigestLine(StepStatus.RUNNING, (step_id,), one_line(message))
        for step_id, message in (progress or {}).items()
    ]
    grouped = [DigestLine(StepStatus.SKIPPED, tuple(ids), why) for why, ids in skipped.items()]
    return [*problems, *rest, *running, *grouped]


def counts(inc: Incident) -> str:
    """``11 steps · 1 warning · 6 skipped`` (an approved action's request and run are one step)."""
    n = len({s.step_id for s in inc.steps})
    parts = [f"{n} step{'s' if n != 1 else ''}"]
    for label, statuses in (
        ("warning", {StepStatus.WARNING}),
        ("failed", {StepStatus.FAILED, StepStatus.ERROR, StepStatus.TIMEOUT}),
        ("skipped", {StepStatus.SKIPPED}),
    ):
        k = sum(1 for s in inc.steps if s.status in statuses)
        if k:
            parts.append(f"{k} {label}{'s' if label == 'warning' and k > 1 else ''}")
    return " · ".join(parts)


def details_text(inc: Incident) -> str:
    """Every step's full output, for the details file (and ``incidents ID``): nothing cut."""
    out = [f"Incident #{inc.id}: {inc.alertname} on {inc.target or '-'} ({inc.playbook or 'no playbook'})"]
    for run in inc.steps:
        took = f", {run.duration_s:.2f}s" if run.duration_s is not None else ""
        out.append(f"\n== {run.step_id} ({run.step_type}{took}): {run.status}\n{run.summary}")
        if run.error and run.error != run.summary:
            out.append(f"error: {run.error}")
        if run.details.strip():
            out.append(run.details.rstrip())
    return "\n".join(out) + "\n"


def has_details(inc: Incident) -> bool:
    return any(run.details.strip() for run in inc.steps)


# -- the card: finding, figures, time ---------------------------------------------------------------


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def finding(inc: Incident) -> str:
    """The one line that matters most: a step's own ``finding``, else who holds the memory (and
    whether those keys expire), else the first problem a diagnostic found."""
    diagnosis = [s for s in inc.steps if not s.mutating and s.status != StepStatus.SKIPPED]
    for run in diagnosis:
        if isinstance(run.data.get("finding"), str) and run.data["finding"]:
            return one_line(run.data["finding"])
    holder = _memory_holder(diagnosis)
    if holder:
        return holder
    for run in diagnosis:
        if run.status in PROBLEMS and part_of(inc, run) == Part.DIGEST:
            return one_line(f"{run.step_id}: {run.summary or run.error or run.status}")
    return ""


def _memory_holder(runs: list[StepRun]) -> str:
    report = next((r for r in runs if r.step_type == "redis.memory_report" and r.data.get("prefixes")), None)
    if report is None:
        return ""
    top = report.data["prefixes"][0]
    name, share = top.get("pattern") or top.get("prefix"), top.get("share")
    if not name or not isinstance(share, int | float) or share < 0.2:
        return ""
    keys = int(top.get("keys") or 0)
    text = f"{name} holds {share:.0%} of the keys' memory ({keys:,} key{'s' if keys != 1 else ''}, {human_bytes(top.get('bytes'))})"
    sampled = next((r for r in runs if r.step_type == "redis.keyspace" and r.data.get("prefixes")), None)
    if sampled is not None:
        same = [p for p in sampled.data["prefixes"] if (p.get("pattern") or p.get("prefix")) == name]
        ttl = same[0].get("ttl_share") if same else None
        if isinstance(ttl, int | float):
            text += (
                "; no TTLs" if ttl == 0 else "; all with TTLs" if ttl >= 0.995 else f"; {ttl:.0%} with TTLs"
            )
    return text


def _ratio(run: StepRun, kind: str) -> float | None:
    """Memory (used/maxmemory) or hit ratio a step measured, wherever the step keeps it."""
    if kind == "memory":
        value = run.data.get("ratio") if run.data.get("verification") else None
        value = value if value is not None else _get(run.data, "figures", "memory", "ratio")
    else:
        value = run.data.get("hit_ratio")
        value = value if value is not None else _get(run.data, "figures", "stats", "hit_ratio")
    return float(value) if isinstance(value, int | float) else None


def figures(inc: Incident, action: StepRun | None = None) -> list[str]:
    """Before/after figures around the last executed action (or ``action``): ``memory 85% → 12%``."""
    action = action or last_action(inc)
    if action is None:
        return []
    before = [s for s in inc.steps if not s.mutating and s.step_index < action.step_index]
    after = checks_after(inc, action)
    out = []
    for kind, label in (("memory", "memory {} → {} of maxmemory"), ("hit", "hit ratio {} → {}")):
        b = next((v for s in before if (v := _ratio(s, kind)) is not None), None)
        a = next((v for s in reversed(after) if (v := _ratio(s, kind)) is not None), None)
        if b is not None and a is not None:
            out.append(label.format(f"{b:.0%}", f"{a:.0%}"))
    return out


def last_action(inc: Incident) -> StepRun | None:
    ran = [s for s in inc.steps if s.mutating and (s.status in RAN or s.status == StepStatus.PLANNED)]
    return ran[-1] if ran else None


def verdict(inc: Incident, action: StepRun) -> StepRun | None:
    """The last verification of ``action``: did it help?"""
    checks = checks_after(inc, action)
    return checks[-1] if checks else None


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def time_to_resolution(inc: Incident) -> str:
    """``fixed in 1m12s`` (to the verification that passed), ``resolved after 4m05s``, or ''."""
    start = _ts(inc.created_at)
    if start is None or inc.status not in FINAL:
        return ""
    if inc.status == IncidentState.VERIFIED or (inc.status == IncidentState.RESOLVED and last_action(inc)):
        action = last_action(inc)
        check = verdict(inc, action) if action is not None else None
        if check is not None and check.status == StepStatus.OK:
            end = _ts(check.finished_at)
            if end is not None:
                return f"fixed in {format_duration(max(0.0, end - start))}"
    end = _ts(inc.updated_at)
    if end is None:
        return ""
    verb = {IncidentState.RESOLVED: "resolved after", IncidentState.VERIFIED: "fixed in"}.get(
        inc.status, "closed after"
    )
    return f"{verb} {format_duration(max(0.0, end - start))}"


@dataclass(frozen=True)
class Link:
    label: str
    url: str


def links(inc: Incident, *, runbook: str = "", incident_url: str | None = None) -> list[Link]:
    """Where to look next: the incident page (when configured), the runbook, the alert's graph, and
    Alertmanager (the alert, and a silence prefilled with its labels)."""
    from urllib.parse import quote

    out = []
    if incident_url:
        out.append(Link("Incident page", incident_url.replace("{id}", str(inc.id))))
    book = inc.annotations.get("runbook_url") or (
        runbook if runbook.startswith(("http://", "https://")) else ""
    )
    if book:
        out.append(Link("Runbook", book))
    if dash := inc.annotations.get("dashboard_url") or inc.annotations.get("grafana_url"):
        out.append(Link("Dashboard", dash))
    if gen := inc.links.get("generator"):
        out.append(Link("Prometheus graph", gen))
    if (am := inc.links.get("alertmanager")) and inc.source == "alertmanager":
        matchers = ",".join(
            f'{k}="{v}"' for k, v in sorted(inc.labels.items()) if k in ("alertname", "instance", "job")
        )
        flt = quote("{" + matchers + "}", safe="")
        out.append(Link("Alertmanager", f"{am.rstrip('/')}/#/alerts?filter={flt}"))
        out.append(Link("Silence", f"{am.rstrip('/')}/#/silences/new?filter={flt}"))
    return out


# -- acknowledgements and silences (from the audit trail, the source of truth) -------------------------


def acknowledged_by(audit: list[AuditEntry]) -> list[str]:
    """Who acknowledged the incident ("I am on it"), first first, each once."""
    return list(dict.fromkeys(e.actor or "?" for e in audit if e.kind == "incident.acknowledged"))


@dataclass(frozen=True)
class SilenceMark:
    """A silence the bot created for the incident's alert, and not expired through the bot."""

    id: str
    by: str
    ends_at: str


def active_silences(audit: list[AuditEntry], now: float) -> list[SilenceMark]:
    expired = {str(e.detail.get("silence_id")) for e in audit if e.kind == "silence.expired"}
    out = []
    for e in audit:
        if e.kind != "silence.created" or str(e.detail.get("silence_id")) in expired:
            continue
        ends = str(e.detail.get("ends_at") or "")
        if (epoch(ends) or 0.0) > now:
            out.append(SilenceMark(str(e.detail["silence_id"]), e.actor or "?", ends))
    return out
