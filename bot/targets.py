"""Resolving a target from an alert's labels, and the addresses a templated target may go to.

A target URL may take its host and port from alert labels (``redis://{{ labels.redis_addr }}/0``):
alerts from redis_exporter name Redis nowhere else. Labels come from whoever can POST to
``/alerts``, so a templated address is only followed inside the target's ``allowed_addresses``;
any other address is refused (:class:`~bot.errors.TargetRefused`) before a client exists, so the
URL's password is never sent anywhere else.

The address compared is the one the Redis client will connect to, computed by redis-py's own URL
parser (host lower-cased, port 6379 when absent), and never looked up in DNS:

- ``host:port`` exact: an IP address, or a host name (compared case-insensitively);
- a host glob, ``redis-*.cache.svc:6379``: ``*`` and ``?`` stay within one DNS label, so
  ``redis-*.cache.svc`` cannot match ``redis-x.evil.example.cache.svc`` and ``redis-*`` cannot match
  ``redis-x.evil.example``; globs match host names only, never IP addresses;
- a CIDR range with a port, ``10.0.0.0/8:6379`` or ``[fd00::]/8:6379``: only IP addresses match.
  A host name never matches a CIDR entry, even one that resolves inside it: DNS answers can change
  between the check and the connection, so with a CIDR-only list the labels must carry IPs.

Ports are exact or ``*``. Entries are validated when the config loads (see :func:`parse_rule`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator
from redis.asyncio.connection import parse_url

from bot.errors import TargetError, TargetRefused
from bot.redisconn import port_problem

TEMPLATE = re.compile(r"\{\{\s*labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUE = re.compile(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?")
"""What a label may put into a URL: a plain host, ``host:port`` or number, nothing more."""
REFUSED_NOTE = "refused: "
"""Prefix of the incident note of an alert whose target was refused (see :func:`bot.intake.match_alert`)."""
DEFAULT_PORT = 6379
_MARK = "labeltemplate"
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NET = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Address:
    """Where a Redis client connects: host as the client sees it (lower case) and port."""

    host: str
    port: int

    @property
    def ip(self) -> _IP | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class AddressRule:
    """One parsed ``allowed_addresses`` entry; exactly one of ``network``, ``host``, ``glob`` is set."""

    text: str
    port: int | None  # None: any port
    network: _NET | None = None  # an exact IP is a /32 or /128
    host: str | None = None
    glob: re.Pattern[str] | None = None

    def allows(self, addr: Address) -> bool:
        if self.port is not None and addr.port != self.port:
            return False
        ip = addr.ip
        if self.network is not None:
            return ip is not None and ip in self.network
        if ip is not None:
            return False  # an IP address only matches an IP or CIDR entry
        if self.host is not None:
            return addr.host == self.host
        return self.glob is not None and self.glob.fullmatch(addr.host) is not None


_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)(?:/(\d{1,3}))?\](?:/(\d{1,3}))?:(\d+|\*)")
_HOST_GLOB = re.compile(r"[a-z0-9.*?-]+")


def _port(text: str, entry: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: port {text!r} must be a number 1-65535 or *")
    return int(text)


def _network(text: str, entry: str) -> _NET:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {text!r} is not an IP address or CIDR range ({exc})") from None
    if net.prefixlen == 0:
        raise ValueError(f"{entry!r} matches every address; list the ranges your Redis servers are in")
    return net


@lru_cache(maxsize=1024)
def parse_rule(entry: str) -> AddressRule:
    """Parse one entry (``host:port``, ``glob:port``, ``CIDR:port``, ``[IPv6]/len:port``); a
    ``ValueError`` says what is wrong with it and how to write it."""
    text = entry.strip()
    if not text:
        raise ValueError("an allowed address may not be blank")
    if text.startswith("["):
        m = _BRACKETED.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r}: write IPv6 entries as [::1]:6379 or [fd00::]/8:6379")
        prefix = m.group(2) or m.group(3)
        net = _network(m.group(1) + (f"/{prefix}" if prefix else ""), text)
        return AddressRule(text, _port(m.group(4), text), network=net)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} has no port: write host:6379 (or host:* for any port)")
    if ":" in host:
        raise ValueError(f"{text!r}: put IPv6 addresses in brackets, e.g. [::1]:6379")
    port = _port(port_text, text)
    if "/" in host:
        return AddressRule(text, port, network=_network(host, text))
    try:
        return AddressRule(text, port, network=_network(host, text))
    except ValueError:
        pass  # not an IP address: a host name or a glob
    host = host.lower()
    if not _HOST_GLOB.fullmatch(host):
        raise ValueError(f"{text!r}: a host may only have letters, digits, '.', '-' and the wildcards * ?")
    if not any(c in host for c in "*?"):
        return AddressRule(text, port, host=host)
    if not host.strip("*?."):
        raise ValueError(f"{text!r} matches any host; name the domain, e.g. redis-*.cache.svc:6379")
    if re.fullmatch(r"[0-9.*?]+", host):
        raise ValueError(f"{text!r}: globs match host names only; use a CIDR range, e.g. 10.0.0.0/8:6379")
    pattern = "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in host)
    return AddressRule(text, port, glob=re.compile(pattern))


def _check_entry(entry: str) -> str:
    parse_rule(entry)
    return entry.strip()


AllowedAddress = Annotated[str, AfterValidator(_check_entry)]
"""An ``allowed_addresses`` entry, validated at load (the field path names the bad entry)."""


def address_of(url: str) -> Address | None:
    """The address a Redis client connects to for ``url`` (None for a unix socket).

    redis-py's own parser decides, so a ``?host=``/``?port=`` query or a percent-encoded host cannot
    make the check and the connection disagree.
    """
    if url.startswith("unix://"):
        return None
    kwargs = parse_url(url)  # ValueError for a bad port
    return Address(str(kwargs.get("host", "localhost")).lower(), int(kwargs.get("port", DEFAULT_PORT)))


def resolve_url(template: str, labels: dict[str, str], allowed: list[str]) -> str:
    """``template`` filled from the alert's labels, or :class:`TargetRefused` when ``allowed`` is set
    and the result goes anywhere else. Checked before any client exists: nothing connects."""
    url = fill(template, labels)
    if problem := port_problem(url):
        # The labels fit the pattern (digits after a colon) but name no port: 0 or over 65535.
        raise TargetError(f"the alert's labels make {problem}; refusing to build a URL from them")
    try:
        addr = address_of(url)
    except ValueError as exc:  # e.g. a label's port out of range
        raise TargetError(f"the target URL built from the alert's labels is not valid: {exc}") from None
    if not allowed or addr is None or any(parse_rule(entry).allows(addr) for entry in allowed):
        return url
    used = ", ".join(f"{n}={labels[n]}" for n in dict.fromkeys(TEMPLATE.findall(template)))
    raise TargetRefused(
        f"{addr}{f' (from labels {used})' if used else ''} is not in the target's allowed_addresses"
        f" ({', '.join(allowed)}); nothing was sent there"
    )


def fill(template: str, labels: dict[str, str]) -> str:
    """``{{ labels.X }}`` replaced by the alert's values, each a plain host, ``host:port`` or number."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in labels:
            raise TargetError(f"target URL needs label {name!r}, which the alert does not have")
        value = labels[name]
        # Alert labels come from outside: they may name a host, port or db, nothing more,
        # or a crafted label could send the bot (and the URL's password) elsewhere.
        if not LABEL_VALUE.fullmatch(value):
            raise TargetError(
                f"label {name}={value!r} is not a plain host, host:port or number; refusing to build a URL from it"
            )
        return value

    return TEMPLATE.sub(repl, template)


def _split(url: str) -> tuple[str, str, str]:
    """(userinfo, host:port, rest) of a URL whose templates are replaced by a marker."""
    parts = urlsplit(TEMPLATE.sub(_MARK, url))
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return userinfo, hostport, f"{parts.query}#{parts.fragment}"


def templated_host(url: str) -> bool:
    """Whether alert labels choose the host or port of ``url`` (then ``allowed_addresses`` is required)."""
    return _MARK in _split(url)[1] if TEMPLATE.search(url) else False


def url_template_problems(url: str) -> list[str]:
    """Templates where a label could change more than the host, port or db number."""
    if not TEMPLATE.search(url):
        return []
    if url.startswith("unix://"):
        return ["a unix socket URL cannot take values from alert labels; write the path"]
    userinfo, _, rest = _split(url)
    if _MARK in userinfo or _MARK in rest:
        return ["{{ labels.NAME }} may only fill the host, port or db number, not credentials or options"]
    return []


def fixed_address(url: str) -> Address | None:
    """The address of a URL whose host and port are written in the config (db templates filled with 0)."""
    if problem := port_problem(TEMPLATE.sub("0", url)):
        raise ValueError(problem)
    return address_of(TEMPLATE.sub("0", url))


def allowed_addresses_problem(url: str, allowed: list[str]) -> str | None:
    """What is wrong with a target's ``allowed_addresses`` for its ``url``, if anything.

    Required (non-empty) when labels choose the host or port; otherwise optional, but then it must
    include the URL's own address, or every alert for the target would be refused.
    """
    if templated_host(url):
        if allowed:
            return None
        return (
            "url takes its host from alert labels, so anyone who can post an alert could send the bot"
            " (and the URL's password) anywhere: list where it may connect, e.g."
            " allowed_addresses: ['redis-*.cache.svc:6379', '10.0.0.0/8:6379']"
        )
    if not allowed:
        return None
    addr = fixed_address(url)
    if addr is None:
        return "applies to redis:// and rediss:// URLs only, not unix sockets"
    if not any(parse_rule(entry).allows(addr) for entry in allowed):
        return f"does not include the url's own address {addr}"
    return None
