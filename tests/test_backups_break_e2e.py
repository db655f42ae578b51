"""Breaks found by trying the prometheus and heartbeat checks as a new user would, each through
the real parts: Debian's Prometheus scraping a test exporter, and the bot's own HTTP server,
scheduler and Synapse. The config mistakes are in tests/test_backups_break_units.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.clock import ManualClock
from bot.services.ssh import SshClient
from commands.backups import checks
from commands.backups.checks import BackupCheck, Services
from devstack.client import RoomUser
from devstack.prometheus import Exporter, LocalPrometheus
from devstack.synapse import free_port
from tests.conftest import BotFactory
from tests.test_backups_kinds_e2e import TOKEN, post, prom_check, scraped, sent_by

METRIC = "zrepl_replication_last_successful"


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    exp = Exporter()
    await exp.start()
    yield exp
    await exp.stop()


@pytest.fixture
async def prom(exporter: Exporter, tmp_path: Path) -> AsyncIterator[LocalPrometheus]:
    server = LocalPrometheus(tmp_path / "prometheus", [exporter.target], job="zrepl")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def test_prometheus_series_names_future_values_floods_and_credentials(
    prom: LocalPrometheus, exporter: Exporter
) -> None:
    now = datetime.now(UTC)
    fresh, stale = now - timedelta(minutes=5), now - timedelta(hours=26)
    ahead = now + timedelta(days=2)
    # The same zrepl job on two hosts (the `labels` chosen do not tell them apart), a third
    # series without the chosen label at all, one whose value points two days ahead, one still
    # 0, and a gauge of 101 series that a query may match by mistake.
    exporter.text = (
        f"# TYPE {METRIC} gauge\n"
        f'{METRIC}{{zrepl_job="rsyncnet",host="pluto"}} {fresh.timestamp():.0f}\n'
        f'{METRIC}{{zrepl_job="rsyncnet",host="mimas"}} {stale.timestamp():.0f}\n'
        f'{METRIC}{{host="haumea"}} {fresh.timestamp():.0f}\n'
        f'{METRIC}{{zrepl_job="future",host="titan"}} {ahead.timestamp():.0f}\n'
        f'{METRIC}{{zrepl_job="restarted",host="titan"}} 0\n'
        "# TYPE many_backups gauge\n"
        + "".join(f'many_backups{{n="{i}"}} {fresh.timestamp():.0f}\n' for i in range(101))
    )
    await scraped(prom, f"count({METRIC}) + count(many_backups)", lambda r: len(r) == 1)
    async with aiohttp.ClientSession() as http:
        use = Services(SshClient(None), http)

        async def run(check: BackupCheck) -> list[Any]:
            return await checks.run_check(check, use, 10, datetime.now(UTC))

        results = await run(prom_check(prom.url, METRIC, labels=["zrepl_job"], what="sync"))
        # Each series keeps a name of its own (a result's key is where its state is stored:
        # two of one name took turns in it, announced back and forth each run).
        keys = [r.key for r in results]
        assert len(set(keys)) == len(keys) == 5, keys
        by_item = {r.item: r for r in results}
        pluto = f"host=pluto,instance={exporter.target},job=zrepl,zrepl_job=rsyncnet"
        mimas = f"host=mimas,instance={exporter.target},job=zrepl,zrepl_job=rsyncnet"
        haumea = f"host=haumea,instance={exporter.target},job=zrepl"
        assert by_item[pluto].state == "OK" and by_item[mimas].state == "STALE"
        assert by_item[haumea].state == "OK"
        # A time two days ahead is no time of a past backup: not OK for the next two days.
        future = by_item["zrepl_job=future"]
        assert future.state == "ERROR", future.detail
        assert " in the future: no time of a past sync (is value_is: timestamp right?)" in (
            future.detail
        )
        # A gauge still 0 (never set since the exporter started): stale, without "56 years".
        zero = by_item["zrepl_job=restarted"]
        assert zero.state == "STALE" and zero.detail == (
            "no sync reported (the value is 0: none since the exporter started)"
        )
        # The same mistake told as an age: a negative one.
        [negative] = await run(
            prom_check(prom.url, f'time() - {METRIC}{{zrepl_job="future"}}', value_is="age")
        )
        assert negative.state == "ERROR" and "is a negative age" in negative.detail

        # 101 series: one ERROR saying to narrow the query, not 101 lines and announcements.
        [flood] = await run(prom_check(prom.url, "many_backups"))
        assert flood.state == "ERROR" and flood.item is None
        assert flood.detail.startswith("the query returned 101 series, more than 100: narrow it")

        # A user and password in the URL (a Prometheus behind basic auth) never reach the room.
        port = free_port()
        secret_url = f"http://monitor:hunter2-secret@127.0.0.1:{port}"
        check = prom_check(secret_url, METRIC)
        [down] = await run(check)
        assert down.state == "ERROR"
        assert down.detail.startswith(f"cannot reach Prometheus at http://127.0.0.1:{port}")
        assert "hunter2" not in down.detail and "hunter2" not in check.target()
        assert check.target() == f"127.0.0.1:{port}"
        # …and still log in: the same URL against the real Prometheus works.
        host = prom.url.removeprefix("http://")
        [ok] = await run(prom_check(f"http://u:hunter2-secret@{host}", f'{METRIC}{{host="pluto"}}'))
        assert ok.state == "OK", ok.detail


class HeldPrometheus:
    """A Prometheus stand-in that holds every query until released: the barrier that keeps a
    backup run in the middle of its checks while a heartbeat arrives."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _query(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await self.release.wait()
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/query", self._query)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def raw_post(port: int, path: str, headers: bytes) -> int:
    """POST with header bytes as given (aiohttp's client would refuse them): the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_a_heartbeat_during_a_backup_run_is_not_undone_by_the_run(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    held = HeldPrometheus()
    await held.start()
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    config = {
        "cron": "0 3 1 1 *",  # only `!jobs run` runs the checks
        "checks": [
            {"name": "borg", "kind": "heartbeat", "token": TOKEN, "max_age": "1d"},
            {"name": "slow", "kind": "prometheus", "url": held.url, "query": "x", "max_age": "1h"},
        ],
    }

    def edit(raw: dict[str, Any]) -> None:
        raw["backups"] = config

    bot = make_bot(edit=edit, clock=clock)
    try:
        await bot.start()
        alice, bob = people["alice"], people["bob"]
        mine = sent_by(bot.user_id)
        port = bot.rt.http_port
        assert port is not None
        assert (await post(port, "/heartbeat/borg"))[1]["state"] == "OK"

        # Header bytes that are no UTF-8 are a wrong token (401), not a server error (500).
        bad = b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n"
        assert await raw_post(port, "/heartbeat/borg/fail", bad) == 401

        # A run starts; while its prometheus check is held, the job reports a failure.
        mark = alice.mark()
        run = asyncio.create_task(bob.ask(room, "!jobs run backups", bot.user_id, timeout=30))
        await asyncio.wait_for(held.arrived.wait(), 30)
        status, answer = await post(port, "/heartbeat/borg/fail", body=b"borg: lock timeout\n")
        assert (status, answer["state"]) == (200, "ERROR")
        await alice.wait_for(
            lambda e: mine(e) and "backup borg is ERROR (was OK since" in e.body, after=mark
        )
        held.release.set()
        reply = await run
        # The run's reply is the barrier: every announcement of the run came before it.
        await alice.wait_for(lambda e: e.source.get("event_id") == reply.source["event_id"])
        said = [e.body for e in alice.seen[mark:] if mine(e) and "backup borg" in e.body]
        assert not any("borg is OK" in b for b in said), said
        assert len(said) == 1, said
        # And the room's table agrees with what the job said last.
        table = await bob.ask(room, "!backups", bot.user_id, timeout=30)
        assert "borg: the job reported a failure" in table.body, table.body
    finally:
        await held.stop()
