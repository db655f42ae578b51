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
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
import yarl

from bot.errors import RemoteError
from bot.messages import human_duration
from commands.backups.result import CheckResult, Verdicts, stamp

ValueIs = Literal["age", "timestamp"]
# Each series is its own line and announcement: a query matching more (say `up` by mistake)
# is refused as a whole rather than flooding the room.
MAX_SERIES = 100
# The largest answer read (bytes): far above MAX_SERIES series, far below a wrong URL's file.
MAX_BODY = 4 * 2**20
# How far a value may point into the future (clocks differ a little) before it is no time of
# a past backup at all: a wrongly written query must not look fresh forever.
SKEW = timedelta(minutes=5)


def series_name(metric: dict[str, str], labels: list[str]) -> str | None:
    """`a=1,b=2` from the chosen labels (all but `__name__` when none are chosen), or None
    for a series without any (a scalar, or an aggregate such as `max(...)`)."""
    keys = labels or sorted(k for k in metric if k != "__name__")
    parts = [f"{k}={metric[k]}" for k in keys if k in metric]
    return ",".join(parts) or None


def series_names(metrics: list[dict[str, str]], labels: list[str]) -> list[str | None]:
    """A name per series (`series_name`), each distinct: a name that the chosen labels give
    to more than one series (or to none of them) is spelled with all their labels instead
    (and `__name__` too if need be); so is a series without any of the chosen labels when
    it is not alone. A name is the key of a result's stored state, so two
    series of one name would take turns in it and be announced back and forth each run."""
    names = [series_name(m, labels) for m in metrics]
    for wider in ([], sorted({k for m in metrics for k in m})):
        counts = Counter(names)
        # No name is the whole check's own key: only a series alone may go without one.
        counts[None] += len(metrics) > 1
        names = [
            series_name(m, wider) if counts[n] > 1 else n
            for m, n in zip(metrics, names, strict=True)
        ]
    return names


def shown(url: str) -> str:
    """The URL as the room and the log may see it: without a user or password in it."""
    try:
        return str(yarl.URL(url).with_user(None))
    except (TypeError, ValueError):
        return "(the configured URL)"


async def query(
    session: aiohttp.ClientSession, url: str, promql: str, timeout_s: float
) -> list[tuple[dict[str, str], str]]:
    """Run an instant query: [(labels, value string)], one per series.

    Raises RemoteError with Prometheus' own `errorType: error` for a refused query, or saying
    that it could not be reached or did not answer within `timeout_s` seconds.
    """
    endpoint = url.rstrip("/") + "/api/v1/query"
    secret = yarl.URL(url).password
    url = shown(url)
    # Prometheus stops evaluating at its own `timeout` and says so; ours is the backstop.
    form = {"query": promql, "timeout": f"{max(1, int(timeout_s))}s"}
    try:
        async with session.post(
            endpoint, data=form, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            raw = await resp.content.read(MAX_BODY + 1)
            status = resp.status
    except TimeoutError:
        raise RemoteError(f"Prometheus at {url} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        text = str(exc).replace(secret, "***") if secret else str(exc)
        raise RemoteError(f"cannot reach Prometheus at {url}: {text}") from None
    if len(raw) > MAX_BODY:
        raise RemoteError(
            f"Prometheus at {url} answered HTTP {status} with more than {MAX_BODY // 2**20} MiB"
        )
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
    if len(series) > MAX_SERIES:
        detail = (
            f"the query returned {len(series)} series, more than {MAX_SERIES}: "
            "narrow it (e.g. by a label), each series being its own line"
        )
        return [verdicts.result("ERROR", detail)]
    named = zip(series_names([m for m, _ in series], labels), series, strict=True)
    results = []
    for item, (metric, raw) in sorted(named, key=lambda s: s[0] or ""):
        facts = {"labels": metric, "value": raw}
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            detail = f"the value {raw} is no {'age' if value_is == 'age' else 'time'}"
            results.append(verdicts.result("ERROR", detail, item, None, facts))
            continue
        if value_is == "timestamp" and value == 0:
            # A gauge never set since the exporter started (e.g. after a zrepl restart): the
            # event is stale, but "for 56 years (last 1970-01-01)" would tell nothing true.
            detail = f"no {what} reported (the value is 0: none since the exporter started)"
            results.append(verdicts.result("STALE", detail, item, None, facts))
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
        ahead = (newest - verdicts.now).total_seconds()
        if ahead > SKEW.total_seconds():
            said = "a negative age" if value_is == "age" else f"{stamp(newest)}"
            detail = (
                f"the value {raw} is {said}, {human_duration(ahead)} in the future: no time "
                f"of a past {what} (is value_is: {value_is} right?)"
            )
            results.append(verdicts.result("ERROR", detail, item, None, facts))
            continue
        results.append(verdicts.since(newest, what, item, facts))
    return results
