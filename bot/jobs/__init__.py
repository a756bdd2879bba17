"""The jobs the scheduler runs: the health probe, backup freshness and the digest.

Each job is a plain object or function that knows nothing of APScheduler; :mod:`bot.scheduler` wires
them to their schedules.
"""

from bot.jobs.backups import BackupWatch
from bot.jobs.digest import digest_text
from bot.jobs.probe import HealthProbe, ProbeState, probe_targets

__all__ = ["BackupWatch", "HealthProbe", "ProbeState", "digest_text", "probe_targets"]
