"""The incident pages as HTML: pure functions from records to markup, no external assets.

One page per incident (what happened, in order: the alert, every step with its result, the plan,
who decided, the action and its verification, the chart, the audit records) and a list. The markup
is plain, semantic HTML with one small inline stylesheet: readable on a phone (one column, tables
scroll sideways), landmarks and headings for screen readers, states written out rather than only
coloured. Every text passes through :func:`clean`, which escapes it and hides passwords in URLs
(``redis://:***@host``), as the audit does.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.chat import incident_view as view
from bot.incidents import Approval, AuditEntry, Incident, epoch
from bot.planview import describe_plan

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_FIELD = re.compile(r"(?i)\b(password|passwd|secret|token)=([^&\s]+)")


def redact(text: str) -> str:
    """Passwords in URLs (``redis://user:pw@host`` -> ``redis://user:***@host``) and in
    ``password=`` style parameters, wherever they appear in a text."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_FIELD.sub(lambda m: f"{m[1]}=***", text)


def clean(value: object) -> str:
    """Escaped for HTML, with secrets redacted: the only way text reaches a page."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


STYLE = """
:root{color-scheme:light dark;--fg:#1b1b1b;--bg:#fff;--muted:#5f6368;--line:#d0d7de;--ok:#1a7f37;
--bad:#b42318;--warn:#9a6700;--card:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9da7b3;--line:#30363d;
--ok:#3fb950;--bad:#f85149;--warn:#d29922;--card:#161b22}}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}main,header,footer{max-width:60rem;margin:0 auto;padding:0 1rem}
header{padding-top:1rem}h1{font-size:1.4rem;margin:.3rem 0}h2{font-size:1.15rem;margin-top:1.8rem;
border-bottom:1px solid var(--line);padding-bottom:.2rem}a{color:inherit}
.muted{color:var(--muted)}.state{display:inline-block;padding:0 .45rem;border:1px solid currentColor;
border-radius:.4rem;font-size:.9rem;font-weight:600}.good{color:var(--ok)}.bad{color:var(--bad)}
.warn{color:var(--warn)}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.92rem}th,td{text-align:left;vertical-align:top;
padding:.35rem .5rem;border-bottom:1px solid var(--line)}caption{text-align:left;font-weight:600}
pre{background:var(--card);padding:.6rem;overflow-x:auto;font-size:.85rem;white-space:pre-wrap;
overflow-wrap:anywhere}ol.timeline{padding-left:1.2rem}ol.timeline li{margin:.3rem 0}
img{max-width:100%;height:auto;border:1px solid var(--line)}.card{background:var(--card);
padding:.6rem .8rem;border-radius:.5rem;margin:.6rem 0}ol.steps{list-style:none;padding:0}
ol.steps h3{font-size:1rem;margin:0}ol.steps p{margin:.2rem 0;overflow-wrap:anywhere}
.scroll table{min-width:40rem}figure{margin:.5rem 0}form{display:flex;flex-wrap:wrap;gap:.5rem;
align-items:end}label{display:flex;flex-direction:column;font-size:.9rem}
input,select,button{font:inherit;padding:.3rem}
"""

GOOD = {"verified", "resolved", "ok", "approved", "executed"}
BAD = {"failed", "error", "timeout", "escalated", "denied", "expired", "interrupted"}


def tone(state: str) -> str:
    return "good" if state in GOOD else "bad" if state in BAD else "warn" if state == "warning" else ""


def badge(state: object) -> str:
    text = str(state)
    return f'<span class="state {tone(text)}">{clean(text.replace("_", " "))}</span>'


def when(iso: str | None) -> str:
    at = epoch(iso)
    if at is None:
        return '<span class="muted">-</span>' if not iso else clean(iso)
    stamp = datetime.fromtimestamp(at, UTC)
    return f'<time datetime="{stamp.isoformat()}">{stamp:%Y-%m-%d %H:%M:%S} UTC</time>'


def document(title: str, body: str) -> str:
    """A whole page: no scripts, no external assets (the CSP in :mod:`bot.web.routes` forbids them)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex">'
        f"<title>{clean(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{clean(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def section(ident: str, title: str, body: str) -> str:
    return f'<section aria-labelledby="{ident}"><h2 id="{ident}">{clean(title)}</h2>{body}</section>'


@dataclass
class IncidentPage:
    """What the incident page shows, gathered by the route from the store."""

    incident: Incident
    approvals: Sequence[Approval] = ()
    audit: Sequence[AuditEntry] = ()
    charts: Mapping[int, str] = field(default_factory=dict)
    """Step run id -> the chart as a ``data:image/png;base64,...`` URI."""
    list_url: str | None = None


# -- the incident -------------------------------------------------------------------------------------


def _overview(inc: Incident, audit: Sequence[AuditEntry]) -> str:
    pairs = [
        ("State", badge(inc.status) + (f" <span class='muted'>{clean(inc.note)}</span>" if inc.note else "")),
        ("Alert", f"{clean(inc.alertname)} ({clean(inc.alert_status)})"),
        ("Target", clean(inc.target or "-")),
        ("Playbook", clean(inc.playbook or "-")),
        ("Started", when(inc.starts_at if inc.source == "alertmanager" else inc.created_at)),
        ("Updated", when(inc.updated_at)),
        (
            "Source",
            clean(inc.source) + (f" (asked by {clean(inc.requested_by)})" if inc.requested_by else ""),
        ),
    ]
    if inc.alert_count > 1:
        pairs.append(("Alerts", f"{inc.alert_count:,} alerts joined this incident"))
    acks = [e for e in audit if e.kind == "incident.acknowledged"]
    if acks:
        pairs.append(("Acknowledged", ", ".join(f"{clean(e.actor)} at {when(e.ts)}" for e in acks)))
    silences = [e for e in audit if e.kind in ("silence.created", "silence.expired")]
    for e in silences:
        verb = "silenced" if e.kind == "silence.created" else "silence expired"
        until = f" until {when(str(e.detail.get('ends_at')))}" if e.kind == "silence.created" else ""
        pairs.append(
            (
                "Silence",
                f"{verb} by {clean(e.actor)}{until} (id <code>{clean(e.detail.get('silence_id'))}</code>)",
            )
        )
    figures = view.figures(inc)
    if figures:
        pairs.append(("Outcome", clean("; ".join(figures))))
    took = view.time_to_resolution(inc)
    if took:
        pairs.append(("Time", clean(took)))
    labels = ", ".join(f"{k}={v}" for k, v in sorted(inc.labels.items()))
    pairs.append(("Labels", f"<code>{clean(labels)}</code>" if labels else "-"))
    return f'<section class="card" aria-label="Summary">{fields(pairs)}</section>'


def _steps(inc: Incident, charts: Mapping[int, str]) -> str:
    """One card per step (a table would squeeze the text to a column on a phone)."""
    if not inc.steps:
        return "<p>No step has run yet.</p>"
    items = []
    for run in inc.steps:
        took = f" · {run.duration_s:.2f} s" if run.duration_s is not None else ""
        text = run.summary or run.error or ""
        if run.error and run.error not in text:
            text += f" ({run.error})"
        kind = (
            "action"
            if run.mutating
            else "check"
            if view.part_of(inc, run) == view.Part.CHECK
            else "diagnostic"
        )
        extra = ""
        if run.id in charts:
            extra += (
                f'<figure><img src="{charts[run.id]}" alt="{clean("Chart: " + run.summary)}">'
                f'<figcaption class="muted">{clean(run.summary)}</figcaption></figure>'
            )
        if run.details.strip():
            extra += (
                f"<details><summary>Full output</summary><pre>{clean(run.details.rstrip())}</pre></details>"
            )
        items.append(
            f"<li class='card'><h3>{clean(run.step_id)} {badge(run.status)}</h3>"
            f"<p class='muted'>{clean(run.step_type)} · {kind}{clean(took)}</p><p>{clean(text)}</p>{extra}</li>"
        )
    return f"<ol class='steps'>{''.join(items)}</ol>"


def _approval(ap: Approval) -> str:
    decisions = "".join(
        f"<li>{'Approved' if d.approve else 'Denied'} by <strong>{clean(d.who)}</strong> at {when(d.at)}</li>"
        for d in ap.decisions
    )
    pairs = [
        ("Step", f"{clean(ap.step_id)} <span class='muted'>({clean(ap.step_type)})</span>"),
        (
            "Decision",
            badge(ap.state)
            + (
                f" by <strong>{clean(ap.decided_by)}</strong> at {when(ap.decided_at)}"
                if ap.decided_by
                else ""
            ),
        ),
        ("Approvers needed", str(ap.required)),
        ("Requested", when(ap.requested_at) + (f" by {clean(ap.requested_by)}" if ap.requested_by else "")),
        ("Expires", when(ap.expires_at)),
        ("Plan hash", f"<code>{clean(ap.plan_hash[:12])}</code>"),
    ]
    who = f"<ul>{decisions}</ul>" if decisions else "<p class='muted'>Nobody has decided yet.</p>"
    return (
        f"<section class='card' aria-label='Approval {ap.id}'>{fields(pairs)}"
        f"<h3>Plan</h3><pre>{clean(describe_plan(ap.plan))}</pre><h3>Who decided</h3>{who}</section>"
    )


def _action(inc: Incident) -> str:
    action = view.last_action(inc)
    if action is None:
        return "<p>No action ran.</p>"
    checks = view.checks_after(inc, action)
    items = "".join(
        f"<li>{badge(c.status)} <strong>{clean(c.step_id)}</strong>: {clean(c.summary or c.error)}</li>"
        for c in checks
    )
    verification = f"<ul>{items}</ul>" if items else "<p class='muted'>No verification step ran after it.</p>"
    return (
        f"<p>{badge(action.status)} <strong>{clean(action.step_id)}</strong> ({clean(action.step_type)}), "
        f"{when(action.started_at)}: {clean(action.summary or action.error)}</p><h3>Verification</h3>{verification}"
    )


def _event_text(e: AuditEntry) -> str:
    d = e.detail
    parts = [e.kind.replace(".", " ").replace("_", " ")]
    for key in (
        "step_id",
        "status",
        "state",
        "summary",
        "note",
        "reason",
        "approve",
        "silence_id",
        "comment",
    ):
        if d.get(key) not in (None, "", [], {}):
            parts.append(f"{key.replace('_', ' ')}: {d[key]}")
    return " · ".join(str(p) for p in parts)


def _timeline(audit: Sequence[AuditEntry]) -> str:
    if not audit:
        return "<p class='muted'>No records.</p>"
    items = "".join(
        f"<li>{when(e.ts)} <span class='muted'>{clean(e.actor or 'bot')}</span>: {clean(_event_text(e))}</li>"
        for e in audit
    )
    return f"<ol class='timeline'>{items}</ol>"


def _audit_table(audit: Sequence[AuditEntry]) -> str:
    rows = "".join(
        f"<tr><td>{when(e.ts)}</td><td><code>{clean(e.kind)}</code></td><td>{clean(e.actor or '-')}</td>"
        f"<td>{clean((e.plan_hash or '')[:12]) or '-'}</td>"
        f"<td><pre>{clean(json.dumps(e.detail, sort_keys=True, indent=1, default=str))}</pre></td></tr>"
        for e in audit
    )
    return (
        "<div class='scroll'><table><caption>Audit records of this incident</caption><thead><tr>"
        "<th scope='col'>Time</th><th scope='col'>Kind</th><th scope='col'>Who</th><th scope='col'>Plan</th>"
        f"<th scope='col'>Detail</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def incident_page(page: IncidentPage) -> str:
    inc = page.incident
    title = f"Incident #{inc.id}: {inc.alertname} on {inc.target or '-'}"
    back = (
        f'<nav aria-label="Incidents"><a href="{clean(page.list_url)}">All incidents</a></nav>'
        if page.list_url
        else ""
    )
    about = dict.fromkeys(t for t in (inc.summary, inc.annotations.get("description", "")) if t)
    header = f"<header>{back}<h1>{clean(title)}</h1>{''.join(f'<p>{clean(t)}</p>' for t in about)}</header>"
    approvals = "".join(_approval(a) for a in page.approvals) or "<p>No approval was requested.</p>"
    body = (
        _overview(inc, page.audit)
        + section("steps", "Steps and results", _steps(inc, page.charts))
        + section("plan", "Plan and decision", approvals)
        + section("action", "Action and verification", _action(inc))
        + section("timeline", "Timeline", _timeline(page.audit))
        + section("audit", "Audit records", _audit_table(page.audit))
    )
    footer = "<footer><p class='muted'>Read-only view of the remediation bot's store. Passwords are hidden.</p></footer>"
    return document(title, f"{header}<main>{body}</main>{footer}")


# -- the list -----------------------------------------------------------------------------------------


def incident_list(
    incidents: Sequence[tuple[Incident, str]],
    *,
    state: str = "",
    target: str = "",
    states: Sequence[str] = (),
    hidden: Mapping[str, str] | None = None,
) -> str:
    """Newest first; each row links its incident (``incidents`` pairs each with its signed URL).
    ``hidden`` keeps the list's own signature in the filter form."""
    options = "".join(
        f"<option value='{clean(s)}'{' selected' if s == state else ''}>{clean(s.replace('_', ' ') or 'any')}</option>"
        for s in ("", *states)
    )
    keep = "".join(
        f"<input type='hidden' name='{clean(k)}' value='{clean(v)}'>" for k, v in (hidden or {}).items()
    )
    form = (
        f"<form method='get' action='/incidents' aria-label='Filter incidents'>{keep}"
        f"<label>State<select name='state'>{options}</select></label>"
        f"<label>Target<input name='target' value='{clean(target)}' autocomplete='off'></label>"
        "<button type='submit'>Filter</button></form>"
    )
    rows = "".join(
        f"<tr><th scope='row'><a href='{clean(url)}'>#{inc.id}</a></th><td>{clean(inc.alertname)}</td>"
        f"<td>{clean(inc.target or '-')}</td><td>{badge(inc.status)}</td><td>{clean(inc.alert_status)}</td>"
        f"<td>{when(inc.created_at)}</td></tr>"
        for inc, url in incidents
    )
    table = (
        "<div class='scroll'><table><caption>Incidents, newest first</caption><thead><tr>"
        "<th scope='col'>Incident</th><th scope='col'>Alert</th><th scope='col'>Target</th>"
        "<th scope='col'>State</th><th scope='col'>Alert status</th><th scope='col'>Opened</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        if rows
        else "<p>No incident matches.</p>"
    )
    return document("Incidents", f"<header><h1>Incidents</h1></header><main>{form}{table}</main>")
