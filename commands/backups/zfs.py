"""Newest snapshot per dataset from `zfs list`, one result per dataset.

The command and its output, per OpenZFS 2.2 `man/man8/zfs-list.8`:
`zfs list -H -p -t snapshot -o name,creation,used -s creation (-d 1 | -r) DATASET…`
prints one line per snapshot, fields separated by a single tab (`-H`), numbers exact (`-p`:
`creation` in seconds since the epoch, `used` in bytes), e.g.
`zroot/pg@zrepl_20240501_120000_000\t1714564800\t5242880`. A dataset without snapshots
prints nothing. A named dataset that does not exist is reported on stderr as
`cannot open 'tank/media': dataset does not exist` while the others are still listed, and
the exit status is then 1 (OpenZFS `cmd/zfs/zfs_iter.c`, `zfs_for_each`: `ret = 1` and the
loop goes on).
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

from bot.errors import RemoteError
from commands.backups.result import CheckResult, Verdicts

_CANNOT_OPEN = re.compile(r"^cannot open '([^']+)': (.+)$")


def list_command(datasets: list[str], prefix: str | None) -> str:
    """The `zfs list` command line: named datasets at depth 1, or everything under a prefix."""
    if datasets:
        scope, roots = "-d 1", datasets
    else:
        scope, roots = "-r", [(prefix or "").rstrip("/")]
    return "zfs list -H -p -t snapshot -o name,creation,used -s creation {} {}".format(
        scope, " ".join(shlex.quote(r) for r in roots)
    )


def parse_snapshots(stdout: str) -> dict[str, tuple[datetime, int]]:
    """Newest snapshot per dataset: {dataset: (creation UTC, used bytes)}.

    Raises RemoteError naming the first line that is not `name@snap<TAB>epoch<TAB>bytes`.
    """
    newest: dict[str, tuple[datetime, int]] = {}
    for n, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or "@" not in parts[0] or not parts[1].isdigit():
            raise RemoteError(f"unexpected `zfs list` output on line {n}: {line[:120]!r}")
        try:
            created = datetime.fromtimestamp(int(parts[1]), UTC)
        except (OverflowError, OSError, ValueError):
            raise RemoteError(
                f"unexpected `zfs list` output on line {n}: creation {parts[1][:30]} is no time"
            ) from None
        dataset = parts[0].split("@", 1)[0]
        used = int(parts[2]) if parts[2].isdigit() else 0
        if dataset not in newest or created > newest[dataset][0]:
            newest[dataset] = (created, used)
    return newest


def cannot_open(stderr: str) -> dict[str, str]:
    """Datasets zfs could not open, with its reason: {"tank/media": "dataset does not exist"}."""
    found: dict[str, str] = {}
    for line in stderr.splitlines():
        match = _CANNOT_OPEN.match(line.strip())
        if match:
            found[match[1]] = match[2][:200]
    return found


def judge(
    stdout: str,
    stderr: str,
    exit_status: int,
    datasets: list[str],
    prefix: str | None,
    with_used: bool,
    verdicts: Verdicts,
) -> list[CheckResult]:
    """One result per named dataset (or per dataset found under the prefix).

    Raises RemoteError when the output as a whole cannot be trusted: a malformed line, a
    failure that names no dataset (e.g. `zfs: not found`), or the prefix itself missing.
    """
    newest = parse_snapshots(stdout)
    unopened = cannot_open(stderr)
    if exit_status != 0 and not unopened:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"`zfs` exited {exit_status}: {tail[0][:200]}")
    if not datasets:
        root = (prefix or "").rstrip("/")
        if root in unopened:
            raise RemoteError(f"cannot list snapshots under {root}: {unopened[root]}")
        if not newest:
            return [verdicts.result("STALE", f"no snapshots under {prefix}")]
    results = []
    for dataset in datasets or sorted(newest):
        if dataset in unopened:
            results.append(
                verdicts.result(
                    "ERROR", f"cannot list snapshots of {dataset}: {unopened[dataset]}", dataset
                )
            )
            continue
        if dataset not in newest:
            results.append(verdicts.result("STALE", f"no snapshots of {dataset}", dataset))
            continue
        created, used = newest[dataset]
        facts = {"newest": created.isoformat(), "used": used}
        result = verdicts.by_age(created, f"snapshot of {dataset}", dataset, facts)
        if with_used:
            result.detail += f"; it holds {used / 2**20:.1f} MiB"
        results.append(result)
    return results
