"""redis-remediation-bot: turns the Redis runbook into safe, human-approved remediation."""

__version__ = "0.1.0"
