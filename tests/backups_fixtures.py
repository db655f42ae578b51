"""What zrepl and zfs print, built the way their source code builds it.

zrepl 0.6 (github.com/zrepl/zrepl), `zrepl status --mode raw` = the daemon's `/status` JSON:
- `daemon/daemon.go` `Status{Jobs map[string]*job.Status; Global GlobalStatus}`, with the
  internal `_control` job always among the jobs (`daemon/control.go`: `Type: internal`, no
  specifics → `null`).
- `daemon/job/job.go` `Status.MarshalJSON`: `{"type": T, T: <job specifics>}`.
- `daemon/job/active.go` `ActiveSideStatus{Replication *report.Report; PruningSender,
  PruningReceiver *pruner.Report; Snapshotting *snapper.Report}`.
- `replication/report/replication_report.go` `Report`, `AttemptReport`, `FilesystemReport`
  (with `BlockedOn`), `StepReport{Info *StepInfo{From, To, Resumed, BytesExpected,
  BytesReplicated}}`, `TimedError{Err, Time}`.
- `replication/driver/replication_driver.go` `run.report()`: the report's `FinishAt` is the
  zero time (the run never sets it); attempts carry their own `FinishAt`.
- `daemon/snapper/snapper.go` (0.6): `Report{State, SleepUntil, Error, Progress}`, `State`
  and `SnapState` are bit flags marshalled as numbers (Waiting = 16, SnapDone = 4).
- `daemon/pruner/pruner.go` `Report{State, Error, Pending, Completed}`, `FSReport{Filesystem,
  SnapshotList, DestroyList, SkipReason, LastError}`.
- Go marshals `time.Time` as RFC 3339 with nanoseconds and the zone's offset (`Z` for UTC);
  the zero time is `0001-01-01T00:00:00Z`.

OpenZFS 2.2 `zfs list -H -p -t snapshot -o name,creation,used` (man/man8/zfs-list.8): one
line per snapshot, tab-separated, creation in epoch seconds, used in bytes; zrepl names its
snapshots `<prefix><20060102_150405_000 in UTC>` (`daemon/snapper/snapper.go`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
CEST = timezone(timedelta(hours=2))


def go_time(moment: datetime | None, zone: timezone = UTC) -> str:
    """A Go time.Time as encoding/json prints it (RFC 3339, nanoseconds, `Z` for UTC)."""
    if moment is None:
        return ZERO_TIME
    local = moment.astimezone(zone)
    nanos = f"{local.microsecond:06d}417"  # Go keeps nanoseconds; Python has microseconds
    offset = local.strftime("%z")
    suffix = "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos}{suffix}"


def timed_error(err: str, at: datetime) -> dict[str, Any]:
    """report.TimedError."""
    return {"Err": err, "Time": go_time(at)}


def snap_name(moment: datetime) -> str:
    """A snapshot name as zrepl's snapper makes it (prefix `zrepl_`)."""
    return "zrepl_" + moment.astimezone(UTC).strftime("%Y%m%d_%H%M%S_000")


def fs_report(
    name: str,
    at: datetime,
    state: str = "done",
    step_error: str | None = None,
    plan_error: str | None = None,
) -> dict[str, Any]:
    """report.FilesystemReport of one incremental step."""
    step = {
        "Info": {
            "From": f"{name}@{snap_name(at - timedelta(minutes=15))}",
            "To": f"{name}@{snap_name(at - timedelta(minutes=5))}",
            "Resumed": False,
            "BytesExpected": 1263616,
            "BytesReplicated": 0 if step_error else 1263616,
        }
    }
    return {
        "Info": {"Name": name},
        "State": state,
        "BlockedOn": "nothing",
        "PlanError": timed_error(plan_error, at) if plan_error else None,
        "StepError": timed_error(step_error, at) if step_error else None,
        "CurrentStep": 1 if state == "done" else 0,
        "Steps": [] if plan_error else [step],
    }


def attempt(
    state: str,
    start: datetime,
    finish: datetime | None,
    filesystems: list[dict[str, Any]],
    plan_error: str | None = None,
) -> dict[str, Any]:
    """report.AttemptReport."""
    return {
        "State": state,
        "StartAt": go_time(start, CEST),
        "FinishAt": go_time(finish, CEST),
        "PlanError": timed_error(plan_error, start) if plan_error else None,
        "Filesystems": filesystems,
    }


def replication(
    attempts: list[dict[str, Any]],
    start: datetime,
    reconnect_until: datetime | None = None,
    reconnect_error: str | None = None,
) -> dict[str, Any]:
    """report.Report of one invocation; FinishAt stays zero (replication_driver.go)."""
    return {
        "StartAt": go_time(start, CEST),
        "FinishAt": ZERO_TIME,
        "WaitReconnectSince": go_time(start if reconnect_until else None),
        "WaitReconnectUntil": go_time(reconnect_until),
        "WaitReconnectError": timed_error(reconnect_error, start) if reconnect_error else None,
        "Attempts": attempts,
    }


def done_replication(finished_ago: timedelta, now: datetime, *names: str) -> dict[str, Any]:
    """A push invocation whose only attempt replicated every filesystem."""
    finish = now - finished_ago
    start = finish - timedelta(seconds=42)
    fss = [fs_report(n, finish) for n in names or ("zroot/pg", "zroot/root")]
    return replication([attempt("done", start, finish, fss)], start)


def snapper_report(now: datetime, *paths: str) -> dict[str, Any]:
    """snapper.Report (0.6) waiting for the next round after snapshotting `paths`."""
    done = now - timedelta(minutes=5)
    return {
        "State": 16,
        "SleepUntil": go_time(done + timedelta(minutes=10)),
        "Error": "",
        "Progress": [
            {
                "Path": p,
                "State": 4,
                "SnapName": snap_name(done),
                "StartAt": go_time(done),
                "Hooks": "",
                "HooksHadError": False,
                "DoneAt": go_time(done),
            }
            for p in paths
        ],
    }


def pruner_report(*filesystems: str) -> dict[str, Any]:
    """pruner.Report after a pruning pass that destroyed nothing."""
    return {
        "State": "Done",
        "Error": "",
        "Pending": [],
        "Completed": [
            {
                "Filesystem": f,
                "SnapshotList": [],
                "DestroyList": [],
                "SkipReason": "",
                "LastError": "",
            }
            for f in filesystems
        ],
    }


def push_job(rep: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """A push job's status (`{"type": "push", "push": ActiveSideStatus}`)."""
    fss = ("zroot/pg", "zroot/root")
    return {
        "type": "push",
        "push": {
            "Replication": rep,
            "PruningSender": pruner_report(*fss) if rep else None,
            "PruningReceiver": pruner_report(*fss) if rep else None,
            "Snapshotting": snapper_report(now, *fss),
        },
    }


def sink_job() -> dict[str, Any]:
    """A sink job (PassiveStatus; a sink has no snapper)."""
    return {"type": "sink", "sink": {"Snapper": None}}


def snap_job(now: datetime) -> dict[str, Any]:
    """A snap job (SnapJobStatus)."""
    return {
        "type": "snap",
        "snap": {
            "Pruning": pruner_report("zroot/tmp"),
            "Snapshotting": snapper_report(now, "zroot/tmp"),
        },
    }


def zrepl_status(jobs: dict[str, Any]) -> str:
    """The whole `zrepl status --mode raw` output, `_control` included."""
    return (
        json.dumps(
            {
                "Jobs": {"_control": {"type": "internal", "internal": None}, **jobs},
                "Global": {"ZFSCmds": None, "Envconst": None},
            }
        )
        + "\n"
    )


def zfs_lines(dataset: str, ages: list[timedelta], now: datetime, used: int = 5 * 2**20) -> str:
    """`zfs list -H -p -t snapshot -o name,creation,used` lines, oldest first."""
    out = []
    for age in sorted(ages, reverse=True):
        moment = now - age
        out.append(f"{dataset}@{snap_name(moment)}\t{int(moment.timestamp())}\t{used}")
    return "".join(line + "\n" for line in out)


# --- OpenZFS 2.2 `zpool list -H -p` / `zpool status -p` ------------------------------------
# Built with the printf formats of OpenZFS 2.2 cmd/zpool/zpool_main.c: status_callback
# ("  pool: %s", " state: %s", "config:\n\n", "\t%-*s  %-8s %5s %5s %5s" header with a name
# width of at least 10, "errors: No known data errors" / "errors: %llu data errors, use '-v'
# for a list"), print_status_config (rows "\t%*s%-*s  %-8s" + " %5s %5s %5s", exact
# integers with -p, then notes such as "  too many errors"), print_scan_scrub_resilver_status
# (the scan line; ctime(3) dates; secs_to_dhms "%02llu:%02llu:%02llu" or "%llu days …";
# zfs_nicebytes sizes "0B", "1.23T"), and `zpool list -H` (one tab between fields).

Vdev = tuple[int, str, str, int, int, int, str]  # depth, name, state, read, write, cksum, note


def ctime(moment: datetime) -> str:
    """ctime(3) without its newline, in UTC (the check runs zpool with TZ=UTC0)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%a %b ") + f"{utc.day:2d}" + utc.strftime(" %H:%M:%S %Y")


def dhms(seconds: int) -> str:
    """secs_to_dhms."""
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days} days {hms}" if days else hms


def scrub_done(end: datetime, took_s: int = 3723, errors: int = 0, repaired: str = "0B") -> str:
    """The scan line of a finished scrub."""
    return f"scrub repaired {repaired} in {dhms(took_s)} with {errors} errors on {ctime(end)}\n"


def scrub_running(start: datetime, done_pct: float, to_go_s: int | None) -> str:
    """The scan line (and its two continuation lines) of a scrub in progress."""
    left = (
        f", {dhms(to_go_s)} to go\n" if to_go_s is not None else ", no estimated completion time\n"
    )
    return (
        f"scrub in progress since {ctime(start)}\n"
        "\t1.23T / 4.56T scanned at 512M/s, 1.01T / 4.56T issued at 420M/s\n"
        f"\t0B repaired, {done_pct:.2f}% done{left}"
    )


def mirror(pool: str, state: str = "ONLINE", bad: Vdev | None = None) -> list[Vdev]:
    """A pool of one two-disk mirror; `bad` replaces the second disk's row."""
    second = bad or (2, "sdb", "ONLINE", 0, 0, 0, "")
    return [
        (0, pool, state, 0, 0, 0, ""),
        (1, "mirror-0", state, 0, 0, 0, ""),
        (2, "sda", "ONLINE", 0, 0, 0, ""),
        second,
    ]


def zpool_status_block(
    pool: str,
    state: str,
    scan: str,
    vdevs: list[Vdev],
    data_errors: int = 0,
    status: str = "",
) -> str:
    """One pool's part of `zpool status -p`."""
    width = max(10, *(depth + len(name) for depth, name, *_ in vdevs))
    out = f"  pool: {pool}\n state: {state}\n{status}  scan: {scan}config:\n\n"
    out += "\t" + f"{'NAME':<{width}}  {'STATE':<8} {'READ':>5} {'WRITE':>5} {'CKSUM':>5}" + "\n"
    for depth, name, vstate, read, write, cksum, note in vdevs:
        row = f"\t{'':{depth}}{name:<{width - depth}}  {vstate:<8} {read:>5} {write:>5} {cksum:>5}"
        out += row + (f"  {note}" if note else "") + "\n"
    out += "\n"
    if data_errors:
        out += f"errors: {data_errors} data errors, use '-v' for a list\n"
    else:
        out += "errors: No known data errors\n"
    return out


DEGRADED_STATUS = (
    "status: One or more devices could not be opened.  Sufficient replicas exist for\n"
    "\tthe pool to continue functioning in a degraded state.\n"
    "action: Attach the missing device and online it using 'zpool online'.\n"
    "   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-2Q\n"
)


def zpool_list_lines(pools: dict[str, tuple[str, int]]) -> str:
    """`zpool list -H -p -o name,health,capacity`: {pool: (health, capacity %)}."""
    return "".join(f"{name}\t{health}\t{cap}\n" for name, (health, cap) in pools.items())
