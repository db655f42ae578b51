"""Pure rules of deploys: outcome of a finished run, silence, failed unit names, quoting."""

from __future__ import annotations

import shlex

import pytest

from bot.services.ssh import guarded
from commands.deploy import failed_unit_names
from commands.deploy.runner import classify, failed_units, silence_exceeded

UNITS = "warning: the following units failed: systemd-networkd-wait-online.service"
REBUILD = "warning: error(s) occurred while switching to the new configuration"
COLMENA = "haumea | Activation failed: Child process exited with error code: 4"


@pytest.mark.parametrize(
    ("action", "code", "lines", "state"),
    [
        ("switch", 0, ["activating the configuration..."], "ok"),
        ("switch", 1, ["activating the configuration...", UNITS, REBUILD], "units_failed"),
        ("switch", 0, [UNITS], "units_failed"),
        ("switch", 1, [f"haumea | {UNITS}", COLMENA], "units_failed"),
        ("test", 1, [UNITS, REBUILD], "units_failed"),
        # The activation script itself failed: the switch is incomplete.
        ("switch", 1, ["Failed to run activate script", UNITS, REBUILD], "failed"),
        # colmena failing for another reason than switch-to-configuration's 4.
        (
            "switch",
            1,
            [UNITS, "Activation failed: Child process exited with error code: 2"],
            "failed",
        ),
        # Not a switch at all.
        ("boot", 1, [UNITS], "failed"),
        ("switch", 1, ["error: builder for '/nix/store/x.drv' failed with exit code 1"], "failed"),
    ],
)
def test_classify(action: str, code: int, lines: list[str], state: str) -> None:
    assert classify("pluto", action, code, lines)[0] == state


def test_classify_names_the_failed_units() -> None:
    lines = ["warning: the following units failed: a.service, b.mount", REBUILD]
    assert classify("pluto", "switch", 1, lines) == (
        "units_failed",
        "pluto switched; the new generation is active, but 2 units failed: a.service, b.mount",
    )
    assert failed_units([f"x | {UNITS}", f"[ERROR]   stderr) {UNITS}"]) == [
        "systemd-networkd-wait-online.service"
    ]


@pytest.mark.parametrize(
    ("phase", "silent_for", "stopped"),
    [
        ("building", 599, False),
        ("building", 600, True),
        ("copying", 601, True),
        ("starting", 700, True),
        ("activating", 3600, False),
        ("restarting units", 3600, False),
        ("bootloader", 3600, False),
    ],
)
def test_silence_is_stage_aware(phase: str, silent_for: float, stopped: bool) -> None:
    assert silence_exceeded(phase, silent_for, 600) is stopped


def test_failed_unit_names_from_systemctl() -> None:
    lines = [
        "borgbackup-job-state.service loaded failed failed BorgBackup job state",
        "● nginx.service loaded failed failed Nginx Web Server",
        "* sshd.socket loaded failed failed SSH Socket",
        "",
    ]
    assert failed_unit_names(lines) == [
        "borgbackup-job-state.service",
        "nginx.service",
        "sshd.socket",
    ]


def test_guarded_quotes_the_command_once() -> None:
    command = "cd '/srv/infra' && nixos-rebuild switch --flake '.#pluto'"
    words = shlex.split(guarded(command))
    assert words[:2] == ["sh", "-c"] and words[3] == "sh" and words[4] == command
