"""Step types: registered async functions with a typed parameter model and a declared ``mutating`` flag.

Importing this package registers every built-in step, so the playbook loader can validate against
the full registry.
"""

from bot.steps.registry import (
    REGISTRY,
    Change,
    EarlierStep,
    Plan,
    StepContext,
    StepOutput,
    StepParams,
    StepType,
    action,
    step,
)

# Built-in step modules register themselves on import.
from bot.steps import redis_actions as _redis_actions  # noqa: F401  isort: skip
from bot.steps import redis_admin as _redis_admin  # noqa: F401  isort: skip
from bot.steps import redis_snapshot as _redis_snapshot  # noqa: F401  isort: skip
from bot.steps import redis_flush as _redis_flush  # noqa: F401  isort: skip
from bot.steps import redis_expert as _redis_expert  # noqa: F401  isort: skip
from bot.steps import redis_ttl as _redis_ttl  # noqa: F401  isort: skip
from bot.steps import redis_info as _redis_info  # noqa: F401  isort: skip
from bot.steps import redis_memory as _redis_memory  # noqa: F401  isort: skip
from bot.steps import redis_traffic as _redis_traffic  # noqa: F401  isort: skip
from bot.steps import redis_verify as _redis_verify  # noqa: F401  isort: skip
from bot.steps import prometheus as _prometheus  # noqa: F401  isort: skip
from bot.steps import prometheus_overview as _prometheus_overview  # noqa: F401  isort: skip
from bot.steps import prometheus_chart as _prometheus_chart  # noqa: F401  isort: skip

__all__ = [
    "REGISTRY",
    "Change",
    "EarlierStep",
    "Plan",
    "StepContext",
    "StepOutput",
    "StepParams",
    "StepType",
    "action",
    "step",
]
