"""From alerts to incidents: match each alert to a playbook and a target, persist, hand to the runner.

The webhook calls :meth:`Intake.receive` and answers Alertmanager once it returns: by then the alerts
are on disk. Redis work happens afterwards, in the runner's workers.
"""

from __future__ import annotations

import logging

from bot.alerts import Alert, Notification
from bot.config import Config
from bot.errors import TargetError
from bot.playbook import PlaybookSet
from bot.runner import Runner
from bot.store import IngestItem, IngestResult, Store

log = logging.getLogger(__name__)


def match_alert(
    alert: Alert, config: Config, playbooks: PlaybookSet, source: str = "alertmanager"
) -> IngestItem:
    """Decide playbook and target for an alert; a miss is recorded with the reason, not dropped."""
    pb = playbooks.match(alert.labels)
    tcfg = config.target_for(alert.labels)
    note = ""
    target = None
    index = None
    if tcfg is not None:
        index = config.targets.index(tcfg)
        try:
            target = tcfg.resolve(alert.labels).name
        except TargetError as exc:
            note = str(exc)
            index = None
    else:
        note = "no target in the config matches the alert's labels"
    if pb is None:
        note = f"no playbook handles alertname={alert.alertname!r}" + (f"; {note}" if note else "")
    return IngestItem(alert, pb.name if pb else None, target, index, note, source)


class Intake:
    """Persists alerts and dispatches the resulting work."""

    def __init__(self, config: Config, playbooks: PlaybookSet, store: Store, runner: Runner) -> None:
        self.config = config
        self.playbooks = playbooks
        self.store = store
        self.runner = runner

    async def receive(self, notification: Notification) -> IngestResult:
        items = [match_alert(a, self.config, self.playbooks) for a in notification.alerts]
        result = await self.store.ingest(items)
        for inc_id in result.new:
            self.runner.submit(inc_id)
        for inc_id in result.resolved:
            self.runner.spawn(self.runner.on_resolved(inc_id))
        if result.new or result.resolved:
            log.info(
                "alerts: %d new incident(s), %d resolved, %d repeat(s)",
                len(result.new),
                len(result.resolved),
                result.duplicates,
            )
        return result
