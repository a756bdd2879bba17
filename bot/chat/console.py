"""The console notifier: incidents and step results as readable text, for setups without Slack.

It is the embedded default: ``make demo`` and a fresh install show everything here, with the exact
command to approve or deny a waiting step.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bot.incidents import Approval, ApprovalState, Incident, StepRun, StepStatus
from bot.notifier import NoticeLevel
from bot.planview import describe_plan

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
    """Writes to a text stream (stdout by default). ``config_path`` goes into the printed commands."""

    def __init__(
        self, stream: TextIO | None = None, config_path: Path | None = None, details: bool = True
    ) -> None:
        self.stream = stream or sys.stdout
        self.config_path = config_path
        self.details = details

    def _say(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        lines = text.rstrip("\n").split("\n")
        out = [f"[{stamp}] {lines[0]}", *(f"           {line}" for line in lines[1:])]
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()

    def _cmd(self, verb: str, incident_id: int) -> str:
        cfg = f" --config {shlex.quote(str(self.config_path))}" if self.config_path else ""
        return f"remediation-bot {verb} {incident_id}{cfg}"

    async def incident_opened(self, incident: Incident) -> None:
        self._say(
            f"INCIDENT #{incident.id} {incident.alertname} ({incident.alert_status}) on {incident.target}"
            f" -> playbook {incident.playbook}\n{incident.summary}"
        )

    async def incident_updated(self, incident: Incident) -> None:
        note = f": {incident.note}" if incident.note else ""
        count = f" ({incident.alert_count:,} alerts)" if incident.alert_count > 1 else ""
        self._say(f"#{incident.id} is now {incident.status}{count}{note}")

    async def step_progress(self, incident: Incident, step_id: str, message: str) -> None:
        self._say(f"#{incident.id} {step_id}: {message}")

    async def step_finished(self, incident: Incident, run: StepRun) -> None:
        took = f" ({run.duration_s:.2f}s)" if run.duration_s is not None else ""
        text = f"#{incident.id} [{ICONS.get(run.status, run.status)}] {run.step_id} ({run.step_type}){took}: {run.summary}"
        if self.details and run.details:
            text += "\n" + textwrap.indent(run.details.rstrip(), "  ")
        self._say(text)

    async def approval_requested(self, incident: Incident, approval: Approval) -> None:
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
