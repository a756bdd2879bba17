"""Plans in words: what an action will do, where, and how much, for approval messages."""

from __future__ import annotations

from typing import Any

from bot.formatting import human_bytes


def describe_plan(plan: dict[str, Any]) -> str:
    """Multi-line text: summary first, then target, pattern, counts, protections and samples."""
    lines = [str(plan.get("summary", plan.get("action", "")))]
    lines.append(f"  target: {plan.get('target')} db {plan.get('db')}")
    if plan.get("pattern"):
        lines.append(f"  pattern: {plan['pattern']}")
    if plan.get("estimated_keys") is not None:
        lines.append(
            f"  keys: ~{plan['estimated_keys']:,}  memory: ~{human_bytes(plan.get('estimated_bytes'))}"
        )
    if plan.get("protected_excluded"):
        lines.append(f"  protected keys excluded: {plan['protected_excluded']:,}")
    if plan.get("sample_keys"):
        lines.append("  sample: " + ", ".join(plan["sample_keys"][:5]))
    if plan.get("approvers_required", 1) > 1:
        lines.append(f"  needs {plan['approvers_required']} different approvers")
    return "\n".join(lines)
