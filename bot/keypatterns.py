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


def _signed(b: int) -> int:
    """Redis compares class ranges as C ``char``, which is signed on the platforms it runs on."""
    return b - 256 if b >= 128 else b


def redis_match(pattern: bytes, key: bytes) -> bool:
    """Redis's own glob matching (``stringmatchlen`` of Redis 7), byte for byte, quirks included:
    an unclosed ``[`` still opens a class, ``[a-]`` swallows the ``]``, ranges compare signed chars.

    Used where a pattern has a character class, since a regex translation cannot follow those
    quirks exactly; the bot must agree with ``SCAN MATCH`` about which keys are protected.
    """

    def at(i: int) -> int:
        return pattern[i] if i < len(pattern) else 0  # C strings end with NUL

    def match(p: int, s: int, skip: list[bool]) -> bool:
        plen, slen = len(pattern) - p, len(key) - s
        while plen > 0 and slen > 0:
            c = pattern[p]
            if c == 0x2A:  # '*'
                while plen > 0 and at(p + 1) == 0x2A:
                    p += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen > 0:
                    if match(p + 1, s, skip):
                        return True
                    if skip[0]:
                        return False
                    s += 1
                    slen -= 1
                skip[0] = True
                return False
            if c == 0x3F:  # '?'
                s += 1
                slen -= 1
            elif c == 0x5B:  # '['
                p += 1
                plen -= 1
                negate = at(p) == 0x5E
                if negate:
                    p += 1
                    plen -= 1
                hit = False
                while True:
                    if at(p) == 0x5C and plen >= 2:
                        p += 1
                        plen -= 1
                        if at(p) == key[s]:
                            hit = True
                    elif at(p) == 0x5D:
                        break
                    elif plen == 0:
                        p -= 1
                        plen += 1
                        break
                    elif plen >= 3 and at(p + 1) == 0x2D:
                        start, end, ch = _signed(at(p)), _signed(at(p + 2)), _signed(key[s])
                        if start > end:
                            start, end = end, start
                        p += 2
                        plen -= 2
                        if start <= ch <= end:
                            hit = True
                    elif at(p) == key[s]:
                        hit = True
                    p += 1
                    plen -= 1
                if negate:
                    hit = not hit
                if not hit:
                    return False
                s += 1
                slen -= 1
            else:
                if c == 0x5C and plen >= 2:  # '\\' escapes the next byte
                    p += 1
                    plen -= 1
                if at(p) != key[s]:
                    return False
                s += 1
                slen -= 1
            p += 1
            plen -= 1
            if slen == 0:
                while at(p) == 0x2A:
                    p += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    return match(0, 0, [False])


def key_matcher(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """A predicate telling whether a key (bytes) matches any of the globs, exactly as Redis does.

    Patterns without a character class are compiled to one regex (fast; for ``*``, ``?`` and
    escapes the translation is exact); patterns with ``[`` use :func:`redis_match`.
    """
    plain = [p for p in patterns if "[" not in p]
    classy = [p.encode("utf-8") for p in patterns if "[" in p]
    sources = [glob_to_regex(p.encode("utf-8").decode("latin-1")) for p in plain]
    rx = re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL) if sources else None

    def matches(key: bytes) -> bool:
        if rx is not None and rx.fullmatch(key.decode("latin-1")) is not None:
            return True
        return any(redis_match(p, key) for p in classy)

    return matches


def literal_part(pattern: str) -> str:
    """The characters of a glob that must appear literally (escaped ones count; class contents don't).

    Classes are skipped the way Redis parses them: an escaped ``]`` does not close one, and an
    unclosed ``[`` runs to the end of the pattern.
    """
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(pattern[i + 1])
            i += 2
            continue
        if c == "[":
            i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" and i + 1 < n else 1
            i += 1
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
