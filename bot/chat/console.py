"""The console notifier: the same shape as the Slack thread, as readable text, for setups without Slack.

It is the embedded default: ``make demo`` and a fresh install show everything here, with the exact
command to approve or deny a waiting step. Like the Slack thread it stays short: diagnostics are
one compact digest (problems first, skipped steps grouped), printed when the diagnosis is over;
approval requests, action results, verifications and escalations get lines of their own; the full
output of every step is one command away (``remediation-bot incidents ID``).
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.chat import incident_view as view
from bot.incidents import Approval, ApprovalState, Incident, StepRun, StepStatus
from bot.notifier import NoticeLevel
from bot.planview import describe_plan

if TYPE_CHECKING:
    from bot.web.links import PageLinks

ICONS = {
    StepStatus.OK: "ok  ",
    StepStatus.WARNING: "WARN",
    StepStatus.FAILED: "FAIL",
    StepStatus.ERROR: "ERR ",
    StepStatus.TIMEOUT: "TIME",
    StepStatus.SKIPPED: "skip",
    StepStatus.PLANNED: "plan",
    StepStatus.AWAITING_APPROVAL: "WAIT",
    StepStatus.APPROVED: "appr",
    StepStatus.DENIED: "deny",
    StepStatus.EXPIRED: "exp ",
    StepStatus.CANCELLED: "canc",
    StepStatus.INTERRUPTED: "INTR",
    StepStatus.ESCALATED: "ESC ",
    StepStatus.RUNNING: "... ",
}


class ConsoleNotifier:
    """Writes to a text stream (stdout by default). ``config_path`` goes into the printed commands;
    ``details`` adds the full output of the steps that need a look below the digest."""

    def __init__(
        self, stream: TextIO | None = None, config_path: Path | None = None, details: bool = False
    ) -> None:
        self.stream = stream or sys.stdout
        self.config_path = config_path
        self.details = details
        self._shown: dict[int, set[int]] = {}
        """Step runs already printed, per incident (in a digest or a line of their own)."""
        self.page_links: PageLinks | None = None
        """Signed links to the incident page, printed with the incident (set by the service)."""

    def _say(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        lines = text.rstrip("\n").split("\n")
        out = [f"[{stamp}] {lines[0]}", *(f"           {line}" for line in lines[1:])]
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()

    def _cmd(self, verb: str, incident_id: int) -> str:
        cfg = f" --config {shlex.quote(str(self.config_path))}" if self.config_path else ""
        return f"remediation-bot {verb} {incident_id}{cfg}"

    def _digest(self, inc: Incident) -> None:
        """The diagnostics not shown yet, as one compact block (problems first, skips grouped)."""
        shown = self._shown.setdefault(inc.id, set())
        fresh = [
            s
            for s in inc.steps
            if s.id not in shown
            and s.status != StepStatus.RUNNING
            and view.part_of(inc, s) == view.Part.DIGEST
        ]
        if not fresh:
            return
        first = not shown
        shown.update(s.id for s in fresh)
        part = inc.model_copy(update={"steps": fresh})
        head = (
            f"#{inc.id} diagnosis: {view.counts(part)}" if first else f"#{inc.id} also: {view.counts(part)}"
        )
        found = view.finding(inc) if first else ""
        lines = [head + (f"; finding: {found}" if found else "")]
        for line in view.digest(part):
            lines.append(f"  {ICONS.get(line.status, line.status)} {', '.join(line.steps)}: {line.text}")
        if self.details:
            for run in fresh:
                if run.status in view.PROBLEMS and run.details.strip():
                    lines.append(f"  {run.step_id}:")
                    lines.append(textwrap.indent(run.details.rstrip(), "    "))
        for run in fresh:
            if path := view.chart_path(run):
                lines.append(f"  chart ({run.step_id}): {path}")
        if first:
            lines.append(f"  full output: {self._cmd('incidents', inc.id)}")
        self._say("\n".join(lines))

    async def _page(self, incident_id: int) -> str:
        """``\n  page: LINK`` when the service gave links (the incident page, signed), else ''."""
        if self.page_links is None:
            return ""
        try:
            return f"\n  page: {await self.page_links.incident(incident_id)}"
        except Exception:  # a link is a nicety: the block is printed without it
            return ""

    async def incident_opened(self, incident: Incident) -> None:
        self._say(
            f"INCIDENT #{incident.id} {incident.alertname} ({incident.alert_status}) on {incident.target}"
            f" -> playbook {incident.playbook}\n{incident.summary}" + await self._page(incident.id)
        )

    async def incident_updated(self, incident: Incident) -> None:
        if incident.status in view.FINAL or incident.pending_step:
            self._digest(incident)
        note = f": {incident.note}" if incident.note else ""
        count = f" ({incident.alert_count:,} alerts)" if incident.alert_count > 1 else ""
        took = view.time_to_resolution(incident)
        outcome = "; ".join(view.figures(incident)) if incident.status in view.FINAL else ""
        tail = "".join(f"\n  {x}" for x in (outcome, took) if x)
        page = await self._page(incident.id) if incident.status in view.FINAL else ""
        self._say(f"#{incident.id} is now {incident.status}{count}{note}{tail}{page}")

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        self._say(f"#{incident.id} {step_id}: {message}")

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        """Actions, their verification and escalations are said at once; diagnostics wait for the digest."""
        if view.part_of(incident, run) == view.Part.DIGEST:
            return
        self._digest(incident)
        self._shown.setdefault(incident.id, set()).add(run.id)
        took = f" ({run.duration_s:.2f}s)" if run.duration_s is not None else ""
        self._say(
            f"#{incident.id} [{ICONS.get(run.status, run.status)}] {run.step_id} ({run.step_type}){took}: {run.summary}"
        )

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
        self._digest(incident)
        have = len(approval.approvers)
        who = f" (approved so far by {', '.join(approval.approvers)})" if have else ""
        self._say(
            f"#{incident.id} APPROVAL NEEDED for {approval.step_id}: {approval.required - have} more approver(s){who}\n"
            + describe_plan(approval.plan)
            + f"\nexpires {approval.expires_at}; plan hash {approval.plan_hash[:12]}"
            + f"\n  approve: {self._cmd('approve', incident.id)}"
            + f"\n  deny:    {self._cmd('deny', incident.id)}"
        )

    async def approval_closed(self, incident: Incident, approval: Approval) -> None:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        verb = "APPROVED" if approval.state == ApprovalState.APPROVED else str(approval.state).upper()
        self._say(f"#{incident.id} {approval.step_id}: {verb}{by}")

    async def notice(self, text: str, level: NoticeLevel = "info") -> None:
        self._say(("WARNING: " if level == "warning" else "") + text)

    async def close(self) -> None:
        return None
