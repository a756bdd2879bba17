"""Prometheus queries for steps and scheduled jobs: prometheus-api-client, off the event loop, bounded.

prometheus-api-client is synchronous (``requests``). Every call here runs in a worker thread
(:func:`asyncio.to_thread`) under :func:`asyncio.timeout`, and ``requests`` and Prometheus itself get
the same budget, so a down or slow Prometheus becomes a :class:`PrometheusUnavailable` step error in
bounded time, never a hung incident. Credentials come from the environment only
(``PROMETHEUS_BEARER_TOKEN``, or ``PROMETHEUS_USERNAME`` and ``PROMETHEUS_PASSWORD``), never from files.

Queries may be templates: ``{{ labels.NAME }}`` is replaced by the alert's label value, escaped for a
PromQL string literal, and ``{{ selector }}`` by the configured series selector (e.g.
``{instance="10.0.0.5:9121"}``), so ``redis_up{{ selector }}`` selects the alert's Redis.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from bot.errors import StepError
from bot.formatting import format_duration
from bot.redisconn import redact_url

ENV_TOKEN = "PROMETHEUS_BEARER_TOKEN"  # noqa: S105 - the name of a variable, not a token
ENV_USERNAME = "PROMETHEUS_USERNAME"
ENV_PASSWORD = "PROMETHEUS_PASSWORD"  # noqa: S105 - the name of a variable, not a password
DEFAULT_SELECTOR = 'instance="{{ labels.instance }}"'
"""redis_exporter's series carry the exporter's address in ``instance``, as do the alerts on them."""

T = TypeVar("T")


class PrometheusError(StepError):
    """Root of Prometheus failures; the message is meant for the on-call engineer."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not be reached, did not answer in time, or refused our credentials."""

    retryable = True


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected the query (bad PromQL, or a template that did not render)."""


# -- templates ---------------------------------------------------------------------------------------

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_LABEL_REF = re.compile(r"labels\.([A-Za-z_][A-Za-z0-9_]*)")


def template_problems(text: str) -> list[str]:
    """What is wrong with a query template (empty when it is fine); checked when a playbook loads."""
    problems = []
    for m in _TEMPLATE.finditer(text):
        inner = m.group(1)
        if inner != "selector" and not _LABEL_REF.fullmatch(inner):
            problems.append(
                f"unknown template {m.group(0)!r}: use {{{{ labels.NAME }}}} or {{{{ selector }}}}"
            )
    leftover = _TEMPLATE.sub("", text)
    if "{{" in leftover or "}}" in leftover:
        problems.append("unbalanced '{{' or '}}' in the query")
    return problems


def promql_string(value: str) -> str:
    """``value`` escaped for use inside a double-quoted PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(template: str, labels: Mapping[str, str], selector: str | None = None) -> str:
    """Fill ``{{ labels.NAME }}`` and ``{{ selector }}`` in a query; raise :class:`PrometheusQueryError`
    naming the missing label when the alert does not carry it."""

    def repl(m: re.Match[str]) -> str:
        inner = m.group(1)
        if inner == "selector":
            if selector is None:
                raise PrometheusQueryError("the query uses {{ selector }} but no selector is configured")
            matchers = render(selector, labels)
            return "{" + matchers + "}" if matchers.strip() else ""
        ref = _LABEL_REF.fullmatch(inner)
        if ref is None:
            raise PrometheusQueryError(f"unknown template {m.group(0)!r} in the query")
        name = ref.group(1)
        if name not in labels:
            raise PrometheusQueryError(
                f"the query needs the alert label {name!r}, which this incident does not have"
                " (set prometheus.selector in the config, or `selector` on the step)"
            )
        return promql_string(labels[name])

    return _TEMPLATE.sub(repl, template)


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One series' value at one instant."""

    labels: dict[str, str]
    value: float
    ts: float


@dataclass(frozen=True)
class Series:
    """One series over a time range; ``points`` are (unix time, value), oldest first."""

    labels: dict[str, str]
    points: list[tuple[float, float]]

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.points if not math.isnan(v)]

    @property
    def last(self) -> float:
        return self.points[-1][1] if self.points else math.nan


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_vector(result: Any) -> list[Sample]:
    """An instant query's ``result``: a vector (list of series) or a scalar (``[ts, "value"]``)."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return [Sample({}, _float(result[1]), _float(result[0]))]
    samples = []
    for item in result or []:
        if "value" not in item:
            raise PrometheusQueryError(
                "the query returns a range vector (it ends in [duration]); wrap it in a function such as"
                " rate(), max_over_time() or last_over_time() for an instant value"
            )
        ts, value = item["value"]
        samples.append(Sample(dict(item.get("metric", {})), _float(value), _float(ts)))
    return samples


def parse_matrix(result: Any) -> list[Series]:
    return [
        Series(dict(item.get("metric", {})), [(_float(t), _float(v)) for t, v in item.get("values", [])])
        for item in result or []
    ]


def _api_detail(text: str) -> str:
    """Prometheus' own error message from the client's exception text, which embeds the response
    body as a bytes literal: ``HTTP Status Code 400 (b'{"status":"error","error":"..."}')``."""
    m = _BODY.search(text)
    if m is not None:
        try:
            body = ast.literal_eval(m.group(1))
            return str(json.loads(body).get("error") or body[:300])
        except (ValueError, SyntaxError, AttributeError):
            pass
    return text[:300]


# -- the client --------------------------------------------------------------------------------------

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_BODY = re.compile(r"\((b(['\"]).*\2)\)\s*$", re.S)
_STATUS = re.compile(r"HTTP Status Code (\d{3})")


class PromClient:
    """A Prometheus HTTP API client for async code: every call is bounded by ``timeout`` seconds.

    ``on_error`` is called once per failed call (the bot counts them in its own metrics).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        selector: str | None = DEFAULT_SELECTOR,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        verify_tls: bool = True,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)
        self.timeout = timeout
        self.selector = selector
        self.on_error = on_error
        # One quick retry for a dropped connection or a 502/503 from a proxy; anything longer would
        # eat the step's time budget. Backoff 0: the timeout, not the retry, bounds the call.
        retry = Retry(total=1, backoff_factor=0, status_forcelist=(502, 503, 504), raise_on_status=False)
        options: dict[str, Any] = {
            "headers": headers,
            "auth": auth,
            "disable_ssl": not verify_tls,
            "retry": retry,
        }
        self._conn = PrometheusConnect(url=self.url, **options)

    @classmethod
    def from_env(
        cls,
        url: str,
        *,
        timeout: float = 10.0,
        selector: str | None = DEFAULT_SELECTOR,
        verify_tls: bool = True,
        env: Mapping[str, str] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> PromClient:
        """A client with credentials from the environment: a bearer token, or a user and password."""
        env = os.environ if env is None else env
        headers, auth = None, None
        if env.get(ENV_TOKEN):
            headers = {"Authorization": f"Bearer {env[ENV_TOKEN]}"}
        elif env.get(ENV_USERNAME):
            auth = (env[ENV_USERNAME], env.get(ENV_PASSWORD, ""))
        return cls(
            url,
            timeout=timeout,
            selector=selector,
            headers=headers,
            auth=auth,
            verify_tls=verify_tls,
            on_error=on_error,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)

    def _requests_timeout(self) -> Any:
        return (min(self.timeout, 5.0), self.timeout)

    def _params(self) -> dict[str, str]:
        # Prometheus aborts the evaluation itself at the same budget: no orphaned heavy query.
        return {"timeout": f"{self.timeout:g}s"}

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow an outer cancellation. The
            # worker thread is not killed on timeout, but requests' own timeout ends it soon after.
            async with asyncio.timeout(self.timeout + 1.0):
                return await asyncio.to_thread(fn)
        except TimeoutError:
            error: PrometheusError = PrometheusUnavailable(
                f"Prometheus at {self.display_url} did not answer {what} within {format_duration(self.timeout)}"
            )
        except requests.Timeout:
            error = PrometheusUnavailable(
                f"Prometheus at {self.display_url} did not answer {what} within {format_duration(self.timeout)}"
            )
        except requests.ConnectionError as exc:
            reason = _ERRNO.search(str(exc))
            error = PrometheusUnavailable(
                f"cannot reach Prometheus at {self.display_url}: "
                + (reason.group(1).strip() if reason else type(exc).__name__)
            )
        except requests.RequestException as exc:
            error = PrometheusUnavailable(f"Prometheus at {self.display_url}: {type(exc).__name__}: {exc}")
        except PrometheusApiClientException as exc:
            error = self._api_error(str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            error = PrometheusUnavailable(
                f"{self.display_url} answered {what} with something that is not a Prometheus API"
                f" response ({type(exc).__name__}); is prometheus.url right?"
            )
        if self.on_error is not None:
            self.on_error()
        raise error

    def _api_error(self, text: str) -> PrometheusError:
        status_m = _STATUS.search(text)
        status = int(status_m.group(1)) if status_m else 0
        detail = _api_detail(text)
        if status in (401, 403):
            return PrometheusUnavailable(
                f"Prometheus at {self.display_url} refused our credentials (HTTP {status}); set"
                f" {ENV_TOKEN}, or {ENV_USERNAME} and {ENV_PASSWORD}, in the bot's environment"
            )
        if status in (400, 422):
            return PrometheusQueryError(f"Prometheus rejected the query: {detail}")
        return PrometheusUnavailable(f"Prometheus at {self.display_url} answered HTTP {status}: {detail}")

    async def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        """An instant query; a scalar result comes back as one sample without labels."""
        params = self._params()
        if at is not None:
            params["time"] = f"{at:.3f}"
        result = await self._call(
            "a query",
            lambda: self._conn.custom_query(promql, params=params, timeout=self._requests_timeout()),
        )
        return parse_vector(result)

    async def query_range(self, promql: str, *, start: float, end: float, step: float) -> list[Series]:
        """A range query from ``start`` to ``end`` (unix seconds) at ``step`` seconds resolution."""
        params = {**self._params(), "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        # custom_query_range rounds start/end to whole seconds and wants datetimes; our params (sent
        # after its own) keep sub-second precision, which short test windows need.
        s, e = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        result = await self._call(
            "a range query",
            lambda: self._conn.custom_query_range(
                promql, s, e, f"{step:g}", params=params, timeout=self._requests_timeout()
            ),
        )
        return parse_matrix(result)

    async def value(self, promql: str) -> float | None:
        """The first sample's value of an instant query, or None when nothing matched (or NaN)."""
        samples = await self.query(promql)
        if not samples or math.isnan(samples[0].value):
            return None
        return samples[0].value

    async def values(self, queries: Sequence[str]) -> list[float | None]:
        """Several single-value queries at once (they run concurrently, each bounded)."""
        return list(await asyncio.gather(*(self.value(q) for q in queries)))
