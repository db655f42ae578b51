"""The backup checks: each asks a real system how old the newest backup is.

A check returns OK, STALE (newest older than max age, or none at all) or ERROR (it could not
tell, or the backup machinery reports failure), always with a reason a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from bot import durations
from bot.config import Section
from bot.durations import Duration
from bot.errors import RemoteError
from bot.messages import human_duration
from bot.services.ssh import SshClient, parse_target

State = Literal["OK", "STALE", "ERROR"]
_SAFE_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]+=,@%-]+$")


class BackupCheck(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["zfs_snapshots", "postgres_archiving", "file_age", "zrepl"]
    max_age: Duration
    severity: str = "warning"
    # SSH target (user@host[:port]) for zfs_snapshots, file_age and zrepl.
    host: str | None = None
    # zfs_snapshots: datasets to watch, or every dataset under a prefix.
    datasets: list[str] = Field(default_factory=list)
    prefix: str | None = None
    with_used: bool = False
    # postgres_archiving: a libpq DSN; the password may come from a file.
    dsn: str | None = None
    password: SecretStr | None = None
    # file_age: a glob such as /var/backup/postgresql/*.sql.gz
    glob: str | None = None
    # zrepl: the jobs to look at (default: all).
    jobs: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> BackupCheck:
        needs_host = self.kind in ("zfs_snapshots", "file_age", "zrepl")
        if needs_host:
            if not self.host:
                raise ValueError(f"a {self.kind} check needs host (user@host[:port])")
            parse_target(self.host)
        if self.kind == "zfs_snapshots" and not (self.datasets or self.prefix):
            raise ValueError("a zfs_snapshots check needs datasets or prefix")
        if self.kind == "postgres_archiving" and not self.dsn:
            raise ValueError("a postgres_archiving check needs dsn")
        if self.kind == "file_age":
            if not self.glob or not self.glob.startswith("/"):
                raise ValueError("a file_age check needs an absolute glob")
            if not _SAFE_PATTERN.match(Path(self.glob).name) or "*" in str(Path(self.glob).parent):
                raise ValueError("glob: only the file name may hold wildcards (* ? [ ])")
        return self

    @property
    def max_age_td(self) -> timedelta:
        """max_age as a timedelta."""
        return durations.parse_duration(self.max_age)

    @property
    def target(self) -> str:
        """What the check looks at, for the table."""
        if self.kind == "postgres_archiving":
            return _dsn_host(self.dsn or "")
        where = self.host or ""
        what = ", ".join(self.datasets) or self.prefix or self.glob or ", ".join(self.jobs) or ""
        return f"{where}:{what}" if what else where


def _dsn_host(dsn: str) -> str:
    host = re.search(r"host=(\S+)", dsn)
    port = re.search(r"port=(\S+)", dsn)
    db = re.search(r"dbname=(\S+)", dsn)
    return f"{host[1] if host else 'localhost'}:{port[1] if port else '5432'}/{db[1] if db else ''}"


@dataclass
class CheckResult:
    """The outcome of one check run."""

    name: str
    state: State
    detail: str
    newest: datetime | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def age(self, now: datetime | None = None) -> float | None:
        """Seconds since the newest backup, if known."""
        if self.newest is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.newest).total_seconds())


def _by_age(
    check: BackupCheck, newest: datetime | None, what: str, facts: dict[str, Any]
) -> CheckResult:
    if newest is None:
        return CheckResult(check.name, "STALE", f"no {what} found", None, facts)
    age = (datetime.now(UTC) - newest).total_seconds()
    limit = check.max_age_td.total_seconds()
    if age > limit:
        detail = f"newest {what} is {human_duration(age)} old (limit {check.max_age})"
        return CheckResult(check.name, "STALE", detail, newest, facts)
    return CheckResult(check.name, "OK", f"newest {what} {human_duration(age)} old", newest, facts)


async def _ssh(ssh: SshClient, check: BackupCheck, command: str, timeout_s: float) -> str:
    assert check.host is not None
    result = await ssh.run(parse_target(check.host), command, timeout_s)
    if result.exit_status != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"`{command.split()[0]}` exited {result.exit_status}: {tail[0][:200]}")
    return result.stdout


async def check_zfs(check: BackupCheck, ssh: SshClient, timeout_s: float) -> CheckResult:
    """Newest snapshot of each dataset from `zfs list -Hp -t snapshot -o name,creation,used`."""
    roots = check.datasets or [check.prefix or ""]
    command = "zfs list -Hp -t snapshot -o name,creation,used -s creation -r " + " ".join(
        shlex.quote(r.rstrip("/")) for r in roots
    )
    out = await _ssh(ssh, check, command, timeout_s)
    newest: dict[str, tuple[datetime, int]] = {}
    for n, line in enumerate(out.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or "@" not in parts[0] or not parts[1].isdigit():
            raise RemoteError(f"unexpected `zfs list` output on line {n}: {line[:120]!r}")
        dataset = parts[0].split("@", 1)[0]
        created = datetime.fromtimestamp(int(parts[1]), UTC)
        used = int(parts[2]) if parts[2].isdigit() else 0
        if dataset not in newest or created > newest[dataset][0]:
            newest[dataset] = (created, used)
    wanted = check.datasets or sorted(newest)
    missing = [d for d in wanted if d not in newest]
    facts = {
        "datasets": {
            d: {"newest": newest[d][0].isoformat(), "used": newest[d][1]} for d in sorted(newest)
        }
    }
    if missing:
        return CheckResult(
            check.name, "STALE", f"no snapshots of {', '.join(missing)}", None, facts
        )
    if not wanted:
        return CheckResult(check.name, "STALE", f"no snapshots under {check.prefix}", None, facts)
    oldest = min(wanted, key=lambda d: newest[d][0])
    result = _by_age(check, newest[oldest][0], f"snapshot of {oldest}", facts)
    if check.with_used:
        result.detail += f"; it holds {newest[oldest][1] / 2**20:.1f} MiB"
    return result


async def check_file_age(check: BackupCheck, ssh: SshClient, timeout_s: float) -> CheckResult:
    """Newest file matching the glob, via `stat` on the host."""
    assert check.glob is not None
    path = Path(check.glob)
    # The directory is quoted; the file-name pattern is validated to be glob characters only.
    command = (
        f"cd -- {shlex.quote(str(path.parent))} && "
        f'for f in {path.name}; do [ -e "$f" ] && stat -c \'%Y %s %n\' -- "$f"; done; true'
    )
    out = await _ssh(ssh, check, command, timeout_s)
    best: tuple[datetime, int, str] | None = None
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise RemoteError(f"unexpected `stat` output: {line[:120]!r}")
        found = (datetime.fromtimestamp(int(parts[0]), UTC), int(parts[1]), parts[2])
        if best is None or found[0] > best[0]:
            best = found
    facts = {"file": best[2], "size": best[1]} if best else {}
    result = _by_age(check, best[0] if best else None, f"file matching {path.name}", facts)
    if best is not None:
        result.detail += f" ({best[2]}, {best[1] / 2**20:.1f} MiB)"
    return result


def _zrepl_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00"))
    except ValueError:
        return None


async def check_zrepl(check: BackupCheck, ssh: SshClient, timeout_s: float) -> CheckResult:
    """Each job's last replication attempt from `zrepl status --mode raw`."""
    out = await _ssh(ssh, check, "zrepl status --mode raw", timeout_s)
    try:
        jobs = json.loads(out)["Jobs"]
        assert isinstance(jobs, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise RemoteError("`zrepl status --mode raw` did not print the expected JSON") from None
    names = check.jobs or sorted(j for j in jobs if not j.startswith("_"))
    worst: CheckResult | None = None
    facts: dict[str, Any] = {}
    for name in names:
        job = jobs.get(name)
        if not isinstance(job, dict):
            return CheckResult(check.name, "ERROR", f"zrepl has no job {name!r}", None, facts)
        replication = (job.get("JobSpecific") or {}).get("Replication") or {}
        attempts = replication.get("Attempts") or []
        if not attempts:
            result = CheckResult(
                check.name, "STALE", f"job {name}: no replication yet", None, facts
            )
        else:
            last = attempts[-1]
            errors = [last.get("PlanError")] + [
                fs.get("PlanError") or fs.get("StepError") for fs in last.get("Filesystems") or []
            ]
            errors = [str(e.get("Err", e) if isinstance(e, dict) else e) for e in errors if e]
            finished = _zrepl_time(last.get("FinishAt"))
            facts[name] = {"state": last.get("State"), "finished": str(last.get("FinishAt"))}
            if errors or last.get("State") not in ("done", "planning", "executing"):
                reason = errors[0] if errors else f"state {last.get('State')}"
                result = CheckResult(
                    check.name,
                    "ERROR",
                    f"job {name}: last replication failed: {reason[:200]}",
                    finished,
                    facts,
                )
            else:
                result = _by_age(check, finished, f"replication of job {name}", facts)
        if (
            worst is None
            or _rank(result.state) > _rank(worst.state)
            or (result.state == worst.state and (result.age() or 0) > (worst.age() or 0))
        ):
            worst = result
    assert worst is not None
    worst.facts = facts
    return worst


async def check_postgres(check: BackupCheck, timeout_s: float) -> CheckResult:
    """WAL archiving from pg_stat_archiver (and the database size)."""
    import psycopg  # on first use: only bots with a postgres check need libpq loaded

    assert check.dsn is not None
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(timeout_s))}
    if check.password is not None:
        kwargs["password"] = check.password.get_secret_value()
    try:
        async with await psycopg.AsyncConnection.connect(
            check.dsn, autocommit=True, **kwargs
        ) as conn:
            cur = await conn.execute(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                "last_failed_wal, last_failed_time, pg_database_size(current_database()) "
                "FROM pg_stat_archiver"
            )
            row = await cur.fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoteError(f"cannot query PostgreSQL at {_dsn_host(check.dsn)}: {first}") from None
    assert row is not None
    archived, last_wal, last_time, failed, failed_wal, failed_time, size = row
    facts = {
        "archived_count": archived,
        "last_archived_wal": last_wal,
        "failed_count": failed,
        "last_failed_wal": failed_wal,
        "database_bytes": size,
    }
    size_text = f"database {size / 2**30:.2f} GiB"
    if failed_time is not None and (last_time is None or failed_time > last_time):
        detail = (
            f"archive_command failing since {failed_time:%Y-%m-%d %H:%M} UTC "
            f"(last failed WAL {failed_wal}; {failed} failure(s) since stats reset)"
        )
        return CheckResult(check.name, "ERROR", detail, last_time, facts)
    result = _by_age(
        check, last_time, f"archived WAL ({last_wal})" if last_wal else "archived WAL", facts
    )
    result.detail += f"; {size_text}"
    return result


def _rank(state: State) -> int:
    return {"OK": 0, "STALE": 1, "ERROR": 2}[state]


async def run_check(check: BackupCheck, ssh: SshClient, timeout_s: float) -> CheckResult:
    """Run one check with a timeout; any failure to check becomes an ERROR result."""
    try:
        async with asyncio.timeout(timeout_s + 5):
            if check.kind == "zfs_snapshots":
                return await check_zfs(check, ssh, timeout_s)
            if check.kind == "file_age":
                return await check_file_age(check, ssh, timeout_s)
            if check.kind == "zrepl":
                return await check_zrepl(check, ssh, timeout_s)
            return await check_postgres(check, timeout_s)
    except RemoteError as exc:
        return CheckResult(check.name, "ERROR", str(exc))
    except TimeoutError:
        return CheckResult(check.name, "ERROR", f"timed out after {timeout_s:.0f} s")
