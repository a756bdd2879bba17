"""Redis glob patterns (as SCAN MATCH understands them) checked on the bot's side.

Protected namespaces must be skipped even when an action's pattern matches them, so the bot needs
Redis's own matching rules locally: ``*``, ``?``, ``[abc]``, ``[^a-z]`` and backslash escapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

WILDCARDS = frozenset("*?[]")


def glob_to_regex(pattern: str) -> str:
    """Translate a Redis glob into an equivalent regular expression source (full match)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            parts: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    parts.append(re.escape(pattern[j + 1]))
                    j += 2
                elif j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 3
                else:
                    parts.append(re.escape(pattern[j]))
                    j += 1
            if j >= n:  # no closing bracket: Redis then matches '[' literally
                out.append(re.escape(c))
            else:
                body = "".join(parts)
                out.append(f"[{'^' if negate else ''}{body}]" if body else ("(?!)" if not negate else "."))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def key_matcher(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """A predicate telling whether a key (bytes) matches any of the globs, byte for byte as Redis does.

    Patterns are UTF-8 text and keys arbitrary bytes, so both are viewed as latin-1 (one character
    per byte) before matching.
    """
    sources = [glob_to_regex(p.encode("utf-8").decode("latin-1")) for p in patterns]
    if not sources:
        return lambda _key: False
    rx = re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL)

    def match(key: bytes) -> bool:
        return rx.fullmatch(key.decode("latin-1")) is not None

    return match


def literal_part(pattern: str) -> str:
    """The characters of a glob that are not wildcards (escapes count as literal)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if c == "[":
            end = pattern.find("]", i + 1)
            if end != -1:
                i = end + 1
                continue
        if c not in WILDCARDS:
            out.append(c)
        i += 1
    return "".join(out)


def refuse_reason(pattern: str) -> str | None:
    """Why a deletion pattern is too broad to accept, or None when it names a namespace."""
    if not pattern or not pattern.strip():
        return "the pattern is empty"
    if pattern != pattern.strip():
        return "the pattern has leading or trailing spaces"
    if not literal_part(pattern).strip(":._-/ "):
        return f"the pattern {pattern!r} matches every key; name a namespace such as 'agent:*'"
    return None
