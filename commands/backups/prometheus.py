"""Backup freshness from a PromQL instant query, one result per returned series.

The HTTP API, per Prometheus 2.42 `docs/querying/api.md` (and `web/api/v1/api.go`):
`POST /api/v1/query` with the form fields `query` and `timeout` answers
`{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {labels},
"value": [<unix seconds float>, "<value as a string>"]}, …]}}` (`"scalar"`: `result` is one
`[ts, "value"]`); values may be `"NaN"` or `"+Inf"`. A failed query answers 4xx/5xx with
`{"status": "error", "errorType": "bad_data" | "timeout" | "execution" | …, "error": "…"}`
— that text is what the room sees.

Each series' value is either an age in seconds (`value_is: age`, e.g.
`time() - zrepl_replication_last_successful`) or a Unix timestamp (`value_is: timestamp`, e.g.
`zrepl_replication_last_successful`), judged against `max_age` at the bot's clock. A series
is named by its labels (`zrepl_job=rsyncnet`); an empty answer is STALE ("no series"), since
a metric that stopped being scraped is exactly how a dead backup looks from Prometheus.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp

from bot.errors import RemoteError
from commands.backups.result import CheckResult, Verdicts

ValueIs = Literal["age", "timestamp"]


def series_name(metric: dict[str, str], labels: list[str]) -> str | None:
    """`a=1,b=2` from the chosen labels (all but `__name__` when none are chosen), or None
    for a series without any (a scalar, or an aggregate such as `max(...)`)."""
    keys = labels or sorted(k for k in metric if k != "__name__")
    parts = [f"{k}={metric[k]}" for k in keys if k in metric]
    return ",".join(parts) or None


async def query(
    session: aiohttp.ClientSession, url: str, promql: str, timeout_s: float
) -> list[tuple[dict[str, str], str]]:
    """Run an instant query: [(labels, value string)], one per series.

    Raises RemoteError with Prometheus' own `errorType: error` for a refused query, or saying
    that it could not be reached or did not answer within `timeout_s` seconds.
    """
    endpoint = url.rstrip("/") + "/api/v1/query"
    # Prometheus stops evaluating at its own `timeout` and says so; ours is the backstop.
    form = {"query": promql, "timeout": f"{max(1, int(timeout_s))}s"}
    try:
        async with session.post(
            endpoint, data=form, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            raw = await resp.read()
            status = resp.status
    except TimeoutError:
        raise RemoteError(f"Prometheus at {url} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise RemoteError(f"cannot reach Prometheus at {url}: {exc}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        first = raw.decode(errors="replace").strip().splitlines()[:1] or ["empty body"]
        raise RemoteError(
            f"Prometheus at {url} answered HTTP {status} without JSON: {first[0][:200]!r}"
        ) from None
    if not isinstance(doc, dict):
        raise RemoteError(f"Prometheus at {url} answered HTTP {status} with odd JSON")
    if doc.get("status") != "success":
        kind = doc.get("errorType") or "error"
        text = str(doc.get("error") or f"HTTP {status}")[:400]
        raise RemoteError(f"Prometheus at {url} refused the query: {kind}: {text}")
    return _series(doc.get("data"))


def _series(data: Any) -> list[tuple[dict[str, str], str]]:
    if not isinstance(data, dict):
        raise RemoteError('Prometheus answered without a "data" object')
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [({}, str(result[1]))]
    if kind != "vector" or not isinstance(result, list):
        raise RemoteError(
            f"the query returns a {kind}, not an instant vector: "
            "write it to give one value per series"
        )
    out = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), list):
            raise RemoteError("Prometheus answered a series without a value")
        metric = item.get("metric") or {}
        value = item["value"]
        out.append(({str(k): str(v) for k, v in metric.items()}, str(value[-1])))
    return out


def judge(
    series: list[tuple[dict[str, str], str]],
    value_is: ValueIs,
    labels: list[str],
    what: str,
    verdicts: Verdicts,
) -> list[CheckResult]:
    """One result per series: OK within max age, STALE beyond it, ERROR for a value that is no
    time (NaN, Inf); one STALE for the whole check when there is no series at all."""
    if not series:
        return [verdicts.result("STALE", "no series: the query returned nothing")]
    results = []
    for metric, raw in sorted(series, key=lambda s: series_name(s[0], labels) or ""):
        item = series_name(metric, labels)
        facts = {"labels": metric, "value": raw}
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            detail = f"the value {raw} is no {'age' if value_is == 'age' else 'time'}"
            results.append(verdicts.result("ERROR", detail, item, None, facts))
            continue
        try:
            if value_is == "age":
                newest = verdicts.now - timedelta(seconds=value)
            else:
                newest = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            detail = f"the value {raw} is out of range for a {value_is}"
            results.append(verdicts.result("ERROR", detail, item, None, facts))
            continue
        results.append(verdicts.since(newest, what, item, facts))
    return results
