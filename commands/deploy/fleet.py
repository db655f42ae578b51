"""`!status`: what each host says about itself, and the fleet as one table with drift flagged.

What each part prints (the fakes in tests/test_deploy_e2e.py copy these):
- `nixos-version`: "@version@ (@codeName@)", e.g. "24.05.20241125.1925c60 (Uakari)"
  (nixpkgs nixos/modules/installer/tools/nixos-version.sh); the release is "24.05".
- `readlink /nix/var/nix/profiles/system`: the generation link's name, relative,
  e.g. "system-142-link" (Nix src/libstore/profiles.cc, switchLink makes the target
  relative when it is in the profile's directory). The link's own mtime (`stat -c %Y`, GNU
  coreutils: seconds since the epoch) is when the generation was made, as `nix-env
  --list-generations` shows it (Nix src/libstore/profiles.cc findGenerations: lstat).
- `readlink /run/booted-system` and `/run/current-system`: store paths of the system booted
  and the one active now (nixpkgs nixos/modules/system/activation/top-level.nix and
  switch-to-configuration); they differ after a switch until the next reboot.
- `timedatectl show --property=Timezone --value`: the zone name alone, e.g. "Europe/Berlin"
  (systemd src/timedate/timedatectl.c, `show`).
- `uptime`: " 10:02:14 up 3 days,  2:04,  1 user,  load average: …" (procps-ng w.c print_uptime).
- `systemctl --failed --no-legend --plain`: one line per failed unit, columns UNIT LOAD
  ACTIVE SUB DESCRIPTION (systemd src/systemctl/systemctl-list-units.c); without --plain
  (older systemctl ignoring it, or a wrapper) each line starts with "●" or "*".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from bot.messages import human_duration, table

STATUS_SCRIPT = (
    "echo '== version'; nixos-version 2>&1; "
    "echo '== generation'; readlink /nix/var/nix/profiles/system 2>&1; "
    "echo '== generation-time'; "
    'stat -c %Y "/nix/var/nix/profiles/$(readlink /nix/var/nix/profiles/system)" 2>&1; '
    "echo '== booted'; readlink /run/booted-system 2>&1; "
    "echo '== current'; readlink /run/current-system 2>&1; "
    "echo '== now'; date +%s; "
    "echo '== uptime'; uptime 2>&1; "
    "echo '== timezone'; timedatectl show --property=Timezone --value 2>&1; "
    "echo '== failed'; systemctl --failed --no-legend --plain --no-pager 2>&1; true"
)

_GENERATION = re.compile(r"(?:^|/)system-(\d+)-link$")
_UNIT = re.compile(
    r"^[A-Za-z0-9:_.\\@-]+\.(?:service|socket|mount|automount|swap|target|path|timer|slice|scope|device)$"
)
_RELEASE = re.compile(r"^(\d+\.\d+)")
_UP = re.compile(r"\bup\s+(.*?),\s+\d+\s+users?\b")
_STORE_PATH = re.compile(r"^/nix/store/[0-9a-z]{32}-\S+$")
_ZONE = re.compile(r"^[A-Za-z0-9_+/-]+$")


def failed_unit_names(lines: list[str]) -> list[str]:
    """Unit names from `systemctl --failed --no-legend [--plain]` lines ("●" tolerated)."""
    names = []
    for line in lines:
        for word in line.split()[:2]:
            if _UNIT.match(word):
                names.append(word)
                break
    return names


@dataclass
class HostStatus:
    """What one host said (or why it could not be asked: `error`)."""

    name: str
    error: str = ""
    version: str = ""
    generation: str = ""  # "142", or the raw link when it is not a generation link
    link: str = ""
    generation_age_s: float | None = None
    reboot_pending: bool | None = None  # None: could not tell
    failed: list[str] = field(default_factory=list)
    uptime: str = ""
    timezone: str = ""

    @property
    def release(self) -> str:
        """ "24.05" from "24.05.20241125.1925c60 (Uakari)"; "" when unknown."""
        m = _RELEASE.match(self.version)
        return m.group(1) if m else ""

    def detail_lines(self) -> list[str]:
        """The one-host answer, line by line."""
        system = f"generation {self.generation} ({self.link})" if self.generation else "?"
        age = (
            f", made {human_duration(self.generation_age_s)} ago"
            if self.generation_age_s is not None
            else ""
        )
        reboot = {True: "yes (booted system differs)", False: "no", None: "?"}
        return [
            f"NixOS: {self.version or '?'}",
            f"system: {system}{age}",
            f"reboot pending: {reboot[self.reboot_pending]}",
            f"uptime: {self.uptime or '?'}",
            f"time zone: {self.timezone or '?'}",
            f"failed units: {', '.join(self.failed) if self.failed else 'none'}",
        ]


def _sections(stdout: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in stdout.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            sections[current] = []
        elif current:
            sections[current].append(line.strip())
    return sections


def _one(sections: dict[str, list[str]], key: str) -> str:
    return " ".join(x for x in sections.get(key, []) if x)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_status(name: str, stdout: str) -> HostStatus:
    """The STATUS_SCRIPT output of host `name`; a part that printed something unexpected
    (a tool missing, an error) is left unknown rather than guessed."""
    s = _sections(stdout)
    link = _one(s, "generation")
    gen = _GENERATION.search(link)
    made, now = _number(_one(s, "generation-time")), _number(_one(s, "now"))
    booted, current = _one(s, "booted"), _one(s, "current")
    known = bool(_STORE_PATH.match(booted) and _STORE_PATH.match(current))
    up_line = _one(s, "uptime")
    up = _UP.search(up_line)
    zone = _one(s, "timezone")
    return HostStatus(
        name,
        version=_one(s, "version"),
        generation=gen.group(1) if gen else "",
        link=link,
        generation_age_s=max(0.0, now - made) if made is not None and now is not None else None,
        reboot_pending=(booted != current) if known else None,
        failed=failed_unit_names(s.get("failed", [])),
        uptime=" ".join(up.group(1).split()) if up else up_line,
        timezone=zone if _ZONE.match(zone) else "",
    )


def _majority(values: list[str]) -> str:
    """The most common non-empty value ("" when none, or when there is a tie at the top)."""
    counts = Counter(v for v in values if v).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return ""
    return counts[0][0]


def drift(statuses: list[HostStatus]) -> dict[str, list[str]]:
    """Per host, what differs from the fleet: a NixOS release, or a time zone, other than the
    majority's; when they are split evenly (no majority, e.g. two hosts on two releases) every
    host is flagged, as differing from the others, rather than none."""
    ok = [s for s in statuses if not s.error]
    notes: dict[str, list[str]] = {s.name: [] for s in statuses}
    for what, value in (("release", _release), ("time zone", _zone)):
        values = {value(s) for s in ok if value(s)}
        usual = _majority([value(s) for s in ok])
        for s in ok:
            if len(values) > 1 and value(s) and value(s) != usual:
                notes[s.name].append(f"{what} {value(s)} ≠ {usual or 'the others'}")
    return notes


def _release(s: HostStatus) -> str:
    return s.release


def _zone(s: HostStatus) -> str:
    return s.timezone


def fleet_table(statuses: list[HostStatus]) -> tuple[str, str]:
    """One row per host (an unreachable one says why); drift in the last column."""
    notes = drift(statuses)
    rows = []
    for s in statuses:
        if s.error:
            rows.append([s.name, "unreachable", "", "", "", "", "", s.error])
            continue
        gen = f"{s.generation or '?'}"
        if s.generation_age_s is not None:
            gen += f" ({human_duration(s.generation_age_s)} ago)"
        reboot = {True: "yes", False: "no", None: "?"}[s.reboot_pending]
        rows.append(
            [
                s.name,
                s.version.split(" ")[0] or "?",
                gen,
                reboot,
                ", ".join(s.failed) or "none",
                s.uptime or "?",
                s.timezone or "?",
                "⚠️ " + "; ".join(notes[s.name]) if notes[s.name] else "",
            ]
        )
    headers = ["host", "NixOS", "generation", "reboot", "failed units", "up", "tz", "drift"]
    return table(headers, rows)
