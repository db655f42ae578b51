"""Pure rules of deploys: outcome, silence, failed units, quoting, arguments, the table."""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from bot.config import ConfigError, parse_config
from bot.context import Runtime
from bot.errors import UserError
from bot.registry import Registry
from bot.services.ssh import guarded
from bot.store import SqliteStore, Store
from commands import ROUTERS
from commands.deploy import (
    _spec,
    action,
    batches,
    confirm_id,
    db,
    host_list,
    host_with_history,
    known_host,
    router,
)
from commands.deploy.fleet import HostStatus, drift, failed_unit_names, fleet_table, parse_status
from commands.deploy.inventory import Inventory, unknown_roles
from commands.deploy.runner import (
    classify,
    deploy_command,
    failed_units,
    node_outcomes,
    overall,
    silence_exceeded,
)

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


class _Config:
    """The one part of Config the converters read: `section("hosts", Inventory)`."""

    def __init__(self, hosts: Inventory) -> None:
        self.hosts = hosts

    def section(self, key: str, model: type[Any]) -> Any:
        return self.hosts if key == "hosts" else None


class _Runtime:
    def __init__(self, store: Store) -> None:
        self.config = _Config(
            Inventory.model_validate(
                [
                    {"name": "pluto", "target": "root@pluto.nixos.org"},
                    {"name": "haumea", "target": "root@haumea.nixos.org", "protected": True},
                ]
            )
        )
        self.store = store


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = SqliteStore(Path(":memory:"), router.migrations)
    yield s
    await s.close()


@pytest.fixture
def rt(store: Store) -> Runtime:
    return cast(Runtime, _Runtime(store))


def test_host_list_checks_the_inventory(rt: Runtime) -> None:
    assert [h.name for h in host_list("pluto,haumea,pluto", rt)] == ["pluto", "haumea"]
    with pytest.raises(UserError, match=r"Unknown host `nowhere`; known hosts: haumea, pluto"):
        host_list("pluto,nowhere", rt)
    with pytest.raises(UserError, match="Unknown host `,`"):
        host_list(",", rt)
    assert known_host("haumea", rt).four_eyes
    with pytest.raises(UserError, match="Unknown host `x`"):
        known_host("x", rt)


def test_action_and_confirm_id(rt: Runtime) -> None:
    assert action("Boot", rt) == "boot"
    with pytest.raises(UserError, match="`reboot` is not an action; choose one of switch"):
        action("reboot", rt)
    assert confirm_id("A1f0", rt) == "a1f0"
    for bad in ("a1f", "zzzz", "a1f00"):
        with pytest.raises(UserError, match="is not a confirmation id"):
            confirm_id(bad, rt)


async def test_history_host_accepts_hosts_deployed_before(any_store: Store) -> None:
    rt = cast(Runtime, _Runtime(any_store))
    with pytest.raises(UserError, match="No deploys of `mimas` are recorded"):
        await host_with_history("mimas", rt)
    await db.start_deploy(any_store, "mimas", "switch", None, "@bob:x", "!r:x", 1000.0)
    assert await host_with_history("mimas", rt) == "mimas"
    assert await host_with_history("pluto", rt) == "pluto"


def test_declared_usage_lines() -> None:
    usage = {c.name: c.usage("?") for c in router.commands}
    assert usage["deploy"] == (
        "?deploy <host[,host…|@group]> [switch|boot|test|dry-activate|build] [--ref REF]"
    )
    assert usage["deploy cancel"] == "?deploy cancel <host>"
    assert usage["deploy history"] == "?deploy history [host]"
    assert usage["confirm"] == "?confirm <id>"
    assert usage["status"] == "?status [host[,host…|@group]]"


async def test_deploys_table_round_trip(any_store: Store) -> None:
    store = any_store
    first = await db.start_deploy(store, "pluto", "switch", "main", "@bob:x", "!r:x", 1000.0)
    await db.set_revision(store, first, "3f2c1a9b")
    await db.finish_deploy(
        store, first, ended_at=1090.0, state="ok", exit_code=0, summary="done", log_excerpt="x"
    )
    second = await db.start_deploy(store, "haumea", "boot", None, "@alice:x", "!r:x", 2000.0)
    [row] = await db.history(store, "pluto")
    assert (row.id, row.revision, row.state, row.ended_at, row.exit_code) == (
        first,
        "3f2c1a9b",
        "ok",
        1090.0,
        0,
    )
    assert [r.id for r in await db.history(store)] == [second, first]
    assert await db.last_deploy(store, "nowhere") is None
    # At start, what is still running was cut off by the previous run.
    [cut] = await db.interrupt_running(store, 3000.0, "interrupted by a bot restart")
    assert (cut.id, cut.state) == (second, "running")
    again = await db.last_deploy(store, "haumea")
    assert again is not None and (again.state, again.ended_at) == ("interrupted", 3000.0)
    assert await db.interrupt_running(store, 3001.0, "again") == []


HIVES: dict[str, Any] = {
    "critical": {
        "method": "colmena",
        "dir": "build",
        "role": "deploy-critical",
        "four_eyes": True,
        "hosts": [
            {"name": "pluto", "target": "root@pluto.nixos.org"},
            {"name": "titan", "target": "root@titan.nixos.org", "method": "nixos-rebuild"},
        ],
    },
    "non-critical": {
        "method": "colmena",
        "dir": "non-critical-infra/",
        "hosts": [{"name": "caliban", "target": "root@caliban.nixos.org", "attr": "cal"}],
    },
}


def test_inventory_groups_fill_in_their_hosts() -> None:
    inv = Inventory.model_validate(HIVES)
    hosts = inv.hosts()
    assert list(hosts) == ["pluto", "titan", "caliban"]
    pluto, titan, caliban = hosts["pluto"], hosts["titan"], hosts["caliban"]
    assert (pluto.group, pluto.method, pluto.dir, pluto.role, pluto.four_eyes) == (
        "critical",
        "colmena",
        "build",
        "deploy-critical",
        True,
    )
    # A host overrides its group's method; the group's directory and role still apply.
    assert (titan.method, titan.dir, titan.role) == ("nixos-rebuild", "build", "deploy-critical")
    assert (caliban.dir, caliban.role, caliban.four_eyes, caliban.attr) == (
        "non-critical-infra",
        "deploy",
        False,
        "cal",
    )


def test_flat_inventory_is_one_group_with_todays_behaviour() -> None:
    inv = Inventory.model_validate(
        [
            {"name": "pluto", "target": "root@pluto.nixos.org"},
            {"name": "mimas", "target": "root@mimas.nixos.org", "protected": True},
            {"name": "haumea", "target": "h", "method": "colmena", "hive": "build"},
        ]
    )
    assert inv.flat and [g.name for g in inv.resolved()] == ["hosts"]
    hosts = inv.hosts()
    assert {h.role for h in hosts.values()} == {"deploy"}
    assert (hosts["pluto"].method, hosts["pluto"].dir, hosts["pluto"].four_eyes) == (
        "nixos-rebuild",
        "",
        False,
    )
    assert hosts["mimas"].four_eyes
    assert Inventory.model_validate([]).hosts() == {}
    assert (hosts["haumea"].method, hosts["haumea"].dir) == ("colmena", "build")


@pytest.mark.parametrize(
    ("hosts", "where", "message"),
    [
        ([{"name": "a", "target": "t"}, {"name": "a", "target": "u"}], "hosts", "unique: a"),
        ([{"name": "a"}], "hosts[0].target", "Field required"),
        (
            {"critical": {"role": "x", "hosts": [{"name": "a", "target": "t", "bogus": 1}]}},
            "hosts.critical.hosts[0].bogus",
            "Extra inputs",
        ),
        ({"critical": {"hosts": []}}, "hosts.critical.hosts", "at least 1"),
        (
            {"critical": {"dir": "../x", "hosts": [{"name": "a", "target": "t"}]}},
            "hosts.critical.dir",
            "inside the checkout",
        ),
        (
            {"critical": {"method": "ansible", "hosts": [{"name": "a", "target": "t"}]}},
            "hosts.critical.method",
            "colmena",
        ),
        (
            {
                "a": {"hosts": [{"name": "x", "target": "t"}]},
                "b": {"hosts": [{"name": "x", "target": "t"}]},
            },
            "hosts",
            "unique: x",
        ),
        ({"bad group": {"hosts": [{"name": "x", "target": "t"}]}}, "hosts", "group names"),
        (
            {"critical": {"hosts": [{"name": "history", "target": "t"}]}},
            "hosts.critical.hosts[0].name",
            "a word of the deploy command",
        ),
        ([{"name": "cancel", "target": "t"}], "hosts[0].name", "`deploy cancel`"),
        ("pluto", "hosts", "valid dictionary"),
    ],
)
def test_inventory_errors_name_the_key(hosts: Any, where: str, message: str) -> None:
    registry = Registry(ROUTERS)
    raw = {
        "matrix": {"homeserver": "http://hs", "user_id": "@b:hs", "access_token": "t"},
        "hosts": hosts,
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "cfg.yaml", registry.sections, {})
    problems = "\n".join(err.value.problems)
    assert f"cfg.yaml: {where}: " in problems and message in problems, problems


def test_colmena_runs_one_process_per_hive() -> None:
    hosts = Inventory.model_validate(HIVES).hosts()
    runs = batches([hosts["caliban"], hosts["pluto"], hosts["titan"]])
    assert [[h.name for h in run] for run in runs] == [["caliban"], ["pluto"], ["titan"]]
    assert deploy_command(_spec(hosts["pluto"]), "switch", "/srv/infra") == (
        "cd /srv/infra/build && colmena apply switch --on pluto"
    )


def test_each_colmena_node_is_judged_by_its_own_lines() -> None:
    lines = [
        "caliban | Activation successful",
        "umbriel | warning: the following units failed: a.service",
        "umbriel | Activation failed: Child process exited with error code: 4",
        "  hydra | Activation failed: Child process exited with error code: 1",
    ]
    nodes = ("caliban", "umbriel", "hydra", "other")
    out = node_outcomes(nodes, "switch", 1, lines)
    assert out["caliban"] == ("ok", "done")
    assert out["umbriel"][0] == "units_failed" and "a.service" in out["umbriel"][1]
    assert out["hydra"] == ("failed", "Activation failed: Child process exited with error code: 1")
    assert out["other"] == ("failed", "colmena stopped before other finished")
    assert node_outcomes(("a", "b"), "boot", 0, [])["b"] == ("ok", "done")
    boot = node_outcomes(("a", "b"), "boot", 1, ["a | Will be activated next boot"])
    assert boot["a"] == ("ok", "done") and boot["b"][0] == "failed"
    assert overall(["ok", "units_failed"]) == "units_failed"
    assert overall(["units_failed", "failed", "ok"]) == "failed"
    assert overall(["ok", "ok"]) == "ok"


def test_groups_in_the_host_list(store: Store) -> None:
    class _Hives(_Runtime):
        def __init__(self, store: Store) -> None:
            self.config = _Config(Inventory.model_validate(HIVES))
            self.store = store

    rt = cast(Runtime, _Hives(store))
    names = [h.name for h in host_list("caliban,@critical,pluto", rt)]
    assert names == ["caliban", "pluto", "titan"]
    with pytest.raises(UserError, match=r"Unknown group `@x`; groups: @critical, @non-critical"):
        host_list("@x,pluto", rt)


def _status_output(version: str, zone: str, booted: str, current: str) -> str:
    return "\n".join(
        [
            "== version",
            version,
            "== generation",
            "system-142-link",
            "== generation-time",
            "1732528934",
            "== booted",
            booted,
            "== current",
            current,
            "== now",
            str(1732528934 + 3 * 86400 + 7200),
            "== uptime",
            " 10:02:14 up 3 days,  2:04,  1 user,  load average: 0.08, 0.03, 0.01",
            "== timezone",
            zone,
            "== failed",
            "borgbackup-job-state.service loaded failed failed BorgBackup job state",
        ]
    )


SYS_A = "/nix/store/0r2vq1m3bx8d7lq6c0cmx1y7f9n4pk2s-nixos-system-pluto-24.05"
SYS_B = "/nix/store/5w1bq8y0kd1h2x9n0c7l4f3p6m8r2t0v-nixos-system-pluto-24.05"


def test_status_output_is_parsed_and_unknown_parts_stay_unknown() -> None:
    s = parse_status(
        "pluto", _status_output("24.05.20241125.1925c60 (Uakari)", "UTC", SYS_A, SYS_B)
    )
    assert (s.release, s.generation, s.reboot_pending, s.timezone) == ("24.05", "142", True, "UTC")
    assert s.generation_age_s == 3 * 86400 + 7200 and s.uptime == "3 days, 2:04"
    assert s.failed == ["borgbackup-job-state.service"]
    broken = parse_status(
        "x", _status_output("sh: nixos-version: not found", "Failed to connect to bus", "", "")
    )
    assert broken.release == "" and broken.reboot_pending is None and broken.timezone == ""


def test_fleet_drift_is_the_minority_release_and_zone() -> None:
    a = parse_status("a", _status_output("24.05.1 (Uakari)", "Europe/Berlin", SYS_A, SYS_A))
    b = parse_status("b", _status_output("24.05.2 (Uakari)", "Europe/Berlin", SYS_A, SYS_A))
    c = parse_status("c", _status_output("24.11.1 (Vicuna)", "UTC", SYS_A, SYS_B))
    down = HostStatus("d", error="SSH to root@d failed: Connection refused")
    notes = drift([a, b, c, down])
    assert notes == {
        "a": [],
        "b": [],
        "c": ["release 24.11 ≠ 24.05", "time zone UTC ≠ Europe/Berlin"],
        "d": [],
    }
    text, _ = fleet_table([a, b, c, down])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["host", "NixOS", "generation", "reboot"]
    assert "142 (3 d 2 h ago)" in lines[1] and " no " in lines[1]
    assert (
        " yes " in lines[3] and "⚠️ release 24.11 ≠ 24.05; time zone UTC ≠ Europe/Berlin" in lines[3]
    )
    assert "unreachable" in lines[4] and "Connection refused" in lines[4]


def test_a_group_role_that_is_not_configured_is_named() -> None:
    inv = Inventory.model_validate(HIVES)
    assert unknown_roles(inv, ["admin", "deploy"]) == [
        "hosts.critical.role: unknown role 'deploy-critical' (roles: admin, deploy)"
    ]
    assert unknown_roles(inv, ["deploy", "deploy-critical"]) == []
    flat = Inventory.model_validate([{"name": "a", "target": "t"}])
    assert unknown_roles(flat, ["admin"]) == ["hosts: unknown role 'deploy' (roles: admin)"]
