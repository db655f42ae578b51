"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback, sending to the bot.

Alone, or as one replica of an HA pair: `cluster_port` and `peers` are `--cluster.listen-address`
and `--cluster.peer` (flags of cmd/alertmanager/main.go, 0.25); the gossip timings are shortened
so that a pair settles and deduplicates in about a second on loopback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from devstack.process import start_server, stop_server
from devstack.synapse import free_port


def alertmanager_binary() -> str:
    """The Alertmanager executable, or RuntimeError saying how to install it."""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    raise RuntimeError("Alertmanager is not installed: apt-get install prometheus-alertmanager")


class LocalAlertmanager:
    """One Alertmanager grouping by alertname (or `group_by`), with short waits, posting to
    `webhook_url`."""

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        port: int | None = None,
        bearer_token: str | None = None,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "24h",
        group_by: list[str] | None = None,
        max_alerts: int = 0,
        cluster_port: int | None = None,
        peers: list[str] | None = None,
        peer_timeout: str = "2s",
    ) -> None:
        self.workdir = workdir.resolve()
        self.webhook_url = webhook_url
        self.port = port or free_port()
        self.bearer_token = bearer_token
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.group_by = ["alertname"] if group_by is None else group_by
        # webhook_config `max_alerts` (0: all); the rest is counted in `truncatedAlerts`.
        self.max_alerts = max_alerts
        # None: not clustered (`--cluster.listen-address=` switches the cluster off).
        self.cluster_port = cluster_port
        self.peers = peers or []
        # How long the replica at position i waits i times before it checks the gossiped
        # notification log and sends (notify.go WaitStage; 15s by default).
        self.peer_timeout = peer_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the API and UI."""
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        webhook: dict[str, Any] = {
            "url": self.webhook_url,
            "send_resolved": True,
            "max_alerts": self.max_alerts,
        }
        if self.bearer_token:
            webhook["http_config"] = {"authorization": {"credentials": self.bearer_token}}
        config = {
            "route": {
                "receiver": "infrabot",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": "infrabot", "webhook_configs": [webhook]}],
        }
        path = self.workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    @property
    def cluster_address(self) -> str:
        """host:port of its gossip listener (for the other replica's `--cluster.peer`)."""
        if self.cluster_port is None:
            raise RuntimeError("this Alertmanager is not clustered")
        return f"127.0.0.1:{self.cluster_port}"

    def _cluster_flags(self) -> list[str]:
        if self.cluster_port is None:
            return ["--cluster.listen-address="]
        return [
            f"--cluster.listen-address={self.cluster_address}",
            f"--cluster.advertise-address={self.cluster_address}",
            *(f"--cluster.peer={peer}" for peer in self.peers),
            f"--cluster.peer-timeout={self.peer_timeout}",
            # Settling waits for 3 stable member counts at 10 gossip intervals each.
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=1s",
            "--cluster.settle-timeout=10s",
        ]

    def start(self, timeout: float = 30) -> None:
        """Start and wait for /-/ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.proc = start_server(
            "alertmanager",
            [
                alertmanager_binary(),
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *self._cluster_flags(),
                f"--web.external-url={self.url}",
            ],
            self.workdir / "alertmanager.log",
            f"{self.url}/-/ready",
            timeout,
        )

    def stop(self) -> None:
        """Stop the process."""
        stop_server(self.proc)
        self.proc = None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One API v2 call (synchronous, for setup and assertions)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback URL
            f"{self.url}/api/v2{path}", data=data, method=method
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def cluster_status(self) -> tuple[str, list[str]]:
        """Its cluster status ("settling", "ready", "disabled") and the addresses of the
        members it sees, itself included (`GET /api/v2/status`, api/v2/openapi.yaml)."""
        cluster = self.api("GET", "/status")["cluster"]
        peers = sorted(str(peer["address"]) for peer in cluster.get("peers") or [])
        return str(cluster["status"]), peers

    def notifications_sent(self) -> float:
        """Webhook notifications it has sent (`alertmanager_notifications_total`)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
        found = re.search(
            r'^alertmanager_notifications_total\{integration="webhook"\} (\S+)$', text, re.M
        )
        return float(found.group(1)) if found else 0.0

    def fire(
        self,
        labels: dict[str, str],
        annotations: dict[str, str] | None = None,
        resolved: bool = False,
        starts_at: datetime | None = None,
    ) -> None:
        """Post one alert as Prometheus would: firing, or resolved (endsAt in the past)."""
        self.post([alert(labels, annotations, resolved, starts_at)])

    def post(self, alerts: list[dict[str, Any]]) -> None:
        """Post alerts (built by `alert`) in one request, as Prometheus' notifier batches them."""
        self.api("POST", "/alerts", alerts)


def alert(
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    resolved: bool = False,
    starts_at: datetime | None = None,
) -> dict[str, Any]:
    """One alert of `POST /api/v2/alerts` (api/v2/openapi.yaml postableAlert), as Prometheus
    sends it: firing with endsAt ahead, or resolved with endsAt just past."""
    now = datetime.now(UTC)
    return {
        "labels": labels,
        "annotations": annotations or {},
        "generatorURL": f"http://prometheus.example:9090/graph?g0.expr={labels.get('alertname')}",
        "startsAt": (starts_at or now - timedelta(minutes=5)).isoformat(),
        "endsAt": (
            now - timedelta(seconds=1) if resolved else now + timedelta(hours=1)
        ).isoformat(),
    }
