"""The bot's glob matching must agree with Redis's own SCAN MATCH, quirks included: protected keys
are filtered on the bot's side, so any disagreement could delete a key Redis calls protected."""

from __future__ import annotations

import random

import pytest
import redis

from bot.keypatterns import key_matcher, refuse_reason

TRICKY = [
    "bull:*",
    "sess:[0-9]*",
    "agent:[0-]",
    "agent:[a-",
    "agent:[\\",
    "[a-]x",
    "a[]b",
    "a[^]b",
    "[]]*",
    "*[^\\]zzz]*",
    "[^\\]x]*",
    "\\*",
    "a\\",
    "a?b",
    "*a*b*",
    "[\xe9-\xff]*",
    "[a-\xe9]*",
    "[^a-c]?",
    "**",
    "a[b-a]c",
    "[\\]]*",
    "x[^\\\\]*",
    "[",
    "[^",
    "a[-z]",
    "a[z-]",
]
ALPHABET = ["a", "b", "c", "z", "-", "[", "]", "^", "\\", "*", "?", ":", "0", "9", "\xe9", "x"]


def keys() -> list[bytes]:
    rng = random.Random(7)
    out = {
        b"bull:x",
        b"sess:1",
        b"sess:a",
        b"agent:1",
        b"agent:-",
        b"agent:]",
        b"a\nb",
        b"a\\",
        b"*",
        "\xe9t\xe9".encode(),
        b"\xff\xfe",
        b"abc",
        b"a]b",
        b"a-b",
        b"azc",
        b"aac",
    }
    for _ in range(300):
        out.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 5))).encode())
    return sorted(out)


def patterns() -> list[str]:
    rng = random.Random(11)
    out = list(TRICKY)
    for _ in range(300):
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6))))
    return out


def test_key_matcher_agrees_with_redis_scan_match(redis_sync: redis.Redis) -> None:
    all_keys = keys()
    pipe = redis_sync.pipeline(transaction=False)
    for k in all_keys:
        pipe.set(k, "1")
    pipe.execute()
    disagreements = []
    for pattern in patterns():
        by_redis = set(redis_sync.scan_iter(match=pattern.encode(), count=1000))
        match = key_matcher([pattern])
        by_bot = {k for k in all_keys if match(k)}
        if by_redis != by_bot:
            disagreements.append((pattern, sorted(by_redis ^ by_bot)[:5]))
    assert disagreements == []


@pytest.mark.parametrize(
    "pattern", ["", " ", "*", "**", "?*", "[a-z]*", "*:*", "*[^\\]zzz]*", "[^\\]x]*", "[*"]
)
def test_patterns_matching_everything_are_refused(pattern: str) -> None:
    assert refuse_reason(pattern) is not None


@pytest.mark.parametrize("pattern", ["agent:*", "*:cache", "agent:[0-9]*", "cache\\*"])
def test_namespace_patterns_are_accepted(pattern: str) -> None:
    assert refuse_reason(pattern) is None
