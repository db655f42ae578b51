"""Failover of two infrabot instances on one PostgreSQL: how long the room waits after kill -9.

Per run: two `infrabot run` processes (same config but the HTTP port) on a loopback Synapse and
a throwaway PostgreSQL; webhooks go to both instances at a steady rate (an accepted one is
retried on the other when one does not answer, as Alertmanager's retry would); the leader is
ended with SIGKILL; a person says `!ping` every 0.2 s until one is answered. It prints, over
the runs, the time from the kill to the first answered `!ping` (the person's send → the answer
seen), and the webhook → room latency (POST sent → the member sees the message) of webhooks
posted during the failover (from the kill to the first answer), p50/p99.

    .venv/bin/python -m bench.failover [--runs 5] [--lease 15s] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import yaml

from bench.common import bench_room, free_port, pct, stop_bot, wait_healthy
from devstack.client import RoomUser
from devstack.postgres import LocalPostgres

TOKEN = "bench-failover-token"


def payload(name: str) -> bytes:
    """A version-4 Alertmanager notification of one firing group (as bench.webhook_load)."""
    return json.dumps(
        {
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
                    "labels": {"alertname": name, "instance": "host0", "severity": "warning"},
                    "annotations": {"summary": f"{name} summary"},
                    "startsAt": "2026-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": f"{name}-0",
                }
            ],
        }
    ).encode()


def write_config(work: Path, bench: Any, bot: Any, dsn: str, port: int, lease: str) -> Path:
    config = {
        "matrix": {
            "homeserver": bench.hs.url,
            "user_id": bot.user_id,
            "access_token": bot.access_token,
            "rooms": [bench.room],
        },
        "http": {"host": "127.0.0.1", "port": port},
        "state": {"dsn": dsn, "lease": lease},
        "alertmanager": {"auth": {"bearer_token": TOKEN}},
    }
    path = work / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def role(port: int) -> str | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            return str((await resp.json()).get("role"))
    except aiohttp.ClientError:
        return None


async def post(session: aiohttp.ClientSession, ports: list[int], name: str) -> None:
    """POST to the first port, then the other, until one answers 200."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    while True:
        for port in ports:
            try:
                async with session.post(
                    f"http://127.0.0.1:{port}/alertmanager", data=payload(name), headers=headers
                ) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.05)


async def one_run(
    bench: Any, pg: LocalPostgres, person: RoomUser, lease: str, rate: float, run: int
) -> tuple[float, list[float]]:
    """(ms from kill to the first answered !ping, webhook → room ms during the failover)."""
    db = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname={db}"
    bot = bench.accounts["bot"]
    ports = [free_port(), free_port()]
    configs = [write_config(bench.work, bench, bot, dsn, p, lease) for p in ports]
    procs = [start(configs[0], bench.work / f"run{run}-a.log")]
    await asyncio.to_thread(wait_healthy, ports[0], procs[0])
    procs.append(start(configs[1], bench.work / f"run{run}-b.log"))
    await asyncio.to_thread(wait_healthy, ports[1], procs[1])
    while await role(ports[1]) != "standby":
        await asyncio.sleep(0.1)
    await person.ask(bench.room, "!ping", bot.user_id, timeout=60)

    latency: dict[str, float] = {}  # name → ms from POST to the member seeing it
    sent: dict[str, float] = {}
    stop = asyncio.Event()

    async def one(session: aiohttp.ClientSession, order: list[int], name: str) -> None:
        sent[name] = time.perf_counter()
        await post(session, order, name)
        # Alone, in a "🔔 N alert groups" message or a storm digest line: the name as a word.
        shown = re.compile(rf"\b{name}\b")
        await person.wait_for(lambda e: bool(shown.search(e.body)), timeout=300)
        latency[name] = (time.perf_counter() - sent[name]) * 1000

    async def webhooks() -> None:
        tasks = []
        async with aiohttp.ClientSession() as session:
            i = 0
            while not stop.is_set():
                order = ports if i % 2 else ports[::-1]
                tasks.append(asyncio.create_task(one(session, order, f"R{run}W{i}")))
                i += 1
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*tasks)

    poster = asyncio.create_task(webhooks())
    await asyncio.sleep(2)
    killed = time.perf_counter()
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    # A !ping every 0.2 s until one is answered ("pong", not the notice about missed ones).
    pings: list[str] = []

    async def pinger() -> None:
        while True:
            pings.append(await person.send(bench.room, "!ping"))
            await asyncio.sleep(0.2)

    pinging = asyncio.create_task(pinger())
    await person.wait_for(
        lambda e: (
            e.sender == bot.user_id
            and e.body.startswith("pong")
            and any(e.replies_to(p) for p in pings)
        ),
        timeout=300,
    )
    answered = time.perf_counter()
    pinging.cancel()
    stop.set()
    await poster
    stop_bot(procs[1])
    during = [latency[n] for n, t in sent.items() if killed <= t <= answered]
    return (answered - killed) * 1000, during


def start_postgres() -> LocalPostgres:
    """A throwaway cluster under /tmp (it runs as the unprivileged postgres user)."""
    base = Path(tempfile.mkdtemp(prefix="infrabot-pg-", dir="/tmp"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "pg")
    pg.start()
    return pg


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease", default="15s")
    parser.add_argument("--rate", type=float, default=10.0, help="webhooks per second")
    args = parser.parse_args()
    pg = start_postgres()
    try:
        with bench_room("failover", ["bot"]) as bench:
            person = RoomUser(bench.hs.url, bench.person.user_id, bench.person.access_token)
            await person.start()
            to_answer: list[float] = []
            latencies: list[float] = []
            for run in range(args.runs):
                first, during = await one_run(bench, pg, person, args.lease, args.rate, run)
                to_answer.append(first)
                latencies += during
                print(f"run {run}: first answer {first:.0f} ms, {len(during)} webhooks during")
            await person.close()
    finally:
        pg.stop()
    print(
        json.dumps(
            {
                "lease": args.lease,
                "runs": args.runs,
                "kill_to_first_ping_ms": {
                    "median": round(statistics.median(to_answer)),
                    "max": round(max(to_answer)),
                    "all": [round(x) for x in to_answer],
                },
                "webhook_to_room_during_failover_ms": {
                    "p50": round(pct(latencies, 0.5)),
                    "p99": round(pct(latencies, 0.99)),
                    "samples": len(latencies),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
