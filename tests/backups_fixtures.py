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
