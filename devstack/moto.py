"""moto in server mode on loopback: a stand-in AWS for the demo and the tests."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from devstack.process import start_server, stop_server
from devstack.synapse import free_port


class LocalMoto:
    """One moto server; Cost Explorer answers are preloaded through moto's own API."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint_url for boto3."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        """Start and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = start_server(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            self.workdir / "moto.log",
            f"{self.url}/moto-api/",
            timeout,
            # moto's request recorder writes `moto_recording` into its working directory.
            cwd=self.workdir,
        )

    def stop(self) -> None:
        """Stop the server."""
        stop_server(self.proc)
        self.proc = None

    def _post(self, path: str, body: Any) -> None:
        req = urllib.request.Request(  # noqa: S310 - loopback URL
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310
            pass

    def reset(self) -> None:
        """Forget every resource and queued result."""
        self._post("/moto-api/reset", {})

    def start_recording(self) -> None:
        """Record every request from now on (moto's recorder, `/moto-api/recorder/`)."""
        self._post("/moto-api/recorder/reset-recording", {})
        self._post("/moto-api/recorder/start-recording", {})

    def cost_explorer_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The Cost Explorer calls recorded since `start_recording`, in order: (operation,
        request body), e.g. ("GetCostAndUsage", {"TimePeriod": {"Start": …, "End": …}, …}).
        Cost Explorer is JSON 1.1 with `X-Amz-Target: AWSInsightsIndexService.<Operation>`."""
        with urllib.request.urlopen(  # noqa: S310 - loopback URL
            f"{self.url}/moto-api/recorder/download-recording", timeout=10
        ) as resp:
            lines = resp.read().decode().splitlines()
        out: list[tuple[str, dict[str, Any]]] = []
        for line in lines:
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            service, _, op = headers.get("x-amz-target", "").partition(".")
            if service != "AWSInsightsIndexService":
                continue
            body = entry["body"]
            raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            out.append((op, json.loads(raw)))
        return out

    def queue_cost_results(self, results: list[list[dict[str, Any]]]) -> None:
        """Queue answers for get_cost_and_usage: each list of ResultsByTime is one call's."""
        self._post(
            "/moto-api/static/ce/cost-and-usage-results",
            {"results": [{"ResultsByTime": r} for r in results]},
        )


def daily_results(
    start: str, days: int, per_day: dict[str, float] | Any, group: bool = True
) -> list[dict[str, Any]]:
    """ResultsByTime for `days` days from `start`; per_day maps key → amount, or is a function
    of the day index returning such a mapping."""
    from datetime import date, timedelta

    first = date.fromisoformat(start)
    out = []
    for i in range(days):
        day = first + timedelta(days=i)
        values = per_day(i) if callable(per_day) else per_day
        entry: dict[str, Any] = {
            "TimePeriod": {"Start": day.isoformat(), "End": (day + timedelta(days=1)).isoformat()},
            "Estimated": False,
        }
        if group:
            entry["Total"] = {}
            entry["Groups"] = [
                {"Keys": [k], "Metrics": {"UnblendedCost": {"Amount": f"{v:.4f}", "Unit": "USD"}}}
                for k, v in values.items()
            ]
        else:
            total = sum(values.values())
            entry["Total"] = {"UnblendedCost": {"Amount": f"{total:.4f}", "Unit": "USD"}}
            entry["Groups"] = []
        out.append(entry)
    return out
