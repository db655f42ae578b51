"""The backup checks: each asks a real system how old the newest backup is.

A check gives one result per thing it watches (each dataset, each zrepl job, each series of
a Prometheus query, each pool; one for a file glob, a database or a heartbeat): OK, STALE
(newest older than max age, or none at all) or ERROR (it could not tell, or the backup
machinery reports failure), always with a reason a person can act on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yarl
from pydantic import Field, SecretStr, model_validator

from bot.config import Section
from bot.context import error_ref
from bot.durations import Duration, format_duration
from bot.errors import RemoteError
from bot.services.ssh import Result, SshClient, parse_target
from bot.store import Store
from commands.backups import db, heartbeat, prometheus, zfs, zpool, zrepl
from commands.backups.result import CheckResult, Verdicts

log = logging.getLogger(__name__)
_SAFE_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]+=,@%-]+$")


Kind = Literal[
    "zfs_snapshots", "postgres_archiving", "file_age", "zrepl", "prometheus", "heartbeat", "zpool"
]
_SSH_KINDS = ("zfs_snapshots", "file_age", "zrepl", "zpool")
# The keys each kind reads beside name, kind, max_age and severity: any other key given is a
# mistake (a `grace` on a prometheus check would silently do nothing), refused at load.
_KEYS: dict[str, frozenset[str]] = {
    "zfs_snapshots": frozenset({"host", "datasets", "prefix", "with_used"}),
    "postgres_archiving": frozenset({"dsn", "password"}),
    "file_age": frozenset({"host", "glob"}),
    "zrepl": frozenset({"host", "jobs"}),
    "prometheus": frozenset({"url", "query", "value_is", "labels", "what"}),
    "heartbeat": frozenset({"token", "grace", "max_run"}),
    "zpool": frozenset({"host", "pools", "max_scrub_age"}),
}
_COMMON_KEYS = frozenset({"name", "kind", "max_age", "severity"})


class BackupCheck(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind
    # Required but for zpool checks, which are judged by max_scrub_age.
    max_age: Duration | None = None
    severity: str = "warning"
    # SSH target (user@host[:port]) for zfs_snapshots, file_age, zrepl and zpool.
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
    # zrepl: the jobs to judge, each its own result (default: every push and pull job;
    # snap, sink and source jobs only when listed).
    jobs: list[str] = Field(default_factory=list)
    # prometheus: the server, an instant query, what each value is (`age`: seconds since the
    # backup, as `time() - metric`; `timestamp`: Unix seconds of the backup, as the metric
    # itself), the labels that name a series (default: all but __name__) and what a fresh
    # value means, for the room ("no successful replication for 26 h").
    url: str | None = None
    query: str | None = None
    value_is: prometheus.ValueIs = "timestamp"
    labels: list[str] = Field(default_factory=list)
    what: str = "fresh value"
    # heartbeat: the job's token (or token_file / token_env), how late a success may be
    # beyond max_age, and how long one run may take.
    token: SecretStr | None = None
    grace: Duration = timedelta(0)
    max_run: Duration | None = None
    # zpool: the pools to judge (default: every pool), and how old the last scrub may be.
    pools: list[str] = Field(default_factory=list)
    max_scrub_age: Duration | None = None

    @property
    def limit(self) -> timedelta:
        """The age it is judged by: max_scrub_age for a zpool check, else max_age."""
        limit = self.max_scrub_age if self.kind == "zpool" else self.max_age
        assert limit is not None  # required by _fields_for_kind
        return limit

    @model_validator(mode="after")
    def _fields_for_kind(self) -> BackupCheck:
        foreign = sorted(self.model_fields_set - _COMMON_KEYS - _KEYS[self.kind])
        if foreign:
            owners = [
                f"{key} ({', '.join(k for k, keys in _KEYS.items() if key in keys)})"
                for key in foreign
            ]
            raise ValueError(
                f"a {self.kind} check does not use {', '.join(owners)}; "
                f"its keys: {', '.join(sorted(_KEYS[self.kind]))}"
            )
        if set(self.name) == {"."}:
            raise ValueError(f"name: {self.name!r} is no name (it is a path step in a URL)")
        for key in ("max_age", "max_scrub_age", "max_run"):
            if (limit := getattr(self, key)) is not None and limit <= timedelta(0):
                raise ValueError(f"{key}: must be longer than 0 (e.g. 1h)")
        if self.kind == "zpool":
            if self.max_scrub_age is None:
                raise ValueError("a zpool check needs max_scrub_age (e.g. 35d)")
            if self.max_age is not None:
                raise ValueError("a zpool check is judged by max_scrub_age; remove max_age")
        elif self.max_age is None:
            raise ValueError(f"a {self.kind} check needs max_age")
        if self.kind == "prometheus":
            if not self.url or not _http_url(self.url):
                raise ValueError("a prometheus check needs url (http://host… or https://host…)")
            if not self.query or not self.query.strip():
                raise ValueError("a prometheus check needs query (PromQL)")
            if not self.what.strip():
                raise ValueError("what: names the event a value stands for, not empty")
        if self.kind == "heartbeat":
            if self.token is None or len(self.token.get_secret_value()) < 16:
                raise ValueError(
                    "a heartbeat check needs token (or token_file / token_env), "
                    "at least 16 characters"
                )
        needs_host = self.kind in _SSH_KINDS
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

    def target(self, item: str | None = None) -> str:
        """What the check (or one item of it: a dataset, a zrepl job) looks at, for the table."""
        if self.kind == "postgres_archiving":
            return _dsn_host(self.dsn or "")
        if self.kind == "heartbeat":
            return f"/heartbeat/{self.name}"
        if self.kind == "prometheus":
            where = re.sub(r"^https?://", "", prometheus.shown(self.url or "")).rstrip("/")
            return f"{where}:{item}" if item is not None else where
        where = self.host or ""
        if item is not None:
            return f"{where}:{item}"
        what = (
            ", ".join(self.datasets)
            or self.prefix
            or self.glob
            or ", ".join(self.jobs)
            or ", ".join(self.pools)
        )
        return f"{where}:{what}" if what else where


def _http_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL with a host (as aiohttp will read it)."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host) and " " not in url


@dataclass(frozen=True)
class Services:
    """What the checks use: the SSH client, the HTTP session (prometheus checks) and the store
    (heartbeat checks read what their jobs reported)."""

    ssh: SshClient
    http: aiohttp.ClientSession | None = None
    store: Store | None = None


def _dsn_host(dsn: str) -> str:
    host = re.search(r"host=(\S+)", dsn)
    port = re.search(r"port=(\S+)", dsn)
    db = re.search(r"dbname=(\S+)", dsn)
    return f"{host[1] if host else 'localhost'}:{port[1] if port else '5432'}/{db[1] if db else ''}"


async def _ssh(ssh: SshClient, check: BackupCheck, command: str, timeout_s: float) -> Result:
    assert check.host is not None
    return await ssh.run(parse_target(check.host), command, timeout_s)


def _succeeded(result: Result, command: str) -> str:
    """stdout of a command that exited 0, else RemoteError with its last line of output."""
    if result.exit_status != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"`{command.split()[0]}` exited {result.exit_status}: {tail[0][:200]}")
    return result.stdout


async def check_zfs(
    check: BackupCheck, ssh: SshClient, timeout_s: float, verdicts: Verdicts
) -> list[CheckResult]:
    """Newest snapshot of each dataset, one result per dataset (see commands.backups.zfs)."""
    command = zfs.list_command(check.datasets, check.prefix)
    out = await _ssh(ssh, check, command, timeout_s)
    return zfs.judge(
        out.stdout,
        out.stderr,
        out.exit_status,
        check.datasets,
        check.prefix,
        check.with_used,
        verdicts,
    )


async def check_file_age(
    check: BackupCheck, ssh: SshClient, timeout_s: float, verdicts: Verdicts
) -> list[CheckResult]:
    """Newest file matching the glob, via `stat -c '%Y %s %n'` (GNU coreutils) on the host."""
    assert check.glob is not None
    path = Path(check.glob)
    # The directory is quoted; the file-name pattern is validated to be glob characters only.
    command = (
        f"cd -- {shlex.quote(str(path.parent))} && "
        f'for f in {path.name}; do [ -e "$f" ] && stat -c \'%Y %s %n\' -- "$f"; done; true'
    )
    out = _succeeded(await _ssh(ssh, check, command, timeout_s), command)
    best: tuple[datetime, int, str] | None = None
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise RemoteError(f"unexpected `stat` output: {line[:120]!r}")
        try:
            found = (datetime.fromtimestamp(int(parts[0]), UTC), int(parts[1]), parts[2])
        except (OverflowError, OSError, ValueError):
            raise RemoteError(f"unexpected `stat` output: {line[:120]!r}") from None
        if best is None or found[0] > best[0]:
            best = found
    facts = {"file": best[2], "size": best[1]} if best else {}
    result = verdicts.by_age(best[0] if best else None, f"file matching {path.name}", None, facts)
    if best is not None:
        result.detail += f" ({best[2]}, {best[1] / 2**20:.1f} MiB)"
    return [result]


async def check_zrepl(
    check: BackupCheck, ssh: SshClient, timeout_s: float, verdicts: Verdicts
) -> list[CheckResult]:
    """Each job's last replication from `zrepl status --mode raw` (see commands.backups.zrepl)."""
    out = await _ssh(ssh, check, zrepl.COMMAND, timeout_s)
    return zrepl.judge(_succeeded(out, zrepl.COMMAND), check.jobs, verdicts)


async def check_postgres(
    check: BackupCheck, timeout_s: float, verdicts: Verdicts
) -> list[CheckResult]:
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
    if row is None:
        raise RemoteError(f"pg_stat_archiver at {_dsn_host(check.dsn)} returned no row")
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
        return [verdicts.result("ERROR", detail, None, last_time, facts)]
    what = f"archived WAL ({last_wal})" if last_wal else "archived WAL"
    result = verdicts.by_age(last_time, what, None, facts)
    result.detail += f"; {size_text}"
    return [result]


async def check_prometheus(
    check: BackupCheck, http: aiohttp.ClientSession | None, timeout_s: float, v: Verdicts
) -> list[CheckResult]:
    """Each series of the check's instant query (see commands.backups.prometheus)."""
    assert check.url is not None and check.query is not None and http is not None
    series = await prometheus.query(http, check.url, check.query, timeout_s)
    return prometheus.judge(series, check.value_is, check.labels, check.what, v)


async def check_heartbeat(
    check: BackupCheck, store: Store | None, v: Verdicts
) -> list[CheckResult]:
    """What the job last reported, judged now (see commands.backups.heartbeat)."""
    assert store is not None
    row = await db.heartbeat_of(store, check.name)
    return [heartbeat.judge(row, check.grace, check.max_run, v)]


async def check_zpool(
    check: BackupCheck, ssh: SshClient, timeout_s: float, verdicts: Verdicts
) -> list[CheckResult]:
    """Each pool's state, errors and last scrub (see commands.backups.zpool)."""
    command = zpool.command()
    out = await _ssh(ssh, check, command, timeout_s)
    if out.exit_status != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"`zpool` exited {out.exit_status}: {tail[0][:200]}")
    return zpool.judge(out.stdout, check.pools, check.limit, verdicts)


async def run_check(
    check: BackupCheck, services: Services | SshClient, timeout_s: float, now: datetime
) -> list[CheckResult]:
    """Run one check with a timeout: its results, one per item it watches, judged at `now`.

    Never raises (but for cancellation): a failure to check — unreachable host, odd output,
    timeout, or any exception at all — becomes one ERROR result for this check alone, so
    one check can never cost the others their results.
    """
    use = services if isinstance(services, Services) else Services(services)
    ssh = use.ssh
    verdicts = Verdicts(check.name, check.limit, format_duration(check.limit), now)
    try:
        async with asyncio.timeout(timeout_s + 5):
            if check.kind == "prometheus":
                return await check_prometheus(check, use.http, timeout_s, verdicts)
            if check.kind == "heartbeat":
                return await check_heartbeat(check, use.store, verdicts)
            if check.kind == "zpool":
                return await check_zpool(check, ssh, timeout_s, verdicts)
            if check.kind == "zfs_snapshots":
                return await check_zfs(check, ssh, timeout_s, verdicts)
            if check.kind == "file_age":
                return await check_file_age(check, ssh, timeout_s, verdicts)
            if check.kind == "zrepl":
                return await check_zrepl(check, ssh, timeout_s, verdicts)
            return await check_postgres(check, timeout_s, verdicts)
    except RemoteError as exc:
        return [verdicts.result("ERROR", str(exc))]
    except TimeoutError:
        return [verdicts.result("ERROR", f"timed out after {timeout_s:.0f} s")]
    except Exception as exc:
        ref = error_ref()
        log.exception("backup check %s failed unexpectedly (ref %s)", check.name, ref)
        return [
            verdicts.result(
                "ERROR",
                f"the check failed unexpectedly ({type(exc).__name__}, ref {ref}; "
                "details in the bot's log)",
            )
        ]
