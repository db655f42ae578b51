"""A lean webhook load generator, run as its own process by bench.alert_storm.

It builds every request up front and speaks bare HTTP/1.1 over keep-alive connections, so
its own cost stays small and its event loop does not delay the member that watches the room
(aiohttp's client in the watching process cost more CPU than the bot's handler). Timestamps
are time.perf_counter(), which is CLOCK_MONOTONIC on Linux and comparable across processes.

    python -m bench.webhook_load --port P --webhooks 500 --alerts 10 --in-flight 20
    (prints "ready", waits for a line on stdin, sends, prints one JSON result)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any


def payload(name: str, alerts: int) -> dict[str, Any]:
    """A version-4 notification for group `name` with `alerts` firing alerts."""
    now = datetime.now(UTC).isoformat()
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "status": "firing",
        "receiver": "matrix",
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "severity": "warning"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "instance": f"host{i}:9100", "severity": "warning"},
                "annotations": {"summary": f"{name} on host{i}"},
                "startsAt": now,
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"{name}-{i}",
            }
            for i in range(alerts)
        ],
    }


def request(port: int, body: bytes) -> bytes:
    """A complete HTTP/1.1 POST of `body` to /alertmanager."""
    head = (
        f"POST /alertmanager HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def storm(
    port: int, named: list[tuple[str, bytes]], in_flight: int
) -> list[tuple[str, float, float, int]]:
    """Send every request over `in_flight` connections; (name, start, ms, status) each."""
    queue = iter(named)
    results: list[tuple[str, float, float, int]] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for name, raw in queue:
                t0 = time.perf_counter()
                writer.write(raw)
                status = await _read_response(reader)
                results.append((name, t0, (time.perf_counter() - t0) * 1000, status))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--alerts", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--prefix", default="Storm")
    args = parser.parse_args()
    named = [
        (name, request(args.port, json.dumps(payload(name, args.alerts)).encode()))
        for name in (f"{args.prefix}{i}" for i in range(args.webhooks))
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    results = asyncio.run(storm(args.port, named, args.in_flight))
    print(json.dumps({"started": started, "results": results}), flush=True)


if __name__ == "__main__":
    main()
