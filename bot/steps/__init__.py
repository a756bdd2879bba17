"""Step types: registered async functions with a typed parameter model and a declared ``mutating`` flag.

Importing this package registers every built-in step, so the playbook loader can validate against
the full registry.
"""

from bot.steps.registry import (
    REGISTRY,
    Change,
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
from bot.steps import redis_diag as _redis_diag  # noqa: F401  isort: skip
from bot.steps import redis_verify as _redis_verify  # noqa: F401  isort: skip
from bot.steps import prometheus as _prometheus  # noqa: F401  isort: skip

__all__ = [
    "REGISTRY",
    "Change",
    "Plan",
    "StepContext",
    "StepOutput",
    "StepParams",
    "StepType",
    "action",
    "step",
]
