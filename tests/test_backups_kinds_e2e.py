"""The prometheus, heartbeat and zpool checks through the real parts: a real Prometheus
(Debian's) scraping a test exporter, the bot's own HTTP server and Synapse, and a real SSH
server running a fake `zpool` that prints what OpenZFS 2.2 prints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.clock import ManualClock
from bot.services.ssh import SshClient
from commands.backups import checks
from commands.backups.checks import BackupCheck, Services
from devstack.client import RoomUser, SeenEvent
from devstack.prometheus import Exporter, LocalPrometheus
from devstack.ssh import LocalSshServer
from devstack.synapse import free_port
from tests.backups_fixtures import (
    DEGRADED_STATUS,
    mirror,
    scrub_done,
    scrub_running,
    zpool_list_lines,
    zpool_status_block,
)
from tests.conftest import BotFactory

METRIC = "zrepl_replication_last_successful"
TOKEN = "hb-token-0123456789abcdef"


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


def exposition(values: dict[str, str]) -> str:
    """The text format (exposition_formats.md) for zrepl's metric, one line per job."""
    lines = [f"# TYPE {METRIC} gauge"]
    lines += [f'{METRIC}{{zrepl_job="{job}"}} {value}' for job, value in values.items()]
    return "\n".join(lines) + "\n"


async def scraped(prom: LocalPrometheus, query: str, want: Callable[[list[Any]], bool]) -> None:
    """Wait until Prometheus itself answers `query` as wanted (the first scrape comes a few
    seconds after start, and each change one scrape interval later)."""
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{prom.url}/api/v1/query", params={"query": query}) as resp:
                doc = await resp.json()
            if doc.get("status") == "success" and want(doc["data"]["result"]):
                return
            assert time.monotonic() < deadline, f"Prometheus never answered {query} as wanted"
            await asyncio.sleep(0.3)


def prom_check(url: str, query: str, **more: Any) -> BackupCheck:
    return BackupCheck.model_validate(
        {"name": "zrepl", "kind": "prometheus", "url": url, "query": query, "max_age": "1h", **more}
    )


async def test_prometheus_check_against_a_real_prometheus(
    prom: LocalPrometheus, exporter: Exporter
) -> None:
    now = datetime.now(UTC)
    stale, fresh = now - timedelta(hours=26), now - timedelta(minutes=5)
    exporter.text = exposition(
        {"rsyncnet": f"{stale.timestamp():.0f}", "local": f"{fresh.timestamp():.0f}"}
    )
    await scraped(prom, METRIC, lambda r: len(r) == 2)
    async with aiohttp.ClientSession() as http:
        use = Services(SshClient(None), http)

        async def run(check: BackupCheck, timeout_s: float = 10) -> list[Any]:
            return await checks.run_check(check, use, timeout_s, datetime.now(UTC))

        labelled = {"labels": ["zrepl_job"], "what": "successful replication"}
        for check in (
            prom_check(prom.url, METRIC, value_is="timestamp", **labelled),
            prom_check(prom.url, f"time() - {METRIC}", value_is="age", **labelled),
        ):
            results = await run(check)
            assert [(r.item, r.state) for r in results] == [
                ("zrepl_job=local", "OK"),
                ("zrepl_job=rsyncnet", "STALE"),
            ], [r.detail for r in results]
            assert results[1].detail.startswith("no successful replication for 1 d 2 h (last ")
        # Unnamed labels: every label Prometheus gives (its job and instance too).
        [one, _] = await run(prom_check(prom.url, METRIC))
        assert one.item == f"instance={exporter.target},job=zrepl,zrepl_job=local"

        [empty] = await run(prom_check(prom.url, f'{METRIC}{{zrepl_job="nope"}}'))
        assert empty.state == "STALE" and empty.detail == "no series: the query returned nothing"

        [bad] = await run(prom_check(prom.url, f"sum({METRIC}"))
        assert bad.state == "ERROR" and bad.item is None
        # Prometheus' own words (errorType: error), e.g. "bad_data: 1:4: parse error: …".
        assert f"Prometheus at {prom.url} refused the query: bad_data: " in bad.detail
        assert "parse error" in bad.detail

        [ranged] = await run(prom_check(prom.url, f"{METRIC}[5m]"))
        assert ranged.state == "ERROR" and "returns a matrix" in ranged.detail

        closed = f"http://127.0.0.1:{free_port()}"
        [down] = await run(prom_check(closed, METRIC))
        assert down.state == "ERROR" and down.detail.startswith(
            f"cannot reach Prometheus at {closed}"
        )

        # A server that accepts and never answers: our timeout, said as such.
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        try:
            [slow] = await run(prom_check(f"http://127.0.0.1:{port}", METRIC), timeout_s=0.5)
        finally:
            silent.close()
        assert slow.state == "ERROR"
        assert slow.detail == f"Prometheus at http://127.0.0.1:{port} did not answer within 0.5 s"

        # NaN is scraped as such: that series is an ERROR, the other one still judged.
        exporter.text = exposition({"rsyncnet": "NaN", "local": f"{fresh.timestamp():.0f}"})
        nan = f'{METRIC}{{zrepl_job="rsyncnet"}}'
        await scraped(prom, nan, lambda r: bool(r) and r[0]["value"][1] == "NaN")
        results = await run(prom_check(prom.url, METRIC, labels=["zrepl_job"]))
        assert [(r.item, r.state) for r in results] == [
            ("zrepl_job=local", "OK"),
            ("zrepl_job=rsyncnet", "ERROR"),
        ]


# --- zpool over SSH -----------------------------------------------------------------------


@pytest.fixture
async def ssh_host(tmp_path: Path) -> AsyncIterator[LocalSshServer]:
    server = LocalSshServer(tmp_path / "ssh")
    await server.start()
    yield server
    await server.stop()


def install_zpool(host: LocalSshServer, data: Path) -> None:
    """A fake `zpool`: `list` prints data/zpool.list, `status` data/zpool.status; it refuses
    other subcommands; data/zpool.broken goes to stderr with exit status 127."""
    data.mkdir(parents=True, exist_ok=True)
    host.script(
        "zpool",
        f'data="{data}"\n'
        'if [ -f "$data/zpool.broken" ]; then cat "$data/zpool.broken" >&2; exit 127; fi\n'
        'case "$1" in\n'
        '  list) cat "$data/zpool.list";;\n'
        '  status) [ "$TZ" = UTC0 ] || echo "fake zpool: TZ is not UTC0" >&2\n'
        '    cat "$data/zpool.status";;\n'
        '  *) echo "fake zpool: unexpected $1" >&2; exit 2;;\n'
        "esac\n",
    )


def pools(data: Path, now: datetime, degraded: bool = False) -> None:
    (data / "zpool.list").write_text(
        zpool_list_lines(
            {"zroot": ("ONLINE", 42), "tank": ("DEGRADED" if degraded else "ONLINE", 71)}
        )
    )
    tank = (
        zpool_status_block(
            "tank",
            "DEGRADED",
            scrub_running(now - timedelta(hours=2), 22.15, 8650),
            mirror("tank", "DEGRADED", (2, "sdb", "FAULTED", 3, 120, 0, "too many errors")),
            status=DEGRADED_STATUS,
        )
        if degraded
        else zpool_status_block(
            "tank", "ONLINE", scrub_done(now - timedelta(days=40)), mirror("tank")
        )
    )
    (data / "zpool.status").write_text(
        zpool_status_block("zroot", "ONLINE", scrub_done(now - timedelta(days=3)), mirror("zroot"))
        + "\n"
        + tank
    )


async def test_zpool_check_over_ssh(ssh_host: LocalSshServer, tmp_path: Path) -> None:
    data = tmp_path / "zpool"
    install_zpool(ssh_host, data)
    now = datetime.now(UTC)
    pools(data, now)
    ssh = SshClient(ssh_host.known_hosts, [ssh_host.client_key])
    check = BackupCheck.model_validate(
        {"name": "pluto-pools", "kind": "zpool", "host": ssh_host.target, "max_scrub_age": "35d"}
    )
    results = await checks.run_check(check, ssh, 10, now)
    assert [(r.item, r.state) for r in results] == [("tank", "STALE"), ("zroot", "OK")]
    assert results[0].detail.startswith("ONLINE; no scrub for 40 d: last scrub finished")
    assert results[1].detail.endswith("; 42% full")

    pools(data, now, degraded=True)
    results = await checks.run_check(check, ssh, 10, now)
    tank = results[0]
    assert tank.state == "ERROR"
    assert "sdb FAULTED (3 read, 120 write, 0 checksum errors; too many errors)" in tank.detail
    assert "scrub running since" in tank.detail and "22.15% done, 02:24:10 to go" in tank.detail

    (data / "zpool.broken").write_text("sh: 1: zpool: not found\n")
    [broken] = await checks.run_check(check, ssh, 10, now)
    assert (
        broken.state == "ERROR" and broken.detail == "`zpool` exited 127: sh: 1: zpool: not found"
    )


# --- heartbeats and the story the room hears ------------------------------------------------


def sent_by(user_id: str) -> Callable[[SeenEvent], bool]:
    return lambda e: e.sender == user_id


async def post(
    port: int, path: str, token: str | None = TOKEN, body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_heartbeats_and_one_story_per_backup(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    prom: LocalPrometheus,
    exporter: Exporter,
    ssh_host: LocalSshServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything the bot and its HTTP server log (nio's DEBUG sync dumps aside).
    caplog.set_level(logging.INFO)
    for name in ("bot", "commands", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)
    start = datetime.now(UTC).replace(microsecond=0)
    clock = ManualClock(start)
    last_sync = start - timedelta(minutes=10)
    exporter.text = exposition({"rsyncnet": f"{last_sync.timestamp():.0f}"})
    await scraped(prom, METRIC, lambda r: len(r) == 1)
    data = tmp_path / "zpool"
    install_zpool(ssh_host, data)
    pools(data, start)
    token_file = tmp_path / "borg.token"
    token_file.write_text(TOKEN + "\n")
    config = {
        "cron": "0 3 1 1 *",  # only `!jobs run` runs the checks while the clock moves
        "ssh": {
            "known_hosts": str(ssh_host.known_hosts),
            "client_keys": [str(ssh_host.client_key)],
        },
        "checks": [
            {
                "name": "rsyncnet",
                "kind": "prometheus",
                "url": prom.url,
                "query": METRIC,
                "value_is": "timestamp",
                "labels": ["zrepl_job"],
                "what": "successful replication",
                "max_age": "1h",
            },
            {
                "name": "borgbackup-job-state",
                "kind": "heartbeat",
                "token_file": str(token_file),
                "max_age": "1d",
                "grace": "1h",
                "max_run": "4h",
            },
            {
                "name": "pluto-pools",
                "kind": "zpool",
                "host": ssh_host.target,
                "max_scrub_age": "35d",
            },
        ],
    }

    def edit(raw: dict[str, Any]) -> None:
        raw["backups"] = config

    bot = make_bot(edit=edit, clock=clock)
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    mine = sent_by(bot.user_id)
    port = bot.rt.http_port
    assert port is not None

    async def run_job() -> None:
        reply = await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)
        await alice.wait_for(lambda e: e.source.get("event_id") == reply.source["event_id"])

    mark = alice.mark()
    await run_job()
    said = [e.body for e in alice.seen[mark:] if mine(e) and "backup " in e.body]
    assert any(
        b.startswith("⚠️ backup borgbackup-job-state is STALE: no successful run reported yet")
        for b in said
    ), said
    assert any(
        b.startswith("⚠️ backup pluto-pools (tank) is STALE: ONLINE; no scrub for 40 d")
        for b in said
    ), said
    assert not any("rsyncnet" in b for b in said)

    # Refusals: each with its own clear answer, nothing announced, the token never logged.
    assert (await post(port, "/heartbeat/borgbackup-job-state", token="wrong-token-000000"))[
        0
    ] == 401
    assert (await post(port, "/heartbeat/borgbackup-job-state", token=None))[0] == 401
    status, answer = await post(port, "/heartbeat/nosuch")
    assert status == 404 and answer["reason"] == "no heartbeat check named 'nosuch'"
    assert (await post(port, "/heartbeat/rsyncnet"))[0] == 404  # not a heartbeat check
    assert (await post(port, "/heartbeat/borgbackup-job-state/explode"))[0] == 404

    # The job starts, then fails: announced at once, with its lines and the run's duration.
    assert (await post(port, "/heartbeat/borgbackup-job-state/start"))[0] == 200
    await clock.advance(timedelta(minutes=7))
    lines = (
        b"Creating archive at ssh://u1@u1.your-storagebox.de:23/./state\n"
        b"Remote: Connection closed by remote host\n"
    )
    mark = alice.mark()
    status, answer = await post(port, "/heartbeat/borgbackup-job-state/fail", body=lines)
    assert (status, answer["state"]) == (200, "ERROR")
    failed = await alice.wait_for(
        lambda e: mine(e) and "backup borgbackup-job-state is ERROR (was STALE since" in e.body,
        after=mark,
    )
    assert "Remote: Connection closed by remote host" in failed.body
    assert "the last run took 7 min" in failed.body
    # A second failure is news too, even one whose output is too large to read: the failure
    # is kept (413 says the body was not read), then one with its lines.
    mark = alice.mark()
    status, answer = await post(port, "/heartbeat/borgbackup-job-state/fail", body=b"x" * 70_000)
    assert (status, answer["state"]) == (413, "ERROR"), answer
    assert "the fail was recorded without the body" in answer["reason"]
    await alice.wait_for(
        lambda e: (
            mine(e)
            and "borgbackup-job-state is ERROR again (since" in e.body
            and "its output was not read: body larger than 65536 bytes" in e.body
        ),
        after=mark,
    )
    mark = alice.mark()
    await post(port, "/heartbeat/borgbackup-job-state/fail", body=b"borg: Repository locked\n")
    await alice.wait_for(
        lambda e: (
            mine(e)
            and "borgbackup-job-state is ERROR again" in e.body
            and "Repository locked" in e.body
        ),
        after=mark,
    )
    # Success closes the story.
    await post(port, "/heartbeat/borgbackup-job-state/start")
    await clock.advance(timedelta(minutes=12))
    mark = alice.mark()
    assert (await post(port, "/heartbeat/borgbackup-job-state"))[1]["state"] == "OK"
    ok = await alice.wait_for(
        lambda e: mine(e) and "backup borgbackup-job-state is OK again (after" in e.body, after=mark
    )
    assert "the last run took 12 min" in ok.body
    assert TOKEN not in caplog.text

    # rsyncnet's metric turns into NaN (ERROR), then replication stays away: the stale story
    # says since when and the error before it.
    exporter.text = exposition({"rsyncnet": "NaN"})
    await scraped(prom, METRIC, lambda r: bool(r) and r[0]["value"][1] == "NaN")
    mark = alice.mark()
    await run_job()
    await alice.wait_for(
        lambda e: (
            mine(e) and "backup rsyncnet (zrepl_job=rsyncnet) is ERROR (was OK since" in e.body
        ),
        after=mark,
    )
    exporter.text = exposition({"rsyncnet": f"{last_sync.timestamp():.0f}"})
    await scraped(prom, METRIC, lambda r: bool(r) and r[0]["value"][1] != "NaN")
    await clock.advance(timedelta(hours=26))
    mark = alice.mark()
    await run_job()
    story = await alice.wait_for(
        lambda e: (
            mine(e) and "backup rsyncnet (zrepl_job=rsyncnet) is STALE (was ERROR since" in e.body
        ),
        after=mark,
    )
    assert (
        f"no successful replication for 1 d 2 h (last {last_sync:%Y-%m-%d %H:%M} UTC; limit 1h); "
        "last error (" in story.body
    ), story.body
    assert "the value NaN is no time" in story.body
    # borg's last success is 26 h old by now: beyond max_age + grace.
    await alice.wait_for(
        lambda e: mine(e) and "borgbackup-job-state is STALE (was OK since" in e.body, after=mark
    )

    # !backups: by kind, the worst group first, worst first within it.
    pools(data, clock.now(), degraded=True)
    table = await alice.ask(room, "!backups", bot.user_id, timeout=30)
    rows = [line.split()[:3] for line in table.body.splitlines()[1:5]]
    assert [r[:2] for r in rows] == [
        ["zpool", "pluto-pools"],
        ["zpool", "pluto-pools"],
        ["prometheus", "rsyncnet"],
        ["heartbeat", "borgbackup-job-state"],
    ], table.body
    assert rows[0][2].endswith(":tank") and rows[1][2].endswith(":zroot")

    # The heartbeat's state survives a restart.
    await bot.stop()
    again = make_bot(edit=edit, clock=clock)
    await again.start()
    details = await alice.ask(room, "!backups borgbackup-job-state", again.user_id, timeout=30)
    assert "heartbeat on /heartbeat/borgbackup-job-state" in details.body
    table = await alice.ask(room, "!backups", again.user_id, timeout=30)
    assert "borgbackup-job-state: no successful run for 1 d 2 h" in table.body, table.body
    assert "the last run took 12 min" in table.body
