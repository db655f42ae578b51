"""Backup freshness against a real PostgreSQL, a real SSH server and a real Synapse."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.clock import ManualClock
from bot.services.ssh import SshClient
from commands.backups import checks
from commands.backups.checks import BackupCheck
from devstack.client import RoomUser, SeenEvent
from devstack.postgres import LocalPostgres
from devstack.ssh import LocalSshServer
from devstack.synapse import free_port
from tests.backups_fixtures import (
    attempt,
    done_replication,
    fs_report,
    push_job,
    replication,
    sink_job,
    snap_job,
    zfs_lines,
    zrepl_status,
)
from tests.conftest import BotFactory, both_stores


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


# A fake `zfs` that answers `zfs list … DATASET…` as OpenZFS 2.2 does (man/man8/zfs-list.8,
# cmd/zfs/zfs_iter.c `zfs_for_each`): each named dataset's snapshot lines (written by the test to
# data/datasets/<name with / as %>; with -r also its children's), and for a dataset that does
# not exist `cannot open 'NAME': dataset does not exist` on stderr, the others still listed, and
# exit status 1. data/zfs.broken, when present, is printed to stderr with exit status 127 (a
# host without zfs on PATH).
FAKE_ZFS = r"""data="$1"; shift
if [ -f "$data/zfs.broken" ]; then cat "$data/zfs.broken" >&2; exit 127; fi
[ "$1" = list ] || { echo "fake zfs: only 'list'" >&2; exit 2; }
shift
recursive=no
while [ $# -gt 0 ]; do
  case "$1" in
    -r) recursive=yes; shift;;
    -t|-o|-s|-S|-d) shift 2;;
    -*) shift;;
    *) break;;
  esac
done
rc=0
for ds in "$@"; do
  key=$(printf %s "$ds" | tr / %)
  if [ ! -f "$data/datasets/$key" ]; then
    echo "cannot open '$ds': dataset does not exist" >&2; rc=1; continue
  fi
  cat "$data/datasets/$key"
  if [ $recursive = yes ]; then
    for child in "$data/datasets/$key%"*; do [ -f "$child" ] && cat "$child"; done
  fi
done
exit $rc
"""


def install_fakes(host: LocalSshServer, data: Path) -> None:
    """`zfs` (above) and `zrepl` (prints data/zrepl.out, exits with data/zrepl.rc) on the host."""
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    host.script("zfs-fake", FAKE_ZFS)
    host.script("zfs", f'exec zfs-fake "{data}" "$@"\n')
    host.script(
        "zrepl",
        f'cat "{data}/zrepl.out" 2>/dev/null\n'
        f'exit "$(cat "{data}/zrepl.rc" 2>/dev/null || echo 0)"\n',
    )


def snapshots(data: Path, dataset: str, ages: list[timedelta], now: datetime | None = None) -> None:
    """Give a dataset of the fake zfs these snapshots, `ages` before `now` (default: the
    machine's clock); an empty list: it has none."""
    path = data / "datasets" / dataset.replace("/", "%")
    path.write_text(zfs_lines(dataset, ages, now or datetime.now(UTC)))


def zrepl_out(data: Path, jobs: dict[str, Any]) -> None:
    """What the fake `zrepl status --mode raw` prints next."""
    (data / "zrepl.out").write_text(zrepl_status(jobs))


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


def sent_by(user_id: str) -> Callable[[SeenEvent], bool]:
    """Whether an event was sent by `user_id` (the bot under test)."""
    return lambda e: e.sender == user_id


async def run_job(asker: RoomUser, watcher: RoomUser, room: str, bot: str) -> SeenEvent:
    """`!jobs run backups`; returns once `watcher` has seen the answer too.

    The answer is a barrier: the run's announcements were queued before it, and the outbox
    delivers a room's messages in order.
    """
    reply = await asker.ask(room, "!jobs run backups", bot, timeout=30)
    await watcher.wait_for(lambda e: e.source.get("event_id") == reply.source["event_id"])
    return reply


@both_stores
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
    snapshots(data, "zroot/pg", [timedelta(minutes=10), timedelta(hours=1)])
    snapshots(data, "zroot/root", [timedelta(days=3)])
    now = datetime.now(UTC)
    zrepl_out(data, {"rsyncnet": push_job(done_replication(timedelta(minutes=12), now), now)})
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
    mine = sent_by(bot.user_id)

    mark = alice.mark()
    table = await alice.ask(room, "!backups", bot.user_id, timeout=30)
    lines = {line.split()[1]: line for line in table.body.splitlines()[1:7]}
    assert "OK" in lines["pg-zfs"] and "STALE" in lines["root-zfs"]
    assert "OK" in lines["pg-dump"] and "OK" in lines["zrepl-rsyncnet"]
    assert "OK" in lines["pg-wal"] and "ERROR" in lines["offsite"]
    assert "3 d" in lines["root-zfs"] and "10 min" in lines["pg-zfs"]
    assert "cannot reach root@127.0.0.1" in table.body
    stale = await alice.wait_for(
        lambda e: (
            mine(e)
            and e.body.startswith("@alice:localhost ⚠️ backup root-zfs (zroot/root) is STALE")
        ),
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
    ran = await run_job(bob, alice, room, bot.user_id)
    assert "1 OK" not in ran.body and "ERROR" in ran.body
    broken = await alice.wait_for(
        lambda e: mine(e) and "backup pg-wal is ERROR" in e.body, after=mark
    )
    assert "archive_command failing since" in broken.body and "last failed WAL" in broken.body
    # The job's answer was queued after its announcements (the outbox keeps a room's order).
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
    assert "no backup check named 'nosuch'; known: pg-zfs, root-zfs" in unknown.body
    assert "usage: `!backups [name]`" in unknown.body

    # A restart does not announce again what the room already knows.
    await bot.stop()
    again = make_bot(edit=_backups(config))
    await again.start()
    mark = alice.mark()
    await run_job(bob, alice, room, again.user_id)
    assert not any(mine(e) and "backup " in e.body and " is " in e.body for e in alice.seen[mark:])


async def test_checks_handle_empty_garbage_failures_and_bad_keys(
    ssh_host: LocalSshServer, tmp_path: Path
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    ssh = SshClient(ssh_host.known_hosts, [ssh_host.client_key])
    # The checks judge ages at the moment they are given; the fixtures are written against it.
    now = datetime.now(UTC)

    async def run_check(check: BackupCheck, ssh: SshClient, timeout_s: float) -> list[Any]:
        return await checks.run_check(check, ssh, timeout_s, now)

    zfs = BackupCheck(
        name="z",
        kind="zfs_snapshots",
        host=ssh_host.target,
        datasets=["zroot/pg"],
        max_age=timedelta(hours=1),
    )
    zrepl = BackupCheck(name="r", kind="zrepl", host=ssh_host.target, max_age=timedelta(hours=1))

    snapshots(data, "zroot/pg", [], now)
    [result] = await run_check(zfs, ssh, 10)
    assert result.state == "STALE" and "no snapshots of zroot/pg" in result.detail

    (data / "datasets" / "zroot%pg").unlink()
    [result] = await run_check(zfs, ssh, 10)
    assert result.state == "ERROR" and result.item == "zroot/pg"
    assert result.detail == "cannot list snapshots of zroot/pg: dataset does not exist"

    (data / "datasets" / "zroot%pg").write_text("total garbage here\n")
    [result] = await run_check(zfs, ssh, 10)
    assert result.state == "ERROR" and "unexpected `zfs list` output" in result.detail

    (data / "zfs.broken").write_text("sh: 1: zfs: not found\n")
    [result] = await run_check(zfs, ssh, 10)
    assert result.state == "ERROR" and result.item is None
    assert result.detail == "`zfs` exited 127: sh: 1: zfs: not found"

    start, end = now - timedelta(minutes=5), now - timedelta(minutes=3)
    failed = fs_report("zroot/pg", end, "step-error", step_error="ssh: connection refused")
    rep = replication([attempt("filesystem-error", start, end, [failed])], start)
    zrepl_out(data, {"rsyncnet": push_job(rep, now)})
    [result] = await run_check(zrepl, ssh, 10)
    assert result.state == "ERROR"
    assert "last replication failed: zroot/pg: ssh: connection refused" in result.detail
    zrepl_out(data, {"rsyncnet": push_job(done_replication(timedelta(days=20), now), now)})
    [result] = await run_check(zrepl, ssh, 10)
    assert result.state == "STALE" and "20 d" in result.detail
    (data / "zrepl.out").write_text("zrepl: not a tty")
    [result] = await run_check(zrepl, ssh, 10)
    assert result.state == "ERROR" and "did not print JSON" in result.detail
    (data / "zrepl.out").write_text("error: connect to daemon socket: no such file\n")
    (data / "zrepl.rc").write_text("1")
    [result] = await run_check(zrepl, ssh, 10)
    assert result.state == "ERROR" and "`zrepl` exited 1: error: connect" in result.detail

    wrong = tmp_path / "known_hosts_wrong"
    other = LocalSshServer(tmp_path / "other")
    await other.start()
    wrong.write_text(
        ssh_host.known_hosts.read_text().split(" ", 1)[0]
        + " "
        + other.known_hosts.read_text().split(" ", 1)[1]
    )
    await other.stop()
    [result] = await run_check(zfs, SshClient(wrong, [ssh_host.client_key]), 10)
    assert result.state == "ERROR" and "host key" in result.detail

    ssh_host.script("zfs", "sleep 30\n")
    [result] = await run_check(zfs, ssh, 1)
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
    start = datetime(2026, 3, 10, 10, 5, tzinfo=UTC)
    clock = ManualClock(start)
    snapshots(data, "zroot/pg", [timedelta(days=2)], start)
    config = {
        "remind_every": "1h",
        # No scheduled run while the test moves the clock: only `!jobs run` runs the checks.
        "cron": "0 3 1 1 *",
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
    bot = make_bot(edit=_backups(config), clock=clock)
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    mine = sent_by(bot.user_id)
    mark = alice.mark()
    await run_job(bob, alice, room, bot.user_id)
    await alice.wait_for(
        lambda e: mine(e) and "backup pg (zroot/pg) is STALE" in e.body, after=mark
    )
    mark = alice.mark()
    await clock.advance(timedelta(minutes=50))  # within remind_every
    await run_job(bob, alice, room, bot.user_id)
    assert not any("backup pg" in e.body for e in alice.seen[mark:] if mine(e))
    await clock.advance(timedelta(minutes=20))  # past remind_every
    await run_job(bob, alice, room, bot.user_id)
    reminder = await alice.wait_for(
        lambda e: mine(e) and "backup pg (zroot/pg) is still STALE (1 h 10 min, since" in e.body,
        after=mark,
    )
    # The age is the bot's clock's: two days and the seventy minutes it was moved on.
    assert "newest snapshot of zroot/pg is 2 d 1 h old" in reminder.body, reminder.body
    details = await alice.ask(room, "!backups pg", bot.user_id)
    runs = [line for line in details.body.splitlines() if " UTC " in line]
    assert [line.split("  ")[0] for line in runs] == [
        "2026-03-10 11:15 UTC",
        "2026-03-10 10:55 UTC",
        "2026-03-10 10:05 UTC",
    ], details.body


def _ssh_config(*hosts: LocalSshServer, base: Path) -> dict[str, Any]:
    """One `ssh:` block that trusts every given host and holds each one's client key."""
    known = base / "known_hosts_all"
    known.write_text("".join(h.known_hosts.read_text() for h in hosts))
    return {"known_hosts": str(known), "client_keys": [str(h.client_key) for h in hosts]}


MODIFIED = "cannot receive incremental stream: destination has been modified"


async def test_one_fault_never_hides_another(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    ssh_host: LocalSshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    # tank is 9 days stale and tank/media has no snapshots: two results, neither hides the other.
    snapshots(data, "tank", [timedelta(days=9), timedelta(days=10)])
    snapshots(data, "tank/media", [])
    now = datetime.now(UTC)
    first = now - timedelta(minutes=25)
    retried = replication(
        [
            attempt(
                "filesystem-error",
                first,
                first + timedelta(minutes=1),
                [fs_report("zroot/pg", first, "step-error", step_error="connection reset by peer")],
            ),
            attempt(
                "done",
                first + timedelta(minutes=2),
                now - timedelta(minutes=10),
                [fs_report("zroot/pg", now - timedelta(minutes=10))],
            ),
        ],
        first,
    )
    broken_at = now - timedelta(minutes=40)
    broken = replication(
        [
            attempt(
                "filesystem-error",
                broken_at,
                broken_at + timedelta(minutes=2),
                [
                    fs_report("zroot/pg", broken_at),
                    fs_report(
                        "zroot/home",
                        broken_at,
                        "step-error",
                        step_error=MODIFIED,
                    ),
                ],
            )
        ],
        broken_at,
    )
    zrepl_out(
        data,
        {
            "rsyncnet": push_job(retried, now),
            "offsite": push_job(broken, now),
            "nas": push_job(None, now),
            "backup-sink": sink_job(),
            "tmp-snap": snap_job(now),
        },
    )
    # A second host whose zrepl daemon has no jobs at all.
    empty = LocalSshServer(tmp_path / "empty")
    await empty.start()
    empty.script("zrepl", "echo '{\"Jobs\": {}}'\n")

    async def boom(*args: object) -> None:
        raise ZeroDivisionError("division by zero")

    # Any exception at all in one check costs only that check its result.
    monkeypatch.setattr(checks, "check_file_age", boom)
    config = {
        "ssh": _ssh_config(ssh_host, empty, base=tmp_path),
        "checks": [
            {
                "name": "tank-zfs",
                "kind": "zfs_snapshots",
                "host": ssh_host.target,
                "datasets": ["tank", "tank/media"],
                "max_age": "1d",
            },
            {"name": "pluto-zrepl", "kind": "zrepl", "host": ssh_host.target, "max_age": "1h"},
            {"name": "empty-zrepl", "kind": "zrepl", "host": empty.target, "max_age": "1h"},
            {
                "name": "dumps",
                "kind": "file_age",
                "host": ssh_host.target,
                "glob": f"{tmp_path}/*.sql.gz",
                "max_age": "1d",
            },
        ],
    }
    try:
        bot = make_bot(edit=_backups(config))
        await bot.start()
        alice, bob = people["alice"], people["bob"]
        mine = sent_by(bot.user_id)
        mark = alice.mark()
        table = await alice.ask(room, "!backups", bot.user_id, timeout=30)
        rows = [line.split() for line in table.body.splitlines()[1:8]]
        # By kind, the worst group first (ties: config order), worst first within a group.
        assert [(r[1], r[2].rsplit(":", 1)[1], r[-1]) for r in rows] == [
            ("pluto-zrepl", "offsite", "ERROR"),
            ("empty-zrepl", empty.target.rsplit(":", 1)[1], "ERROR"),
            ("pluto-zrepl", "nas", "STALE"),
            ("pluto-zrepl", "rsyncnet", "OK"),
            ("dumps", f"{tmp_path}/*.sql.gz", "ERROR"),
            ("tank-zfs", "tank", "STALE"),
            ("tank-zfs", "tank/media", "STALE"),
        ]
        notes = table.body.split("\n", 8)[8]
        assert "tank-zfs (tank): newest snapshot of tank is 9 d old (from " in notes
        assert "tank-zfs (tank/media): no snapshots of tank/media" in notes
        assert "pluto-zrepl (nas): job nas: no replication since the zrepl daemon started" in notes
        assert (
            "pluto-zrepl (offsite): job offsite: last replication failed: zroot/home: "
            "cannot receive incremental stream: destination has been modified" in notes
        )
        assert "rsyncnet" not in notes and "backup-sink" not in table.body
        assert "empty-zrepl: zrepl reports no jobs" in notes
        assert "dumps: the check failed unexpectedly (ZeroDivisionError, ref " in notes

        expected = [
            "⚠️ backup tank-zfs (tank) is STALE: newest snapshot of tank is 9 d old",
            "⚠️ backup tank-zfs (tank/media) is STALE: no snapshots of tank/media",
            "⚠️ backup pluto-zrepl (nas) is STALE: job nas: no replication since",
            "❌ backup pluto-zrepl (offsite) is ERROR: job offsite: last replication failed",
            "❌ backup empty-zrepl is ERROR: zrepl reports no jobs",
            "❌ backup dumps is ERROR: the check failed unexpectedly (ZeroDivisionError",
        ]
        for head in expected:

            def told(e: SeenEvent, h: str = head) -> bool:
                return mine(e) and e.body.startswith(h)

            await alice.wait_for(told, after=mark)

        # The hourly job reports on every check too.
        ran = await run_job(bob, alice, room, bot.user_id)
        assert ran.body == "job backups: ok: 1 OK, 3 STALE, 3 ERROR", ran.body

        # tank/media gets its snapshots: only it recovers; tank stays STALE and is not repeated.
        snapshots(data, "tank/media", [timedelta(hours=2)])
        mark = alice.mark()
        await run_job(bob, alice, room, bot.user_id)
        said = [e.body for e in alice.seen[mark:] if mine(e) and "backup " in e.body]
        assert len(said) == 1 and said[0].startswith(
            "✅ backup tank-zfs (tank/media) is OK again (after "
        ), said
        assert said[0].endswith(
            f" STALE): newest snapshot of tank/media 2 h old [zfs_snapshots "
            f"{ssh_host.target}:tank/media]"
        ), said

        details = await alice.ask(room, "!backups tank-zfs", bot.user_id)
        assert details.body.count("no snapshots of tank/media") == 2
        assert details.body.count("newest snapshot of tank is 9 d old") == 3
    finally:
        await empty.stop()


async def test_a_check_that_failed_as_a_whole_says_when_it_answers_again(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    ssh_host: LocalSshServer,
    tmp_path: Path,
) -> None:
    data = tmp_path / "fake"
    install_fakes(ssh_host, data)
    snapshots(data, "zroot/pg", [timedelta(minutes=30)])
    snapshots(data, "zroot/root", [timedelta(days=2)])
    (data / "zfs.broken").write_text("sh: 1: zfs: not found\n")
    config = {
        "ssh": _ssh_config(ssh_host, base=tmp_path),
        "checks": [
            {
                "name": "offsite",
                "kind": "zfs_snapshots",
                "host": ssh_host.target,
                "datasets": ["zroot/pg", "zroot/root"],
                "max_age": "1h",
            }
        ],
    }
    bot = make_bot(edit=_backups(config))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    mine = sent_by(bot.user_id)
    mark = alice.mark()
    await run_job(bob, alice, room, bot.user_id)
    await alice.wait_for(
        lambda e: mine(e) and "backup offsite is ERROR: `zfs` exited 127" in e.body, after=mark
    )
    (data / "zfs.broken").unlink()
    mark = alice.mark()
    await run_job(bob, alice, room, bot.user_id)
    said = [e.body for e in alice.seen[mark:] if mine(e) and "backup " in e.body]
    assert len(said) == 2, said
    # The stale dataset's story carries the error that hid it until now.
    assert said[0].startswith(
        "⚠️ backup offsite (zroot/root) is STALE: newest snapshot of zroot/root is 2 d old (from "
    ), said
    assert "; limit 1h); last error (" in said[0]
    assert "): `zfs` exited 127: sh: 1: zfs: not found [zfs_snapshots " in said[0]
    assert said[1].split(" [")[0] == (
        "✅ backup offsite answers again: it was ERROR as a whole; each of its items is judged "
        "on its own: 1 OK, 1 STALE"
    ), said
