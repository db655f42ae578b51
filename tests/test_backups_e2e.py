"""Backup freshness against a real PostgreSQL, a real SSH server and a real Synapse."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.services.ssh import SshClient
from commands.backups.checks import BackupCheck, run_check
from devstack.client import RoomUser
from devstack.postgres import LocalPostgres
from devstack.ssh import LocalSshServer
from devstack.synapse import free_port
from tests.conftest import BotFactory


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    # Under /tmp with open permissions: the cluster runs as the unprivileged postgres user.
    base = Path(tempfile.mkdtemp(prefix="infrabot-pg-", dir="/tmp"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "pg")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
async def ssh_host(tmp_path: Path) -> AsyncIterator[LocalSshServer]:
    server = LocalSshServer(tmp_path / "ssh")
    await server.start()
    yield server
    await server.stop()


def zfs_lines(dataset: str, ages: list[timedelta], used: int = 5 * 2**20) -> str:
    """`zfs list -Hp -t snapshot -o name,creation,used` lines as zrepl names them."""
    out = []
    for age in sorted(ages, reverse=True):
        moment = datetime.now(UTC) - age
        out.append(
            f"{dataset}@zrepl_snap_{moment:%Y%m%d_%H%M%S_000}\t{int(moment.timestamp())}\t{used}"
        )
    return "\n".join(out) + "\n"


def zrepl_status(job: str, finished_ago: timedelta, error: str | None = None) -> str:
    finish = datetime.now(UTC) - finished_ago
    attempt: dict[str, Any] = {
        "State": "done" if error is None else "fsrepl-failed",
        "StartAt": (finish - timedelta(seconds=40)).isoformat().replace("+00:00", "Z"),
        "FinishAt": finish.isoformat().replace("+00:00", "Z"),
        "PlanError": None,
        "Filesystems": [
            {
                "Info": {"Name": "zroot/pg"},
                "State": "done" if error is None else "step-failed",
                "PlanError": None,
                "StepError": error,
            }
        ],
    }
    return json.dumps(
        {
            "Jobs": {
                job: {
                    "name": job,
                    "type": "push",
                    "JobSpecific": {"Replication": {"Attempts": [attempt]}},
                }
            }
        }
    )


def install_fakes(host: LocalSshServer, data: Path) -> None:
    """`zfs` and `zrepl` print what the test wrote to data/ (and exit with data/*.rc)."""
    data.mkdir(exist_ok=True)
    for tool in ("zfs", "zrepl"):
        host.script(
            tool,
            f'cat "{data}/{tool}.out" 2>/dev/null\n'
            f'exit "$(cat "{data}/{tool}.rc" 2>/dev/null || echo 0)"\n',
        )


def _backups(config: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["backups"] = config

    return edit


def _archive_now(pg: LocalPostgres) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("SELECT pg_switch_wal()")


def _archiver(pg: LocalPostgres) -> tuple[int, int]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def _until(pred: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_backups_table_state_changes_and_no_repeat_after_restart(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    ssh_host: LocalSshServer,
    postgres: LocalPostgres,
    tmp_path: Path,
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    (data / "zfs.out").write_text(
        zfs_lines("zroot/pg", [timedelta(minutes=10), timedelta(hours=1)])
        + zfs_lines("zroot/root", [timedelta(days=3)])
    )
    (data / "zrepl.out").write_text(zrepl_status("rsyncnet", timedelta(minutes=12)))
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "haumea.sql.gz").write_bytes(b"x" * 1000)
    old = dumps / "old.sql.gz"
    old.write_bytes(b"y")
    os.utime(old, (time.time() - 5 * 86400, time.time() - 5 * 86400))
    postgres.set_archiving(True)
    _archive_now(postgres)
    await _until(lambda: _archiver(postgres)[0] >= 1)

    closed = free_port()
    config = {
        "remind_every": "24h",
        "timeout_s": 10,
        "ssh": {
            "known_hosts": str(ssh_host.known_hosts),
            "client_keys": [str(ssh_host.client_key)],
        },
        "mentions": [{"severity": ["critical"], "users": ["@alice:localhost"]}],
        "checks": [
            {
                "name": "pg-zfs",
                "kind": "zfs_snapshots",
                "host": ssh_host.target,
                "datasets": ["zroot/pg"],
                "max_age": "2h",
                "with_used": True,
            },
            {
                "name": "root-zfs",
                "kind": "zfs_snapshots",
                "host": ssh_host.target,
                "datasets": ["zroot/root"],
                "max_age": "2h",
                "severity": "critical",
            },
            {
                "name": "pg-dump",
                "kind": "file_age",
                "host": ssh_host.target,
                "glob": f"{dumps}/*.sql.gz",
                "max_age": "26h",
            },
            {
                "name": "zrepl-rsyncnet",
                "kind": "zrepl",
                "host": ssh_host.target,
                "jobs": ["rsyncnet"],
                "max_age": "1h",
            },
            {"name": "pg-wal", "kind": "postgres_archiving", "dsn": postgres.dsn, "max_age": "1h"},
            {
                "name": "offsite",
                "kind": "zfs_snapshots",
                "host": f"root@127.0.0.1:{closed}",
                "datasets": ["zroot/pg"],
                "max_age": "2h",
            },
        ],
    }
    bot = make_bot(edit=_backups(config))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    mine = lambda e: e.sender == bot.user_id  # noqa: E731

    mark = alice.mark()
    table = await alice.ask(room, "!backups", bot.user_id, timeout=30)
    lines = {line.split()[0]: line for line in table.body.splitlines()[1:7]}
    assert "OK" in lines["pg-zfs"] and "STALE" in lines["root-zfs"]
    assert "OK" in lines["pg-dump"] and "OK" in lines["zrepl-rsyncnet"]
    assert "OK" in lines["pg-wal"] and "ERROR" in lines["offsite"]
    assert "3 d" in lines["root-zfs"] and "10 min" in lines["pg-zfs"]
    assert "cannot reach root@127.0.0.1" in table.body
    stale = await alice.wait_for(
        lambda e: mine(e) and e.body.startswith("@alice:localhost ⚠️ backup root-zfs is STALE"),
        after=mark,
    )
    assert "newest snapshot of zroot/root is 3 d" in stale.body
    assert stale.content["m.mentions"] == {"user_ids": ["@alice:localhost"]}
    await alice.wait_for(lambda e: mine(e) and "backup offsite is ERROR" in e.body, after=mark)
    assert not any(mine(e) and "pg-zfs is" in e.body for e in alice.seen[mark:])

    # WAL archiving breaks for real: the archive_command starts failing.
    postgres.set_archiving(False)
    failed_before = _archiver(postgres)[1]
    _archive_now(postgres)
    await _until(lambda: _archiver(postgres)[1] > failed_before)
    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)
    assert "1 OK" not in ran.body and "ERROR" in ran.body
    broken = await alice.wait_for(
        lambda e: mine(e) and "backup pg-wal is ERROR" in e.body, after=mark
    )
    assert "archive_command failing since" in broken.body and "last failed WAL" in broken.body
    await asyncio.sleep(0.5)
    assert not any(mine(e) and "root-zfs" in e.body for e in alice.seen[mark:]), "no hourly repeat"

    # Mended: the next run says so, once.
    postgres.set_archiving(True)
    archived_before = _archiver(postgres)[0]
    _archive_now(postgres)
    await _until(lambda: _archiver(postgres)[0] > archived_before, timeout=30)
    mark = alice.mark()
    await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)
    await alice.wait_for(lambda e: mine(e) and "backup pg-wal is OK again" in e.body, after=mark)

    details = await alice.ask(room, "!backups pg-wal", bot.user_id)
    assert "postgres_archiving" in details.body and details.body.count("UTC") >= 3
    unknown = await alice.ask(room, "!backups nosuch", bot.user_id)
    assert "No backup check named 'nosuch'" in unknown.body

    # A restart does not announce again what the room already knows.
    await bot.stop()
    again = make_bot(edit=_backups(config))
    await again.start()
    mark = alice.mark()
    await bob.ask(room, "!jobs run backups", again.user_id, timeout=30)
    await asyncio.sleep(1)
    assert not any(mine(e) and "backup " in e.body and " is " in e.body for e in alice.seen[mark:])


async def test_checks_handle_empty_garbage_failures_and_bad_keys(
    ssh_host: LocalSshServer, tmp_path: Path
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    ssh = SshClient(ssh_host.known_hosts, [ssh_host.client_key])
    zfs = BackupCheck(
        name="z", kind="zfs_snapshots", host=ssh_host.target, datasets=["zroot/pg"], max_age="1h"
    )
    zrepl = BackupCheck(name="r", kind="zrepl", host=ssh_host.target, max_age="1h")

    (data / "zfs.out").write_text("")
    result = await run_check(zfs, ssh, 10)
    assert result.state == "STALE" and "no snapshots of zroot/pg" in result.detail

    (data / "zfs.out").write_text("cannot open 'zroot/pg': dataset does not exist\n")
    (data / "zfs.rc").write_text("1")
    result = await run_check(zfs, ssh, 10)
    assert result.state == "ERROR" and "dataset does not exist" in result.detail

    (data / "zfs.rc").write_text("0")
    (data / "zfs.out").write_text("total garbage here\n")
    result = await run_check(zfs, ssh, 10)
    assert result.state == "ERROR" and "unexpected `zfs list` output" in result.detail

    (data / "zrepl.out").write_text(
        zrepl_status("rsyncnet", timedelta(minutes=3), error="ssh: connection refused")
    )
    result = await run_check(zrepl, ssh, 10)
    assert (
        result.state == "ERROR"
        and "last replication failed: ssh: connection refused" in result.detail
    )
    (data / "zrepl.out").write_text(zrepl_status("rsyncnet", timedelta(days=20)))
    result = await run_check(zrepl, ssh, 10)
    assert result.state == "STALE" and "20 d" in result.detail
    (data / "zrepl.out").write_text("zrepl: not a tty")
    result = await run_check(zrepl, ssh, 10)
    assert result.state == "ERROR" and "expected JSON" in result.detail

    wrong = tmp_path / "known_hosts_wrong"
    other = LocalSshServer(tmp_path / "other")
    await other.start()
    wrong.write_text(
        ssh_host.known_hosts.read_text().split(" ", 1)[0]
        + " "
        + other.known_hosts.read_text().split(" ", 1)[1]
    )
    await other.stop()
    result = await run_check(zfs, SshClient(wrong, [ssh_host.client_key]), 10)
    assert result.state == "ERROR" and "host key" in result.detail

    ssh_host.script("zfs", "sleep 30\n")
    result = await run_check(zfs, ssh, 1)
    assert result.state == "ERROR" and "timed out" in result.detail


async def test_a_stale_backup_is_reminded_not_repeated(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    ssh_host: LocalSshServer,
    tmp_path: Path,
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    (data / "zfs.out").write_text(zfs_lines("zroot/pg", [timedelta(days=2)]))
    config = {
        "remind_every": "3s",
        "ssh": {
            "known_hosts": str(ssh_host.known_hosts),
            "client_keys": [str(ssh_host.client_key)],
        },
        "checks": [
            {
                "name": "pg",
                "kind": "zfs_snapshots",
                "host": ssh_host.target,
                "datasets": ["zroot/pg"],
                "max_age": "1h",
            }
        ],
    }
    bot = make_bot(edit=_backups(config))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    mark = alice.mark()
    await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "backup pg is STALE" in e.body, after=mark
    )
    mark = alice.mark()
    await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)  # within remind_every
    await asyncio.sleep(3)
    assert not any("backup pg is" in e.body for e in alice.seen[mark:] if e.sender == bot.user_id)
    await bob.ask(room, "!jobs run backups", bot.user_id, timeout=30)  # past remind_every
    reminder = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "backup pg is still STALE" in e.body, after=mark
    )
    assert "newest snapshot of zroot/pg is 2 d" in reminder.body
