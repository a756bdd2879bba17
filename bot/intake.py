"""From alerts to incidents: match each alert to a playbook and a target, persist, hand to the runner.

The webhook calls :meth:`Intake.receive` and answers Alertmanager once it returns: by then the alerts
are on disk. Redis work happens afterwards, in the runner's workers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

from bot.alerts import Alert, Notification
from bot.config import Config
from bot.errors import TargetError, TargetRefused
from bot.incidents import Incident
from bot.playbook import PlaybookSet
from bot.runner import Runner
from bot.store import IngestItem, IngestResult, Store
from bot.targets import REFUSED_NOTE

log = logging.getLogger(__name__)

PROBE_SOURCE = "probe"
"""``source`` of incidents the bot's own health probe opens (see :mod:`bot.scheduler`)."""


async def firing_incident(
    store: Store, target: str, alertname: str, *, source: str | None = None
) -> Incident | None:
    """The newest incident for ``alertname`` on ``target`` whose alert still fires (an indexed
    look-up in the store; merged or unmatched ones excluded)."""
    return await store.firing_incident(target, alertname, source=source)


def match_alert(
    alert: Alert, config: Config, playbooks: PlaybookSet, source: str = "alertmanager"
) -> IngestItem:
    """Decide playbook and target for an alert; a miss is recorded with the reason, not dropped.

    Labels pointing a templated target outside its ``allowed_addresses`` store the alert with no
    target and the note ``refused: <why>`` (:data:`bot.targets.REFUSED_NOTE`): nothing runs for it."""
    pb = playbooks.match(alert.labels)
    note = ""
    target = None
    refused = False
    index = next((i for i, t in enumerate(config.targets) if t.matches(alert.labels)), None)
    if index is not None:
        try:
            target = config.targets[index].target_name(alert.labels)
        except TargetRefused as exc:
            note, index, refused = f"{REFUSED_NOTE}{exc}", None, True
        except TargetError as exc:
            note = str(exc)
            index = None
    else:
        note = "no target in the config matches the alert's labels"
    if pb is None:
        note = f"no playbook handles alertname={alert.alertname!r}" + (f"; {note}" if note else "")
    links = {"generator": alert.generator_url} if alert.generator_url else {}
    return IngestItem(alert, pb.name if pb else None, target, index, note, source, refused, links)


class Intake:
    """Persists alerts and dispatches the resulting work."""

    def __init__(self, config: Config, playbooks: PlaybookSet, store: Store, runner: Runner) -> None:
        self.config = config
        self.playbooks = playbooks
        self.store = store
        self.runner = runner

    async def receive(self, notification: Notification) -> IngestResult:
        items = [match_alert(a, self.config, self.playbooks) for a in notification.alerts]
        if notification.external_url:  # Alertmanager's own URL: the card links to the alert there
            for it in items:
                it.links["alertmanager"] = notification.external_url
        return await self.receive_items(items)

    async def receive_items(self, items: Sequence[IngestItem]) -> IngestResult:
        """Persist matched alerts (Alertmanager's, or the health probe's) and dispatch the work."""
        probe_alert = self.config.scheduler.health_probe.alertname
        items = [
            await self._merge_with_probe(it) if it.alert.labels.get("alertname") == probe_alert else it
            for it in items
        ]
        result = await self.store.ingest(items)
        for (status, source), n in Counter((it.alert.status, it.source) for it in items).items():
            self.runner.metrics.alert_received(status, source, n)
        for inc_id in result.new:
            if not self.runner.submit(inc_id, result.targets.get(inc_id, "")):
                self.runner.spawn(self._overflow(inc_id))
        for inc_id in result.resolved:
            self.runner.spawn(self.runner.on_resolved(inc_id, result.cancelled))
        for parent, n in result.merged.items():
            self.runner.spawn(self._joined(parent, n))
        for inc_id in result.refused:
            self.runner.spawn(self._refused(inc_id))
        if result.new or result.resolved or result.merged:
            log.info(
                "alerts: %d new incident(s), %d joined open ones, %d resolved, %d repeat(s)",
                len(result.new),
                sum(result.merged.values()),
                len(result.resolved),
                result.duplicates,
            )
        return result

    async def _joined(self, parent: int, n: int) -> None:
        """Alerts that joined an open incident: its thread shows the new count, once per batch."""
        inc = await self.store.get_incident(parent)
        await self.runner.notifier.incident_updated(inc)

    async def _refused(self, inc_id: int) -> None:
        """A label pointed a templated target outside its allowed addresses: nothing connected; a
        human hears of it, because this is either a misconfiguration or an attack."""
        inc = await self.store.get_incident(inc_id, steps=False)
        self.runner.metrics.call_error("refused_target")
        await self.runner.notifier.notice(f"alert {inc.alertname} (incident #{inc.id}) {inc.note}", "warning")

    async def _overflow(self, inc_id: int) -> None:
        inc = await self.store.get_incident(inc_id, steps=False)
        await self.store.fail(
            inc_id, f"not run: too many incidents already queued for {inc.target}", target=inc.target
        )
        await self.runner.notifier.incident_updated(await self.store.get_incident(inc_id))

    async def _merge_with_probe(self, item: IngestItem) -> IngestItem:
        """An Alertmanager alert the health probe already reported joins the probe's incident.

        While the probe's RedisDown incident for a target is firing, a RedisDown from Alertmanager for
        the same target is stored without a playbook (state ``unmatched``, a note naming the probe's
        incident), so nothing runs twice and the alert's own lifecycle is still on record. The probe
        resolves its incident when PING answers again. The other way round (Alertmanager first), the
        probe attaches to the Alertmanager incident instead of opening one.
        """
        alert = item.alert
        if (
            item.source == PROBE_SOURCE
            or alert.status != "firing"
            or item.playbook is None
            or item.target is None
            or alert.alertname != self.config.scheduler.health_probe.alertname
        ):
            return item
        probe = await firing_incident(self.store, item.target, alert.alertname, source=PROBE_SOURCE)
        if probe is None:
            return item
        log.info(
            "%s for %s merged into incident %s, opened by the health probe",
            alert.alertname,
            item.target,
            probe.id,
            extra={"incident": probe.id, "target": item.target},
        )
        note = f"merged into incident #{probe.id}, which the bot's health probe opened for {item.target}"
        return dataclasses.replace(item, playbook=None, note=note)
