"""A real Prometheus (Debian's `prometheus`, 2.42) on loopback, and a test exporter for it.

`LocalPrometheus` scrapes the given targets every `scrape_interval` (1 s by default) with a
throw-away config and TSDB under `workdir`. `Exporter` is an aiohttp server answering
`/metrics` in the text exposition format (Prometheus `docs/instrumenting/exposition_formats.md`:
`name{label="value"} value` lines, `# TYPE` comments) with whatever the test set last.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from aiohttp import web

from devstack.process import start_server, stop_server
from devstack.synapse import free_port


def prometheus_binary() -> str:
    """The Prometheus executable, or RuntimeError saying how to install it."""
    found = shutil.which("prometheus")
    if found:
        return found
    raise RuntimeError("Prometheus is not installed: apt-get install prometheus")


class LocalPrometheus:
    """One Prometheus scraping `targets` (host:port) as job `job`."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        job: str = "test",
        scrape_interval: str = "1s",
        port: int | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.targets = targets
        self.job = job
        self.scrape_interval = scrape_interval
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Write the config, start, and wait for /-/ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.proc = start_server(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.workdir / "prometheus.log",
            f"{self.url}/-/ready",
            timeout,
        )

    def stop(self) -> None:
        """Stop the process."""
        stop_server(self.proc)
        self.proc = None


class Exporter:
    """A loopback `/metrics` endpoint serving `self.text` (set it to what should be scraped)."""

    def __init__(self) -> None:
        self.text = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def target(self) -> str:
        """host:port for a scrape config."""
        return f"127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        # text/plain; version=0.0.4 is the exposition format's content type.
        return web.Response(
            text=self.text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def start(self) -> None:
        """Listen on a port the OS picks."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
