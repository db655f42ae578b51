"""Pools and scrubs from `zpool list -H -p` and `zpool status -p` (OpenZFS 2.2), one result
per pool.

What the commands print, from OpenZFS 2.2 `cmd/zpool/zpool_main.c`:
- `zpool list -H -p -o name,health,capacity`: one line per pool, fields separated by one
  tab (`-H`), exact numbers (`-p`: capacity as a plain percentage, e.g. `42`).
- `zpool status -p`, per pool (`status_callback`): `  pool: NAME`, ` state: HEALTH`, maybe
  `status:`/`action:`/`   see:` paragraphs, then the scan line from
  `print_scan_scrub_resilver_status`:
  `  scan: none requested` |
  `  scan: scrub repaired %s in %s with %llu errors on <ctime>` |
  `  scan: scrub canceled on <ctime>` |
  `  scan: scrub in progress since <ctime>` + `\\t%s / %s scanned at %s/s, %s / %s issued at
  %s/s` + `\\t%s repaired, %.2f%% done, %s to go` (or `, no estimated completion time`) |
  `  scan: scrub paused since <ctime>\\tscrub started on <ctime>` + the same two lines |
  `  scan: resilvered %s in %s with %llu errors on <ctime>` |
  `  scan: resilver in progress since <ctime>` + the same two lines;
  then `config:`, a header `\\tNAME STATE READ WRITE CKSUM` and one row per vdev
  (`print_status_config`: `\\t%*s%-*s  %-8s`, then ` %5s %5s %5s` — exact integers with `-p`
  — and maybe a note such as `  too many errors`; spares show no counts), and
  `errors: No known data errors` or `errors: %llu data errors, use '-v' for a list`.
- `<ctime>` is ctime(3): `Sun Jan 14 03:30:01 2024`, in the host's time zone: the command runs
  with `TZ=UTC0` (and `LC_ALL=C`) so that it is UTC and English.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.errors import RemoteError
from bot.messages import human_duration
from commands.backups.result import CheckResult, State, Verdicts, stamp

SEPARATOR = "@@infrabot zpool status@@"
_CTIME = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}")
_PROGRESS = re.compile(r"([\d.]+)% done(?:, (.+?) to go)?")


def command() -> str:
    """The one shell line: `zpool list`, a separator, `zpool status`, for every pool (a named
    pool that is missing would stop `zpool list` from listing the others); C locale, UTC."""
    env = "LC_ALL=C TZ=UTC0"
    return (
        f"{env} zpool list -H -p -o name,health,capacity && echo {shlex.quote(SEPARATOR)} "
        f"&& {env} zpool status -p"
    )


@dataclass
class Pool:
    """One pool as `zpool status -p` shows it."""

    name: str
    state: str = "UNKNOWN"
    scan: str = "none requested"
    scan_more: list[str] = field(default_factory=list)
    # (device, state, read, write, checksum, note) for each vdev row with counts.
    devices: list[tuple[str, str, int, int, int, str]] = field(default_factory=list)
    errors_line: str = ""
    capacity: str | None = None


def ctime(text: str) -> datetime | None:
    """The first ctime(3) date in `text` (printed in UTC, see `command`), if any."""
    match = _CTIME.search(text)
    if match is None:
        return None
    return datetime.strptime(match[0], "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)


def parse_list(text: str) -> dict[str, tuple[str, str]]:
    """{pool: (health, capacity %)} from `zpool list -H -p -o name,health,capacity`."""
    pools = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise RemoteError(f"unexpected `zpool list` output: {line[:120]!r}")
        pools[parts[0]] = (parts[1], parts[2].rstrip("%"))
    return pools


def _count(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    # Without -p the counts are zfs_nicenum ("1.2K"); they still say "not zero".
    match = re.fullmatch(r"([\d.]+)([KMGTPE])", word)
    if match is None:
        return None
    return int(float(match[1]) * 1000 ** ("KMGTPE".index(match[2]) + 1))


def parse_status(text: str) -> dict[str, Pool]:
    """Each pool's block of `zpool status -p`; RemoteError if there is none."""
    pools: dict[str, Pool] = {}
    pool: Pool | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        head = line.strip()
        if head.startswith("pool: "):
            pool = Pool(head[len("pool: ") :].strip())
            pools[pool.name] = pool
            section = "head"
            continue
        if pool is None:
            continue
        if head.startswith("state: ") and section == "head":
            pool.state = head[len("state: ") :].strip()
        elif head.startswith("scan: "):
            pool.scan = head[len("scan: ") :].strip()
            section = "scan"
        elif head.startswith("config:"):
            section = "config"
        elif head.startswith("errors:"):
            pool.errors_line = head
            section = "errors"
        elif section == "scan" and raw.startswith("\t") and head:
            pool.scan_more.append(head)
        elif section == "scan" and not raw.startswith("\t"):
            section = "head"
        elif section == "config" and head and not head.startswith("NAME"):
            words = head.split()
            counts = [_count(w) for w in words[2:5]]
            if len(words) >= 5 and all(c is not None for c in counts):
                read, write, cksum = (c or 0 for c in counts)
                pool.devices.append((words[0], words[1], read, write, cksum, " ".join(words[5:])))
    if not pools:
        first = text.strip().splitlines()[:1] or ["no output"]
        raise RemoteError(f"`zpool status` printed no pool: {first[0][:120]!r}")
    return pools


def _scan(pool: Pool, max_scrub_age: timedelta, v: Verdicts) -> tuple[State, str, datetime | None]:
    """(state, what the scan line says, when the last scrub finished)."""
    scan = pool.scan
    limit = human_duration(max_scrub_age.total_seconds())
    more = " ".join(pool.scan_more)
    when = ctime(scan)
    if scan.startswith("none requested"):
        return "STALE", "never scrubbed", None
    if scan.startswith("scrub repaired") and when is not None:
        repaired = re.match(r"scrub repaired (\S+) in (.+?) with (\d+) errors", scan)
        errors = int(repaired[3]) if repaired else 0
        age = (v.now - when).total_seconds()
        took = f"repaired {repaired[1]} in {repaired[2]}" if repaired else ""
        said = f"last scrub finished {stamp(when)} ({human_duration(max(0.0, age))} ago; {took})"
        if errors:
            return "ERROR", f"{said} with {errors} errors", when
        if age > max_scrub_age.total_seconds():
            return "STALE", f"no scrub for {human_duration(age)}: {said}; limit {limit}", when
        return "OK", said, when
    if scan.startswith(("scrub in progress", "scrub paused")):
        started = ctime(scan.split("started on", 1)[-1]) if "started on" in scan else when
        progress = _PROGRESS.search(more)
        done = f", {progress[1]}% done" if progress else ""
        left = f", {progress[2]} to go" if progress and progress[2] else ""
        paused = "paused" if scan.startswith("scrub paused") else "running"
        if started is None:
            return "OK", f"scrub {paused}{done}{left}", None
        running = (v.now - started).total_seconds()
        said = f"scrub {paused} since {stamp(started)}{done}{left}"
        if running > max_scrub_age.total_seconds():
            return "STALE", f"{said}: started {human_duration(running)} ago; limit {limit}", None
        return "OK", said, None
    if scan.startswith("scrub canceled") and when is not None:
        return "STALE", f"the last scrub was canceled on {stamp(when)}", None
    if scan.startswith(("resilvered", "resilver")):
        # The pool keeps one scan record: after a resilver, the last scrub's is gone.
        fresh = when is not None and v.now - when <= max_scrub_age
        return (
            ("OK" if fresh else "STALE"),
            f"no scrub since the last resilver ({scan}{' ' + more if more else ''})",
            None,
        )
    return "ERROR", f"unexpected scan line: {scan[:120]!r}", None


def judge_pool(pool: Pool, max_scrub_age: timedelta, v: Verdicts) -> CheckResult:
    """One pool's result: its state, its devices' errors, its last scrub."""
    problems: list[str] = []
    state: State = "OK"
    if pool.state != "ONLINE":
        problems.append(f"state {pool.state}")
    # A DEGRADED mirror or pool only says that something under it is not well: the rows
    # under it name what.
    well = ("ONLINE", "AVAIL", "INUSE", "DEGRADED")
    bad = [d for d in pool.devices if d[2] or d[3] or d[4] or d[1] not in well]
    for name, dev_state, read, write, cksum, note in bad[:5]:
        counts = f"{read} read, {write} write, {cksum} checksum errors"
        problems.append(f"{name} {dev_state} ({counts}{'; ' + note if note else ''})")
    if len(bad) > 5:
        problems.append(f"and {len(bad) - 5} more devices")
    if pool.errors_line and "No known data errors" not in pool.errors_line:
        problems.append(pool.errors_line.removeprefix("errors: "))
    scan_state, scan_said, scrubbed = _scan(pool, max_scrub_age, v)
    if problems:
        state = "ERROR"
    elif scan_state != "OK":
        state = scan_state
    capacity = f"; {pool.capacity}% full" if pool.capacity else ""
    head = "; ".join(problems) if problems else pool.state
    facts = {
        "state": pool.state,
        "scan": pool.scan,
        "devices": [list(d) for d in pool.devices],
        "capacity": pool.capacity,
    }
    detail = f"{head}; {scan_said}{capacity}"
    return CheckResult(v.check, state, detail, scrubbed, facts, pool.name)


def judge(
    stdout: str, wanted: list[str], max_scrub_age: timedelta, v: Verdicts
) -> list[CheckResult]:
    """One result per listed pool (every pool when none are listed)."""
    if SEPARATOR not in stdout:
        raise RemoteError("unexpected `zpool` output: the `zpool status` part is missing")
    listed_text, status_text = stdout.split(SEPARATOR, 1)
    listed = parse_list(listed_text)
    status = parse_status(status_text)
    results = []
    for name in wanted or sorted(listed):
        pool = status.get(name)
        if pool is None:
            have = ", ".join(sorted(listed)) or "none"
            results.append(v.result("ERROR", f"no pool named {name} (the host has: {have})", name))
            continue
        if name in listed:
            pool.capacity = listed[name][1]
        results.append(judge_pool(pool, max_scrub_age, v))
    return results
