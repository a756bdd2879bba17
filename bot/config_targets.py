"""The ``targets:`` section: which Redis each alert concerns, by URL or through Sentinel.

Split from :mod:`bot.config` (which re-exports these names); :mod:`bot.targets` has the address
rules a templated URL must follow, :mod:`bot.topology` the Sentinel settings.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from bot.redisconn import RedisTarget, default_name
from bot.targets import (
    TEMPLATE,
    Address,
    AllowedAddress,
    allowed_addresses_problem,
    fill,
    fixed_address,
    parse_rule,
    resolve_url,
    templated_host,
    url_template_problems,
)
from bot.topology import SentinelConfig
from bot.validation import StrictModel

_SCHEMES = ("redis://", "rediss://", "unix://")


def _compile(value: object) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a regular expression string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]


def _parse_bytes(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size like 512mb or 2gb")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", value.lower())
        if m:
            unit = (m.group(2) or "").rstrip("b").rstrip("i")
            factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
            return int(float(m.group(1)) * factor)
    raise ValueError(f"invalid size {value!r}: use bytes or e.g. 512mb, 2gb")


ByteSize = Annotated[int, BeforeValidator(_parse_bytes), Field(gt=0)]


class LabelMatcher(StrictModel):
    """Alert labels that select something: exact values in ``match``, full-match regexes in ``match_re``."""

    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, Regex] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(name) != value for name, value in self.match.items()):
            return False
        return all(rx.fullmatch(labels.get(name, "")) is not None for name, rx in self.match_re.items())

    def admits(self, name: str, value: str) -> bool:
        """Whether the matchers on label ``name`` (if any) accept ``value``: a necessary condition of
        :meth:`matches` for labels where ``name`` has that value."""
        if name in self.match and self.match[name] != value:
            return False
        rx = self.match_re.get(name)
        return rx is None or rx.fullmatch(value) is not None


class TargetConfig(LabelMatcher):
    """A Redis database and the alerts that concern it.

    Alerts from redis_exporter carry the *exporter's* address in ``instance``; select the target with
    other labels (``job``, ``service``) or build the URL from a label with ``{{ labels.NAME }}``. A
    URL whose host or port comes from a label must list where it may go in ``allowed_addresses``
    (see :mod:`bot.targets`): labels come from whoever can POST an alert.
    """

    name: str | None = None
    url: str | None = None
    sentinel: SentinelConfig | None = Field(
        default=None,
        description="Instead of url: Sentinel addresses and the master name; the primary is asked for.",
    )
    mode: Literal["auto", "single", "cluster"] = Field(
        default="auto", description="Redis Cluster or a single node; auto: INFO cluster says."
    )
    prefer_replica: bool = Field(
        default=False, description="Run heavy read-only scans on a healthy, in-sync replica (never actions)."
    )
    action_url: str | None = Field(
        default=None, description="Credentials for mutating actions (least privilege for diagnostics)."
    )
    allowed_addresses: list[AllowedAddress] = Field(
        default_factory=list,
        validate_default=True,
        description="Where a URL templated from alert labels may connect: host:port, host globs, CIDR:port.",
    )
    maxmemory_ceiling: ByteSize | None = None

    @field_validator("url", "action_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(_SCHEMES)}")
        leftover = TEMPLATE.sub("", v)
        if "{{" in leftover or "}}" in leftover:
            raise ValueError("templates must look like {{ labels.NAME }}")
        if problems := url_template_problems(v):
            raise ValueError("; ".join(problems))
        if not templated_host(v):
            fixed_address(v)  # a ValueError (bad port) is reported at this field
        return v

    @field_validator("allowed_addresses")
    @classmethod
    def _check_allowed(cls, v: list[str], info: ValidationInfo) -> list[str]:
        url = info.data.get("url")
        if url and (problem := allowed_addresses_problem(url, v)):
            raise ValueError(problem)  # without "url" the url itself is invalid, and reported
        return v

    @property
    def label(self) -> str:
        """How lists and reports name the target: its name, ``master/db`` for Sentinel, else host:port/db."""
        if self.name:
            return self.name
        if self.sentinel is not None:
            return f"{self.sentinel.master}/{self.sentinel.db}"
        return default_name(self.where)

    @property
    def where(self) -> str:
        """The URL, or ``sentinel://master/db``: what the config says, for matching and messages."""
        return self.url if self.url is not None else self.sentinel.display() if self.sentinel else ""

    def label_names(self) -> list[str]:
        return TEMPLATE.findall(self.url or "")

    def target_name(self, labels: dict[str, str]) -> str:
        """The target's name for these labels, without building a client (the webhook's hot path).

        Raises :class:`TargetRefused` when the labels point outside ``allowed_addresses``."""
        fixed = self.fixed_name
        return fixed if fixed is not None else self.resolve(labels).name

    @cached_property
    def fixed_name(self) -> str | None:
        """The name when no label goes into it (Sentinel, or no template), computed once."""
        if self.sentinel is not None:
            return self.label
        if "{{" not in self.where and "{{" not in (self.name or ""):
            return self.name or default_name(self.where)
        return None

    def resolve(self, labels: dict[str, str], timeout: float = 5.0, *, action: bool = False) -> RedisTarget:
        """The concrete target for an alert: the URL with ``{{ labels.X }}`` filled from its labels.

        With ``action=True`` the ``action_url`` credentials are used when configured, so diagnostics
        can run as a read-only ACL user and only approved actions use the privileged one. Raises
        :class:`TargetRefused` (before any client exists) when the URL leaves ``allowed_addresses``.
        """
        if self.sentinel is not None:
            name = self.target_name(labels)
            replicas = self.prefer_replica and not action  # never for an action
            return RedisTarget(name, self.where, timeout, sentinel=self.sentinel, prefer_replica=replicas)
        url = resolve_url(self.where, labels, self.allowed_addresses)
        name = fill(self.name, labels) if self.name else default_name(url)
        if action and self.action_url:
            url = resolve_url(self.action_url, labels, self.allowed_addresses)
        allowed = self.allowed_addresses

        def replica_allowed(host: str, port: int) -> bool:
            return not allowed or any(parse_rule(e).allows(Address(host.lower(), port)) for e in allowed)

        return RedisTarget(
            name,
            url,
            timeout,
            prefer_replica=self.prefer_replica and not action,
            replica_allowed=replica_allowed,
            mode=self.mode,
        )

    @model_validator(mode="after")
    def _same_place(self) -> TargetConfig:
        """One of ``url`` and ``sentinel``; ``action_url`` may carry other credentials, never another
        host or database."""
        if (self.url is None) == (self.sentinel is None):
            raise ValueError("give exactly one of `url` or `sentinel` (addresses and master name)")
        if self.sentinel is not None and (
            self.action_url or self.allowed_addresses or self.mode == "cluster"
        ):
            raise ValueError(
                "a `sentinel` target takes no `action_url`, `allowed_addresses` or `mode: cluster`"
            )
        if self.action_url and self.url and _without_userinfo(self.action_url) != _without_userinfo(self.url):
            raise ValueError(
                "action_url must point at the same host, port and db as url (only credentials may differ)"
            )
        return self


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
