"""Plans in words: what an action will do, where, and how much, for approval messages."""

from __future__ import annotations

from typing import Any

from bot.formatting import human_bytes


def _config_value(name: str, value: str | None) -> str:
    if value is None:
        return "?"
    if name == "maxmemory" and value.isdigit():
        return "unlimited (0)" if value == "0" else f"{human_bytes(int(value))} ({value} bytes)"
    return value


def describe_change(change: dict[str, Any], db: object = None) -> str:
    """One line per change an action makes (see :class:`bot.steps.registry.Change`)."""
    op, name = change.get("op"), str(change.get("name") or "")
    if op == "config_set":
        before, after = change.get("before"), change.get("after")
        return f"CONFIG SET {name}: {_config_value(name, before)} -> {_config_value(name, after)}"
    if op == "unlink":
        return f"UNLINK every key matching {name} (protected keys skipped)"
    if op == "flushdb":
        return f"FLUSHDB ASYNC: delete every key of db {db}"
    if op == "bgsave":
        return "BGSAVE: write a fresh snapshot first"
    if op == "client_kill":
        on = f" on node {change['node']}" if change.get("node") else ""
        return f"CLIENT KILL ID {name}{on}: disconnect the client at {change.get('before')}"
    if op == "memory_purge":
        return "MEMORY PURGE: ask the allocator to return free pages to the OS"
    return f"{op} {name} {change.get('before')} -> {change.get('after')}"  # unknown: show it raw


def describe_changes(plan: dict[str, Any]) -> list[str]:
    """Every change of a plan, in the order ``execute`` makes them."""
    return [describe_change(c, plan.get("db")) for c in plan.get("changes") or []]


def describe_plan(plan: dict[str, Any]) -> str:
    """Multi-line text: summary first, then every change, target, pattern, counts, protections and
    samples."""
    lines = [str(plan.get("summary", plan.get("action", "")))]
    changes = describe_changes(plan)
    if changes:
        lines.append("  changes:")
        lines.extend(f"    - {c}" for c in changes)
    lines.append(f"  target: {plan.get('target')} db {plan.get('db')}")
    if plan.get("node"):
        lines.append(f"  on: {plan['node']} (the primary when planned; a failover means a new plan)")
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
