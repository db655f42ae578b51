"""`!deploy` end to end: a real SSH server running fake nixos-rebuild/colmena, a real Synapse."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.clock import ManualClock
from bot.dispatch import Dispatcher
from bot.errors import RemoteError
from bot.matrix import IncomingMessage, IncomingReaction
from bot.services.ssh import SshClient, parse_target
from commands.deploy import DEPLOY
from devstack.client import RoomUser, SeenEvent
from devstack.openssh import OpenSshServer
from devstack.ssh import LocalSshServer
from tests.conftest import BotFactory, both_stores

SHA = "3f2c1a9b8e7d6c5b4a39281706f5e4d3c2b1a098"

# The fakes print what the real tools print without a terminal, from their sources:
# - nixos-rebuild: nixpkgs pkgs/os-specific/linux/nixos-rebuild/nixos-rebuild.sh (commit
#   00409d13, 24.05): log "building the system configuration..." (stderr); after a failed
#   switch-to-configuration, log "warning: error(s) occurred while switching to the new
#   configuration" and exit 1. Nothing is printed after a successful switch.
# - Nix 2.18 SimpleLogger (libutil/logging.cc startActivity: text + "..."), libstore
#   store-api.cc ("copying %d paths", "copying path '%s' to '%s'"), libmain/shared.cc
#   printMissing ("these %d derivations will be built:", then "  <drv>" lines), build
#   ("building '%s'").
# - switch-to-configuration-ng: nixpkgs pkgs/by-name/sw/switch-to-configuration-ng/src/src/
#   main.rs (commit 17358245): "activating the configuration...", "reloading user units for
#   %s...", "restarting sysinit-reactivation.target", "restarting the following units: …",
#   then for failed units "warning: the following units failed: a, b" (sorted, ", "-joined),
#   `systemctl status --no-pager --full <units>` and exit 4. The status text below is the
#   shape a user pasted from a real switch (serokell/deploy-rs issue #52, systemd 247).
# - "setting up /etc..." is the etc activation snippet's (nixos/modules/system/etc/etc.nix).
# - sudo 1.9 without a terminal: "sudo: a terminal is required to read the password; either
#   use the -S option to read from standard input or configure an askpass helper", then
#   "sudo: a password is required".
NIXOS_REBUILD = r"""
echo "$0 $*" >> "$DATA/args.log"
pwd >> "$DATA/cwd.log"
echo $$ > "$DATA/pid"
mode=$(cat "$DATA/mode" 2>/dev/null || echo ok)
name=nixos-system-pluto-24.05.20241125.1925c60
sys=/nix/store/0r2vq1m3bx8d7lq6c0cmx1y7f9n4pk2s-$name
drv=/nix/store/9k1x2hd8v0q3l6rmm1cqk5w2z7f0s4yb-$name.drv
etc=/nix/store/3ylq9wzb0pq5kv0q1x3jhcw8kq0a2yq4-etc.drv
echo "building the system configuration..." >&2
echo "these 2 derivations will be built:" >&2
echo "  $etc" >&2
echo "  $drv" >&2
echo "building '$etc'..." >&2
case "$mode" in
  slow) for i in $(seq 1 600); do echo "building '/nix/store/x-$i.drv'..." >&2; sleep 0.1; done ;;
  flood) seq 1 10000 | sed "s|^|copying path '/nix/store/hash-path-|; s|$|' to 'ssh://x'...|" >&2 ;;
  silent) exec sleep 600 ;;
  prompt) printf '[sudo] password for deploy: ' >&2; exec sleep 600 ;;
  sudo)
    echo "sudo: a terminal is required to read the password; either use the -S option to" \
      "read from standard input or configure an askpass helper" >&2
    echo "sudo: a password is required" >&2
    exit 1 ;;
  fail)
    echo "error: builder for '$drv' failed with exit code 1" >&2
    echo "error: 1 dependencies of derivation '$drv' failed to build" >&2
    exit 1 ;;
esac
echo "building '$drv'..." >&2
echo "copying 2 paths..." >&2
echo "copying path '$sys' to 'ssh://root@pluto.nixos.org'..." >&2
echo "activating the configuration..." >&2
echo "setting up /etc..." >&2
[ "$mode" = quiet-activation ] && sleep 2.5
echo "reloading user units for root..." >&2
echo "restarting sysinit-reactivation.target" >&2
echo "restarting the following units: nginx.service" >&2
case "$mode" in
  units-failed|units-failed-exit-0)
    echo "warning: the following units failed: systemd-networkd-wait-online.service" >&2
    cat >&2 <<EOF
● systemd-networkd-wait-online.service - Wait for Network to be Configured
     Loaded: loaded (/etc/systemd/system/systemd-networkd-wait-online.service; enabled)
     Active: failed (Result: exit-code) since Mon 2024-11-25 10:02:14 UTC; 5ms ago
   Main PID: 5155 (code=exited, status=1/FAILURE)
EOF
    if [ "$mode" = units-failed ]; then
      echo "warning: error(s) occurred while switching to the new configuration" >&2
      exit 1
    fi ;;
esac
"""

# `colmena apply <goal> --on <node>` without a terminal uses its plain output (colmena
# src/progress/mod.rs: Plain when stdout is not a tty; src/progress/plain.rs prints
# "{label:>width} | {text}", width = the longest node name, at least 5). Texts from
# src/job.rs describe_state_transition ("Evaluating haumea", "Built {path:?}", "Pushing
# system closure", "Activating system profile", "Activation failed: {error}", "All done!"),
# src/nix/deployment/goal.rs success_str ("Activation successful"), src/error.rs
# ("Child process exited with error code: {}"), goal.rs success_str per goal ("Will be
# activated next boot", "Configuration built", …); the label width is the longest node name,
# at least DEFAULT_LABEL_WIDTH (src/progress/plain.rs, HintLabelWidth; 5 in
# src/progress/mod.rs). The "[INFO ]"/"[ERROR]" lines and the
# failure summary follow a real run pasted in nix-community/colmena issue #124 (2022-10).
COLMENA = r"""
echo "$0 $*" >> "$DATA/args.log"
pwd >> "$DATA/cwd.log"
echo $$ > "$DATA/pid"
mode=$(cat "$DATA/mode" 2>/dev/null || echo ok)
nodes=$(echo "$*" | sed -n 's/.*--on \([^ ]*\).*/\1/p' | tr ',' ' ')
# Labels are right-aligned to the longest node name, at least 5 (DEFAULT_LABEL_WIDTH).
width=5
for n in $nodes; do [ ${#n} -gt $width ] && width=${#n}; done
say() { printf "%${width}s | %s\n" "$1" "$2" >&2; }
count=$(echo $nodes | wc -w)
# The goal's success line (src/nix/deployment/goal.rs success_str).
case "$2" in
  boot) ok="Will be activated next boot" ;;
  test) ok="Activation successful (test)" ;;
  dry-activate) ok="Dry activation successful" ;;
  build) ok="Configuration built" ;;
  *) ok="Activation successful" ;;
esac
cat >&2 <<EOF
[INFO ] Using flake: git+file://$PWD
[INFO ] Enumerating nodes...
[INFO ] Selected $count out of 4 hosts.
EOF
# slow (tests only): an evaluation that lasts until the run is cancelled.
if [ "$mode" = slow ]; then
  for n in $nodes; do say "$n" "Evaluating $n"; done
  exec sleep 600
fi
failed=""
for n in $nodes; do
  sys=/nix/store/5w1bq8y0kd1h2x9n0c7l4f3p6m8r2t0v-nixos-system-$n-24.05.20241125.1925c60
  say "$n" "Evaluating $n"
  say "$n" "Evaluated $n"
  say "$n" "Building $n"
  say "$n" "$sys"
  say "$n" "Built \"$sys\""
  say "$n" "Pushing system closure"
  say "$n" "Pushed system closure"
  say "$n" "Activating system profile"
  say "$n" "Checking remote profile..."
  say "$n" "Remote profile known"
  say "$n" "activating the configuration..."
  say "$n" "setting up /etc..."
  say "$n" "reloading user units for root..."
  say "$n" "restarting sysinit-reactivation.target"
  if [ "$mode" = units-failed ] || [ -e "$DATA/fail-$n" ]; then
    say "$n" "warning: the following units failed: systemd-networkd-wait-online.service"
    say "$n" "● systemd-networkd-wait-online.service - Wait for Network to be Configured"
    say "$n" "     Active: failed (Result: exit-code) since Mon 2024-11-25 10:02:14 UTC; 5ms ago"
    say "$n" "Activation failed: Child process exited with error code: 4"
    failed="$failed $n"
  else
    say "$n" "$ok"
  fi
done
if [ -n "$failed" ]; then
  say "" "Failed: Child process exited with error code: 4"
  echo "[ERROR] Failed to complete requested operation - Last 1 lines of logs:" >&2
  echo "[ERROR]  failure) Child process exited with error code: 4" >&2
  for n in $failed; do
    cat >&2 <<EOF
[ERROR] Failed to deploy to $n - Last 4 lines of logs:
[ERROR]  created)
[ERROR]    state) Running
[ERROR]   stderr) warning: the following units failed: systemd-networkd-wait-online.service
[ERROR]  failure) Child process exited with error code: 4
[ERROR] -----
EOF
  done
  echo "[ERROR] Operation failed with error: Child process exited with error code: 4" >&2
  exit 1
fi
say "" "All done!"
"""

GIT = f"""
echo "git $*" >> "$DATA/git.log"
case "$1" in
  fetch) exit 0 ;;
  checkout)
    [ "$4" = missing-branch ] && {{ echo "error: pathspec '$4' did not match" >&2; exit 1; }}
    exit 0 ;;
  rev-parse) echo {SHA} ;;
esac
"""


# nixpkgs nixos/modules/installer/tools/nixos-version.sh: `echo "@version@ (@codeName@)"`.
NIXOS_VERSION = "echo '24.05.20241125.1925c60 (Uakari)'\n"
# Nix src/libstore/profiles.cc switchLink: a generation link in the profile's directory is
# stored relative, so `readlink /nix/var/nix/profiles/system` prints "system-142-link";
# /run/booted-system and /run/current-system are links to the systems' store paths
# (commands/deploy/fleet.py cites where they are made).
SYSTEM = "/nix/store/0r2vq1m3bx8d7lq6c0cmx1y7f9n4pk2s-nixos-system-pluto-24.05.20241125.1925c60"
OLD_SYSTEM = "/nix/store/9d1k2m3bx8d7lq6c0cmx1y7f9n4pk2s0-nixos-system-titan-24.11.20241201.abcdef0"


def _readlink(booted: str = SYSTEM) -> str:
    # Any other link is the real readlink's: under OpenSSH, root's bash reads ~/.bashrc, where
    # `pyenv init` (on the test machine) resolves links in a loop that a fake answering
    # everything alike never ends.
    return (
        'case "$1" in\n'
        f"  /run/booted-system) echo {booted} ;;\n"
        f"  /run/current-system) echo {SYSTEM} ;;\n"
        "  /nix/var/nix/profiles/system) echo system-142-link ;;\n"
        '  *) exec /usr/bin/readlink "$@" ;;\n'
        "esac\n"
    )


READLINK = _readlink()
# GNU coreutils `stat -c %Y`: the modification time in seconds since the epoch.
STAT = "echo 1732528934\n"
# systemd timedatectl.c `show --property=Timezone --value`: the zone name alone.
TIMEDATECTL = "echo Europe/Berlin\n"
# systemd src/systemctl/systemctl-list-units.c: `systemctl --failed --no-legend --plain`
# prints UNIT LOAD ACTIVE SUB DESCRIPTION per unit (columns padded to the widest value).
SYSTEMCTL = (
    "echo 'borgbackup-job-state.service         loaded failed failed BorgBackup job state'\n"
    "echo 'systemd-networkd-wait-online.service loaded failed failed Wait for Network to be "
    "Configured'\n"
)


def _fake_tools(host: LocalSshServer | OpenSshServer) -> None:
    """Every fake tool above, first on the PATH of the server's commands."""
    host.script("nixos-rebuild", NIXOS_REBUILD)
    host.script("colmena", COLMENA)
    host.script("git", GIT)
    host.script("nixos-version", NIXOS_VERSION)
    host.script("readlink", READLINK)
    host.script("systemctl", SYSTEMCTL)
    host.script("stat", STAT)
    host.script("timedatectl", TIMEDATECTL)


@pytest.fixture
async def deploy_env(tmp_path: Path) -> AsyncIterator[tuple[LocalSshServer, Path, Path]]:
    host = LocalSshServer(tmp_path / "ssh")
    data = tmp_path / "data"
    data.mkdir()
    checkout = tmp_path / "infra"
    (checkout / "build").mkdir(parents=True)
    os.environ["DATA"] = str(data)  # the SSH server's commands inherit this
    _fake_tools(host)
    await host.start()
    yield host, data, checkout
    await host.stop()
    os.environ.pop("DATA", None)


def _deploy_config(
    host: LocalSshServer | OpenSshServer,
    checkout: Path,
    known_hosts: Path | None = None,
    **extra: Any,
) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["permissions"]["roles"]["deploy"] = {"min_power_level": 50}
        raw["deploy"] = {
            "runner": host.target,
            "checkout": str(checkout),
            "ssh": {
                "known_hosts": str(known_hosts or host.known_hosts),
                "client_keys": [str(host.client_key)],
            },
            "progress_interval_s": 1,
            "thread_interval_s": 1,
            **extra,
        }
        raw["hosts"] = [
            {"name": "pluto", "target": "root@pluto.nixos.org"},
            {
                "name": "haumea",
                "target": "root@haumea.nixos.org",
                "method": "colmena",
                "hive": "build",
            },
            {"name": "mimas", "target": "root@mimas.nixos.org", "protected": True},
            {"name": "local", "target": host.target},
        ]

    return edit


def _new(e: SeenEvent) -> dict[str, Any]:
    content: dict[str, Any] = e.content.get("m.new_content", e.content)
    return content


def _status_of(user: RoomUser, bot: str, host: str, after: int) -> SeenEvent | None:
    for e in user.seen[after:]:
        if (
            e.sender == bot
            and e.body.startswith(f"🚀 deploying {host} ")
            and "m.new_content" not in e.content
        ):
            return e
    return None


async def _final(user: RoomUser, bot: str, host: str, after: int, timeout: float = 30) -> SeenEvent:
    status = await user.wait_for(
        lambda e: (
            e.sender == bot
            and e.body.startswith(f"🚀 deploying {host} ")
            and "m.new_content" not in e.content
        ),
        timeout=timeout,
        after=after,
    )
    return await user.wait_for(
        lambda e: (
            (e.content.get("m.relates_to") or {}).get("event_id") == status.event_id
            and (e.content.get("m.relates_to") or {}).get("rel_type") == "m.replace"
            and _new(e)["body"].startswith(("✅ ", "❌ ", "🛑 ", "⏱️", "⚠️"))
        ),
        timeout=timeout,
        after=after,
    )


@both_stores
async def test_deploy_streams_progress_and_records_history(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    mark = alice.mark()
    command = await bob.send(room, "!deploy pluto --ref main")
    final = await _final(alice, bot.user_id, "pluto", mark)
    body = _new(final)["body"]
    assert body.startswith("✅ pluto (switch) deployed after") and f"at {SHA[:12]}" in body
    assert (
        "requested by @bob:localhost" in body
        and "restarting the following units: nginx.service" in body
    )
    await alice.wait_for(
        lambda e: (
            e.source.get("type") == "m.reaction"
            and e.content["m.relates_to"]
            == {"rel_type": "m.annotation", "event_id": command, "key": "👀"}
        ),
        after=mark,
    )
    status = _status_of(alice, bot.user_id, "pluto", mark)
    assert status is not None

    def in_thread(e: SeenEvent) -> bool:
        rel = e.content.get("m.relates_to") or {}
        return bool(rel.get("event_id") == status.event_id and rel.get("rel_type") == "m.thread")

    chunk = await alice.wait_for(
        lambda e: in_thread(e) and "building the system" in e.body, after=mark
    )
    assert "<pre><code>" in chunk.content["formatted_body"]
    logfile = await alice.wait_for(
        lambda e: in_thread(e) and e.content.get("msgtype") == "m.file", after=mark
    )
    assert (
        logfile.content["body"].startswith("deploy-pluto-")
        and logfile.content["info"]["size"] > 300
    )
    args = (data / "args.log").read_text()
    assert "switch --flake .#pluto --target-host root@pluto.nixos.org --use-substitutes" in args
    assert (data / "cwd.log").read_text().strip() == str(checkout)
    assert "checkout --quiet --detach main" in (data / "git.log").read_text()

    history = await alice.ask(room, "!deploy history pluto", bot.user_id)
    assert "pluto" in history.body and "@bob:localhost" in history.body and "ok" in history.body
    assert f"main@{SHA[:8]}" in history.body
    hosts = await alice.ask(room, "!hosts", bot.user_id)
    assert "ok" in hosts.body and "never" in hosts.body and "yes" in hosts.body

    # colmena runs in the hive's directory with --on.
    mark = alice.mark()
    await bob.send(room, "!deploy haumea boot")
    final = await _final(alice, bot.user_id, "haumea", mark)
    assert _new(final)["body"].startswith("✅ haumea (boot) deployed")
    assert "colmena apply boot --on haumea" in (data / "args.log").read_text()
    assert (data / "cwd.log").read_text().splitlines()[-1] == str(checkout / "build")


async def test_failure_flood_and_bad_requests(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice, mallory = people["bob"], people["alice"], people["mallory"]

    (data / "mode").write_text("fail")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("❌ pluto (switch) failed after") and "exit 1" in body
    assert "failed to build" in body and "1 dependencies of derivation" in body

    (data / "mode").write_text("flood")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto test")
    body = _new(await _final(alice, bot.user_id, "pluto", mark, timeout=60))["body"]
    assert body.startswith("✅ pluto (test) deployed")
    # The full log of 10,000+ lines arrives as a file.
    await alice.wait_for(
        lambda e: (
            e.sender == bot.user_id
            and e.content.get("msgtype") == "m.file"
            and e.content["info"]["size"] > 10000 * 30
        ),
        after=mark,
    )
    thread_posts = [
        e for e in alice.seen[mark:] if e.sender == bot.user_id and "copying path" in e.body
    ]
    assert 1 <= len(thread_posts) <= 30, "output is coalesced, not one message per line"

    for text, expected in [
        ('!deploy "pluto; rm -rf /"', "Unknown host `pluto; rm -rf /`"),
        ("!deploy pluto,nowhere", "Unknown host `nowhere`"),
        ("!deploy pluto reboot", "`reboot` is not an action"),
        ("!deploy pluto --ref 'main;id'", "is not a valid git ref"),
        ("!deploy pluto --ref", "--ref needs"),
    ]:
        answer = await bob.ask(room, text, bot.user_id)
        assert expected in answer.body, (text, answer.body)
    refused = await mallory.ask(room, "!deploy pluto", bot.user_id)
    assert "needs the deploy role" in refused.body
    assert "rm -rf" not in (data / "args.log").read_text()

    (data / "mode").write_text("ok")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto --ref missing-branch")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert "could not check out missing-branch" in body and "did not match" in body


async def test_lock_cancel_and_dropped_connection(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    (data / "mode").write_text("slow")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "building '/nix/store/x-" in e.body,
        after=mark,
        timeout=20,
    )
    locked = await alice.ask(room, "!deploy pluto boot", bot.user_id)
    assert "pluto is being deployed by @bob:localhost since" in locked.body
    pid = int((data / "pid").read_text())
    cancelled = await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    assert "cancelling" in cancelled.body
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("🛑 pluto (switch) cancelled") and "cancelled by @bob:localhost" in body
    await _gone(pid)
    nothing = await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    assert "No deploy of pluto is running" in nothing.body

    # The SSH connection drops in the middle of a deploy.
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "building '/nix/store/x-" in e.body,
        after=mark,
        timeout=20,
    )
    host.drop_connections()
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("❌ pluto (switch) failed") and "lost" in body


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_protected_host_needs_confirmation(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice, mallory = people["bob"], people["alice"], people["mallory"]

    prompt = await bob.ask(room, "!deploy mimas", bot.user_id)
    assert "mimas is protected" in prompt.body and "!confirm " in prompt.body
    confirm_id = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    refused = await mallory.ask(room, f"!confirm {confirm_id}", bot.user_id)
    assert "needs the deploy role" in refused.body
    assert not (data / "args.log").exists()
    mark = alice.mark()
    ok = await alice.ask(room, f"!confirm {confirm_id}", bot.user_id)
    assert "confirmed by @alice:localhost" in ok.body
    await alice.wait_for(
        lambda e: (
            e.sender == bot.user_id
            and e.source.get("type") == "m.reaction"
            and e.content["m.relates_to"]["key"] == "👀"
        ),
        after=mark,
    )
    assert _new(await _final(alice, bot.user_id, "mimas", mark))["body"].startswith("✅ mimas")

    # A ✅ reaction on the prompt confirms too.
    prompt = await bob.ask(room, "!deploy mimas boot", bot.user_id)
    mark = alice.mark()
    await alice.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt.event_id, "key": "✅"}},
    )
    assert _new(await _final(alice, bot.user_id, "mimas", mark))["body"].startswith(
        "✅ mimas (boot)"
    )

    # Mallory's ✅ goes through the same rules as her `!confirm`: refused, nothing deployed.
    prompt = await bob.ask(room, "!deploy mimas", bot.user_id)
    mark = alice.mark()
    await mallory.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": prompt.event_id, "key": "✅"}},
    )
    refused = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "refused: it needs the deploy role (mimas)" in e.body,
        after=mark,
    )
    assert "@mallory:localhost" in refused.body
    assert prompt.body.split("!confirm ", 1)[1].split("`")[0] in bot.rt[DEPLOY].pending


async def test_confirmation_expires_on_the_clock_and_answers_use_the_prefix(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))

    def edit(raw: dict[str, Any]) -> None:
        _deploy_config(host, checkout, confirm_timeout="5m")(raw)
        raw["commands"] = {"prefix": "?"}

    bot = make_bot(edit=edit, clock=clock)
    await bot.start()
    bob, alice = people["bob"], people["alice"]

    usage = "?deploy <host[,host…|@group]> [switch|boot|test|dry-activate|build] [--ref REF]"
    helped = await alice.ask(room, "?help deploy", bot.user_id)
    assert usage in helped.body
    bad = await bob.ask(room, "?deploy pluto reboot", bot.user_id)
    assert "`reboot` is not an action" in bad.body and usage in bad.body
    assert "`?help deploy`" in bad.body
    # `?help` offers deploying to holders of a group's role only: mallory holds none, so the
    # list does not offer her commands that would refuse her whatever host she names.
    offered = await bob.ask(room, "?help", bot.user_id)
    assert usage in offered.body and "?confirm <id>" in offered.body
    assert "?deploy cancel <host>" in offered.body
    theirs = await people["mallory"].ask(room, "?help", bot.user_id)
    assert "?deploy history" in theirs.body and "?hosts" in theirs.body
    assert "?deploy <host" not in theirs.body and "?confirm" not in theirs.body
    assert "?deploy cancel" not in theirs.body
    assert "more need a role you do not have" in theirs.body

    # Still confirmable a second before it expires.
    prompt = await bob.ask(room, "?deploy mimas", bot.user_id)
    assert "with `?confirm " in prompt.body and "within 5 min" in prompt.body
    confirm_id = prompt.body.split("?confirm ", 1)[1].split("`")[0]
    await clock.advance(timedelta(minutes=4, seconds=59))
    mark = alice.mark()
    ok = await alice.ask(room, f"?confirm {confirm_id}", bot.user_id)
    assert "confirmed by @alice:localhost" in ok.body
    assert _new(await _final(alice, bot.user_id, "mimas", mark))["body"].startswith("✅ mimas")

    # Unconfirmed requests expire when the clock passes their time, and say so on the prompt.
    prompt = await bob.ask(room, "?deploy mimas", bot.user_id)
    confirm_id = prompt.body.split("?confirm ", 1)[1].split("`")[0]
    await clock.advance(timedelta(minutes=5))
    expired = await alice.wait_for(
        lambda e: (
            (e.content.get("m.relates_to") or {}).get("event_id") == prompt.event_id
            and "expired" in _new(e).get("body", "")
        ),
    )
    assert "nothing was deployed" in _new(expired)["body"]
    late = await bob.ask(room, f"?confirm {confirm_id}", bot.user_id)
    assert "No deploy request" in late.body
    assert len((data / "args.log").read_text().splitlines()) == 1

    # The lock's answer names the prefix too.
    (data / "mode").write_text("slow")
    mark = alice.mark()
    await bob.send(room, "?deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "building '/nix/store/x-" in e.body, after=mark
    )
    locked = await alice.ask(room, "?deploy pluto", bot.user_id)
    assert "`?deploy cancel pluto` stops it" in locked.body
    await bob.ask(room, "?deploy cancel pluto", bot.user_id)
    await _final(alice, bot.user_id, "pluto", mark)


@both_stores
async def test_host_key_mismatch_timeout_restart_and_status(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
    tmp_path: Path,
) -> None:
    host, data, checkout = deploy_env
    other = LocalSshServer(tmp_path / "other")
    await other.start()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(
        host.known_hosts.read_text().split(" ", 1)[0]
        + " "
        + other.known_hosts.read_text().split(" ", 1)[1]
    )
    await other.stop()
    bot = make_bot(edit=_deploy_config(host, checkout, known_hosts=wrong))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("❌ pluto") and "host key" in body and "refusing" in body
    assert not (data / "args.log").exists()
    await bot.stop()

    (data / "mode").write_text("slow")
    timed = make_bot(edit=_deploy_config(host, checkout, timeout="3s"))
    await timed.start()
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, timed.user_id, "pluto", mark))["body"]
    assert body.startswith("⏱️ pluto (switch) timed out")

    # A deploy cut off by a bot restart is marked interrupted and announced once.
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == timed.user_id and "building '/nix/store/x-" in e.body,
        after=mark,
        timeout=20,
    )
    pid = int((data / "pid").read_text())
    await timed.stop()
    # Stopping the bot ends the running deploy on the runner too.
    await _gone(pid)
    again = make_bot(edit=_deploy_config(host, checkout))
    await again.start()
    note = await alice.wait_for(
        lambda e: e.sender == again.user_id and "interrupted by a bot restart" in e.body, after=mark
    )
    assert "the deploy of pluto (switch) requested by @bob:localhost" in note.body
    history = await alice.ask(room, "!deploy history", again.user_id)
    assert "interrupted" in history.body and "timeout" in history.body

    status = await alice.ask(room, "!status local", again.user_id)
    assert "NixOS: 24.05.20241125.1925c60 (Uakari)" in status.body
    assert "system: generation 142 (system-142-link)" in status.body
    assert (
        "failed units: borgbackup-job-state.service, systemd-networkd-wait-online.service"
        in status.body
    )
    assert "uptime: " in status.body
    unknown = await alice.ask(room, "!status nowhere", again.user_id)
    assert "Unknown host `nowhere`" in unknown.body


def _statuses(user: RoomUser, bot: str, host: str, after: int) -> list[SeenEvent]:
    return [
        e
        for e in user.seen[after:]
        if e.sender == bot
        and e.body.startswith(f"🚀 deploying {host} ")
        and "m.new_content" not in e.content
    ]


async def _refusal(user: RoomUser, bot: str, commands: Sequence[str], after: int) -> SeenEvent:
    """The bot's "is being deployed by" answer to one of `commands` (event ids)."""
    return await user.wait_for(
        lambda e: (
            e.sender == bot
            and "is being deployed by" in e.body
            and any(e.replies_to(c) for c in commands)
        ),
        after=after,
    )


def _incoming(room: str, sender: str, event_id: str, body: str) -> IncomingMessage:
    return IncomingMessage(room, sender, event_id, body, int(time.time() * 1000), None)


async def test_two_deploys_of_one_host_at_once_run_once(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    (data / "mode").write_text("slow")

    # Sent back to back through Synapse: usually one sync batch, else two close ones.
    mark = alice.mark()
    first, second = await asyncio.gather(
        bob.send(room, "!deploy pluto"), alice.send(room, "!deploy pluto")
    )
    loser = await _refusal(alice, bot.user_id, (first, second), mark)
    winner = "@alice:localhost" if "@alice:localhost" in loser.body else "@bob:localhost"
    assert f"pluto is being deployed by {winner} since" in loser.body
    cancelled = await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    assert "cancelling" in cancelled.body
    await _final(alice, bot.user_id, "pluto", mark)
    # The final edit is the barrier: a second deploy's status would have been posted before it.
    assert len(_statuses(alice, bot.user_id, "pluto", mark)) == 1
    assert len((data / "args.log").read_text().splitlines()) == 1

    # Driven in one event-loop turn, as two commands of one sync batch are.
    plain = [await bob.send(room, f"(same turn {i})") for i in (1, 2)]
    mark = alice.mark()
    dispatcher = Dispatcher(bot.rt)
    dispatcher.on_message(_incoming(room, "@bob:localhost", plain[0], "!deploy pluto"))
    dispatcher.on_message(_incoming(room, "@alice:localhost", plain[1], "!deploy pluto boot"))
    # Which of the two claims the host first is the store's to decide (on PostgreSQL the two
    # claims go through different pooled connections); that only one runs is the point.
    loser = await _refusal(alice, bot.user_id, plain, mark)
    winner, action = (
        ("@bob:localhost", "switch") if loser.replies_to(plain[1]) else ("@alice:localhost", "boot")
    )
    assert f"pluto is being deployed by {winner} since" in loser.body
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "building '/nix/store/x-" in e.body, after=mark
    )
    await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith(f"🛑 pluto ({action}) cancelled")
    assert len(_statuses(alice, bot.user_id, "pluto", mark)) == 1
    assert len((data / "args.log").read_text().splitlines()) == 2


@both_stores
async def test_confirmations_arriving_together_confirm_once(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    prompt = await bob.ask(room, "!deploy mimas", bot.user_id)
    confirm_id = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    plain = [await bob.send(room, f"(confirm {i})") for i in (1, 2)]
    mark = alice.mark()
    # A `!confirm`, a ✅ and another `!confirm` in one event-loop turn.
    dispatcher = Dispatcher(bot.rt)
    dispatcher.on_message(_incoming(room, "@alice:localhost", plain[0], f"!confirm {confirm_id}"))
    dispatcher.on_message(
        IncomingReaction(
            room, "@bob:localhost", "$reaction", prompt.event_id, "✅", int(time.time() * 1000)
        )
    )
    dispatcher.on_message(_incoming(room, "@bob:localhost", plain[1], f"!confirm {confirm_id}"))
    ok = await alice.reply_to(plain[0], bot.user_id)
    assert "confirmed by @alice:localhost" in ok.body
    again = await alice.reply_to(plain[1], bot.user_id)
    assert f"Deploy request {confirm_id} was already confirmed by @alice:localhost" in again.body
    await alice.wait_for(
        lambda e: (
            e.sender == bot.user_id
            and f"{confirm_id} was already confirmed by @alice:localhost" in e.body
            # The ✅'s answer goes into the prompt's thread (the reaction guard's answer).
            and (e.content.get("m.relates_to") or {}).get("rel_type") == "m.thread"
            and e.content["m.relates_to"].get("event_id") == prompt.event_id
        ),
        after=mark,
    )
    assert _new(await _final(alice, bot.user_id, "mimas", mark))["body"].startswith("✅ mimas")
    assert len(_statuses(alice, bot.user_id, "mimas", mark)) == 1
    assert len((data / "args.log").read_text().splitlines()) == 1


async def test_switched_but_units_failed(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    expected = (
        "⚠️ {host} switched; the new generation is active, but 1 unit failed: "
        "systemd-networkd-wait-online.service"
    )
    # nixos-rebuild exits 1 after switch-to-configuration's 4; the same warning with exit 0;
    # colmena's "Activation failed: Child process exited with error code: 4".
    for mode, hostname, code in [
        ("units-failed", "pluto", "exit 1"),
        ("units-failed-exit-0", "pluto", "exit 0"),
        ("units-failed", "haumea", "exit 1"),
    ]:
        (data / "mode").write_text(mode)
        mark = alice.mark()
        await bob.send(room, f"!deploy {hostname}")
        body = _new(await _final(alice, bot.user_id, hostname, mark))["body"]
        assert body.startswith(expected.format(host=hostname)), (mode, body)
        assert "— switch after" in body and code in body, body
    history = await alice.ask(room, "!deploy history", bot.user_id)
    assert "units_failed" in history.body


async def test_no_terminal_prompts_sudo_and_silence(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_deploy_config(host, checkout, silence_timeout="1s"))
    await bot.start()
    bob, alice = people["bob"], people["alice"]

    (data / "mode").write_text("sudo")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("❌ pluto (switch) failed") and "sudo: a password is required" in body
    assert "💡 sudo on the runner wants a password" in body
    assert "passwordless sudo (NOPASSWD), or deploy as root" in body

    # A prompt without a newline is shown, and a run that then prints nothing is stopped.
    (data / "mode").write_text("prompt")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("⏱️ pluto (switch) stopped after"), body
    assert "stopped after 1 s without output while building" in body
    assert body.rstrip().endswith("[sudo] password for deploy:")
    pid = int((data / "pid").read_text())
    await _gone(pid)

    # Silence is normal while activating: only the overall timeout applies there.
    (data / "mode").write_text("quiet-activation")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("✅ pluto (switch) deployed"), body


async def _gone(pid: int) -> None:
    """Wait until a remote process has ended (liveness only: the deadline is a safety net)."""
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"remote process {pid} kept running"
        await asyncio.sleep(0.1)


@pytest.fixture
async def openssh_env(tmp_path: Path) -> AsyncIterator[tuple[OpenSshServer, Path, Path]]:
    """The real OpenSSH sshd (Debian openssh-server) with the same fake tools."""
    data = tmp_path / "data"
    data.mkdir()
    checkout = tmp_path / "infra"
    (checkout / "build").mkdir(parents=True)
    host = OpenSshServer(tmp_path / "openssh", env={"DATA": str(data)})
    _fake_tools(host)
    await host.start()
    yield host, data, checkout
    await host.stop()


async def test_real_sshd_no_terminal_and_timeouts_end_the_remote_command(
    openssh_env: tuple[OpenSshServer, Path, Path],
) -> None:
    host, data, _ = openssh_env
    client = SshClient(host.known_hosts, [host.client_key])
    target = parse_target(host.target)
    # No terminal, stdin closed: a prompt reading stdin gets EOF at once.
    result = await client.run(target, 'tty; read answer; echo "read exit $?"', 30)
    assert "not a tty" in result.stdout and "read exit 1" in result.stdout
    # A timed-out command is ended on the host, not abandoned (backup checks, !status).
    with pytest.raises(RemoteError, match="timed out after 2 s and was stopped there"):
        await client.run(target, f"echo $$ > {data}/run.pid; exec sleep 600", 2)
    await _gone(int((data / "run.pid").read_text()))


async def test_real_sshd_deploy_cancel_and_timeout_end_the_remote_process(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    openssh_env: tuple[OpenSshServer, Path, Path],
) -> None:
    host, data, checkout = openssh_env
    bot = make_bot(edit=_deploy_config(host, checkout, timeout="20s"))
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    (data / "mode").write_text("slow")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "building '/nix/store/x-" in e.body,
        after=mark,
        timeout=30,
    )
    pid = int((data / "pid").read_text())
    await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("🛑 pluto (switch) cancelled")
    await _gone(pid)

    (data / "mode").write_text("silent")
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    body = _new(await _final(alice, bot.user_id, "pluto", mark, timeout=60))["body"]
    assert body.startswith("⏱️ pluto (switch) timed out")
    await _gone(int((data / "pid").read_text()))


def _hives_config(
    host: LocalSshServer | OpenSshServer,
    checkout: Path,
    targets: dict[str, str] | None = None,
    **extra: Any,
) -> Callable[[dict[str, Any]], None]:
    """The team's two colmena hives as groups. bob (power level 50) holds `deploy`, the
    non-critical role; mallory holds only `deploy-critical`; alice is the admin. `targets`
    replaces hosts' targets by name (for `!status`, which connects to each)."""
    (checkout / "non-critical-infra").mkdir(exist_ok=True)

    def edit(raw: dict[str, Any]) -> None:
        _deploy_config(host, checkout, **extra)(raw)
        raw["permissions"]["roles"]["deploy-critical"] = {"users": ["@mallory:localhost"]}
        raw["hosts"] = {
            "critical": {
                "method": "colmena",
                "dir": "build",
                "role": "deploy-critical",
                "four_eyes": True,
                "hosts": [
                    {"name": "pluto", "target": "root@pluto.nixos.org"},
                    {"name": "mimas", "target": "root@mimas.nixos.org"},
                    {"name": "titan", "target": "root@titan.nixos.org", "method": "nixos-rebuild"},
                ],
            },
            "non-critical": {
                "method": "colmena",
                "dir": "non-critical-infra",
                "role": "deploy",
                "hosts": [
                    {"name": "caliban", "target": "root@caliban.nixos.org"},
                    {"name": "umbriel", "target": "root@umbriel.nixos.org"},
                ],
            },
        }
        for group in raw["hosts"].values():
            for h in group["hosts"]:
                h["target"] = (targets or {}).get(h["name"], h["target"])

    return edit


async def test_host_groups_need_their_own_role(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_hives_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]

    # bob holds the non-critical role only: pluto is refused, naming the role it needs.
    refused = await bob.ask(room, "!deploy pluto", bot.user_id)
    assert "needs the deploy-critical role (pluto)" in refused.body
    assert "nothing was done" in refused.body and "recorded" in refused.body
    audit = await alice.ask(room, "!audit", bot.user_id)
    assert any(
        "@bob:localhost" in line and "deploy pluto" in line and "denied" in line
        for line in audit.body.splitlines()
    ), audit.body
    assert not (data / "args.log").exists()

    # caliban is his: colmena runs in the non-critical hive.
    mark = alice.mark()
    await bob.send(room, "!deploy caliban")
    body = _new(await _final(alice, bot.user_id, "caliban", mark))["body"]
    assert body.startswith("✅ caliban (switch) deployed"), body
    assert "colmena apply switch --on caliban" in (data / "args.log").read_text()
    assert (data / "cwd.log").read_text().splitlines()[-1] == str(checkout / "non-critical-infra")
    # Cancelling needs the group's role too.
    cancel = await bob.ask(room, "!deploy cancel titan", bot.user_id)
    assert "needs the deploy-critical role (titan)" in cancel.body

    # The admin deploys both groups (critical: test_four_eyes_needs_a_second_holder_of_the_role).
    mark = alice.mark()
    await alice.send(room, "!deploy umbriel boot")
    body = _new(await _final(alice, bot.user_id, "umbriel", mark))["body"]
    assert body.startswith("✅ umbriel (boot) deployed"), body

    # Who may do what: `!hosts` by group, and `!help deploy` in one line.
    hosts = await bob.ask(room, "!hosts", bot.user_id)
    lines = hosts.body.splitlines()
    assert lines[0].split() == [
        "group",
        "host",
        "target",
        "method",
        "role",
        "four-eyes",
        "last",
        "deploy",
    ]
    assert "@critical" in lines[1] and " pluto " in lines[1]
    pluto = next(x for x in lines if " pluto " in x)
    assert "colmena in build/" in pluto and "deploy-critical" in pluto and " yes " in pluto
    titan = next(x for x in lines if " titan " in x)
    assert "nixos-rebuild in build/" in titan and "deploy-critical" in titan
    caliban = next(x for x in lines if " caliban " in x)
    assert caliban.startswith("@non-critical") and "colmena in non-critical-infra/" in caliban
    assert " deploy " in caliban and "ok " in caliban and "by @bob:localhost" in caliban
    helped = await bob.ask(room, "!help deploy", bot.user_id)
    assert (
        "needs role: the hosts' group role: "
        "@critical (pluto, mimas, titan; colmena in build/): deploy-critical, four-eyes · "
        "@non-critical (caliban, umbriel; colmena in non-critical-infra/): deploy "
        "(and admin: every group)"
    ) in helped.body


async def test_real_sshd_two_hives_two_roles_and_the_fleet(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    openssh_env: tuple[OpenSshServer, Path, Path],
) -> None:
    """Issue 14 point 6 through Debian's OpenSSH sshd: colmena's per-node lines and
    switch-to-configuration's exit 4 for one node, two users holding different group roles,
    and `!status` from nixos-version, readlink, systemctl, stat and timedatectl."""
    host, data, checkout = openssh_env
    every = dict.fromkeys(["pluto", "mimas", "titan", "caliban", "umbriel"], host.target)
    bot = make_bot(edit=_hives_config(host, checkout, targets=every))
    await bot.start()
    bob, mallory, alice = people["bob"], people["mallory"], people["alice"]

    # bob holds `deploy` (non-critical), mallory `deploy-critical`: each is refused the other's.
    refused = await bob.ask(room, "!deploy pluto", bot.user_id)
    assert "needs the deploy-critical role (pluto)" in refused.body
    refused = await mallory.ask(room, "!deploy caliban", bot.user_id)
    assert "needs the deploy role (caliban)" in refused.body
    assert not (data / "args.log").exists()

    # bob deploys his hive: one colmena over sshd; umbriel's activation fails with exit 4.
    (data / "fail-umbriel").write_text("")
    mark = alice.mark()
    await bob.send(room, "!deploy @non-critical")
    body = _new(await _final(alice, bot.user_id, "caliban,umbriel", mark, timeout=60))["body"]
    assert body.startswith("⚠️ 1 of 2 hosts deployed — switch after"), body
    assert "✅ caliban: done" in body
    assert (
        "⚠️ umbriel: umbriel switched; the new generation is active, but 1 unit failed: "
        "systemd-networkd-wait-online.service" in body
    )
    assert (data / "args.log").read_text().splitlines() == [
        f"{host.bin_dir}/colmena apply switch --on caliban,umbriel"
    ]

    # mallory's pluto waits for a second holder of deploy-critical: not bob, but the admin.
    prompt = await mallory.ask(room, "!deploy pluto", bot.user_id)
    assert "Anyone but @mallory:localhost holding the deploy-critical role" in prompt.body
    confirm_id = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    not_his = await bob.ask(room, f"!confirm {confirm_id}", bot.user_id)
    assert "deploy-critical" in not_his.body and "confirmed by" not in not_his.body
    mark = alice.mark()
    ok = await alice.ask(room, f"!confirm {confirm_id}", bot.user_id)
    assert "confirmed by @alice:localhost" in ok.body
    body = _new(await _final(alice, bot.user_id, "pluto", mark, timeout=60))["body"]
    assert body.startswith("✅ pluto (switch) deployed"), body

    # The fleet through sshd: every host's row from the fake tools' output.
    fleet = await mallory.ask(room, "!status", bot.user_id, timeout=60)
    rows = {line.split()[0]: line for line in fleet.body.splitlines()[1:]}
    assert list(rows) == ["pluto", "mimas", "titan", "caliban", "umbriel"]
    for row in rows.values():
        assert "24.05.20241125.1925c60" in row and "142 (" in row and "Europe/Berlin" in row
        assert "borgbackup-job-state.service" in row and "⚠️" not in row


def _react(user: RoomUser, room: str, event_id: str, key: str = "✅") -> Any:
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
    return user.client.room_send(room, "m.reaction", content)


async def test_four_eyes_needs_a_second_holder_of_the_role(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    bot = make_bot(edit=_hives_config(host, checkout, confirm_timeout="5m"), clock=clock)
    await bot.start()
    bob, alice, mallory = people["bob"], people["alice"], people["mallory"]

    # The admin asks for a critical host: the prompt says who may confirm, and until when.
    prompt = await alice.ask(room, "!deploy titan", bot.user_id)
    assert "titan is protected (four-eyes)" in prompt.body
    assert "Anyone but @alice:localhost holding the deploy-critical role may confirm" in (
        prompt.body
    )
    assert "until 09:05:00 UTC (within 5 min)" in prompt.body
    cid = prompt.body.split("!confirm ", 1)[1].split("`")[0]

    # The requester's own confirmation, typed or ✅, is refused with the reason.
    own = await alice.ask(room, f"!confirm {cid}", bot.user_id)
    assert "you requested this deploy yourself" in own.body and "different person" in own.body
    mark = alice.mark()
    await _react(alice, room, prompt.event_id)
    own_tick = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "refused: you requested this" in e.body, after=mark
    )
    assert own_tick.body.startswith("✅ from @alice:localhost refused")
    # A holder of the non-critical role only may not confirm a critical deploy.
    other = await bob.ask(room, f"!confirm {cid}", bot.user_id)
    assert "needs the deploy-critical role (titan)" in other.body
    assert not (data / "args.log").exists()
    assert cid in bot.rt[DEPLOY].pending

    # A second holder of the group's role confirms with ✅.
    mark = alice.mark()
    await _react(mallory, room, prompt.event_id)
    ok = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "confirmed by @mallory:localhost" in e.body,
        after=mark,
    )
    assert "requested by @alice:localhost" in ok.body
    body = _new(await _final(alice, bot.user_id, "titan", mark))["body"]
    assert body.startswith("✅ titan (switch) deployed"), body

    history = await alice.ask(room, "!deploy history titan", bot.user_id)
    row = [line for line in history.body.splitlines() if "titan" in line]
    assert "requested by" in history.body and "confirmed by" in history.body
    assert "@alice:localhost" in row[0] and "@mallory:localhost" in row[0], history.body
    audit = await alice.ask(room, "!audit 20", bot.user_id)
    lines = audit.body.splitlines()
    assert any(
        "@mallory:localhost" in x
        and "requested by @alice:localhost, confirmed by @mallory:localhost" in x
        for x in lines
    ), audit.body
    assert any("@bob:localhost" in x and f"confirm {cid}" in x and "denied" in x for x in lines)
    assert any("@alice:localhost" in x and f"confirm {cid}" in x and "denied" in x for x in lines)

    # Unconfirmed, it expires after confirm_timeout and says so on the prompt.
    prompt = await alice.ask(room, "!deploy pluto", bot.user_id)
    cid = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    await clock.advance(timedelta(minutes=5))
    expired = await alice.wait_for(
        lambda e: (
            (e.content.get("m.relates_to") or {}).get("event_id") == prompt.event_id
            and "expired" in _new(e).get("body", "")
        ),
    )
    assert f"deploy request {cid} expired without confirmation" in _new(expired)["body"]
    late = await mallory.ask(room, f"!confirm {cid}", bot.user_id)
    assert "No deploy request" in late.body
    assert len((data / "args.log").read_text().splitlines()) == 1


async def test_sets_of_hosts_one_colmena_per_hive_and_each_hosts_result(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, data, checkout = deploy_env
    bot = make_bot(edit=_hives_config(host, checkout))
    await bot.start()
    bob, alice = people["bob"], people["alice"]

    # A set is checked host by host against each one's group: all refused, saying which.
    refused = await bob.ask(room, "!deploy caliban,pluto", bot.user_id)
    assert "needs the deploy-critical role (pluto)" in refused.body
    assert "nothing was done" in refused.body
    unknown = await bob.ask(room, "!deploy @nowhere", bot.user_id)
    assert "Unknown group `@nowhere`; groups: @critical, @non-critical" in unknown.body
    # A set written with spaces, as people type lists: told how to write it, nothing runs.
    for typed, second in [
        ("!deploy caliban umbriel", "umbriel"),
        ("!deploy caliban, umbriel", "umbriel"),
        ("!deploy caliban @critical", "@critical"),
    ]:
        spaced = await bob.ask(room, typed, bot.user_id)
        assert f"`{second}` is a host or group, not an action" in spaced.body, spaced.body
        assert "`!deploy pluto,caliban`" in spaced.body
    assert not (data / "args.log").exists()

    # A whole group: one colmena run for the hive, each host's result reported.
    (data / "fail-umbriel").write_text("")
    mark = alice.mark()
    await bob.send(room, "!deploy @non-critical")
    body = _new(await _final(alice, bot.user_id, "caliban,umbriel", mark))["body"]
    assert body.startswith("⚠️ 1 of 2 hosts deployed — switch after"), body
    assert "✅ caliban: done" in body
    assert (
        "⚠️ umbriel: umbriel switched; the new generation is active, but 1 unit failed: "
        "systemd-networkd-wait-online.service" in body
    )
    assert (data / "args.log").read_text().splitlines() == [
        f"{host.bin_dir}/colmena apply switch --on caliban,umbriel"
    ]
    assert (data / "cwd.log").read_text().splitlines() == [str(checkout / "non-critical-infra")]
    history = await alice.ask(room, "!deploy history", bot.user_id)
    rows = {line.split()[2]: line for line in history.body.splitlines()[1:]}
    assert "units_failed" in rows["umbriel"] and " ok " in rows["caliban"], history.body

    # The admin's mixed set: one run per hive (and one per nixos-rebuild host).
    (data / "fail-umbriel").unlink()
    (data / "args.log").unlink()
    mark = alice.mark()
    await alice.send(room, "!deploy umbriel,caliban boot")
    body = _new(await _final(alice, bot.user_id, "umbriel,caliban", mark))["body"]
    assert body.startswith("✅ umbriel,caliban (boot) deployed"), body
    assert "✅ umbriel: done" in body and "✅ caliban: done" in body
    assert (data / "args.log").read_text().splitlines() == [
        f"{host.bin_dir}/colmena apply boot --on umbriel,caliban"
    ]


async def test_fleet_status_is_one_table_with_drift_and_unreachable_rows(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
    tmp_path: Path,
) -> None:
    host, _, checkout = deploy_env
    # titan runs on another host: a newer release, another time zone, not rebooted since.
    other = LocalSshServer(tmp_path / "titan")
    other.script("nixos-version", "echo '24.11.20241201.abcdef0 (Vicuna)'\n")
    other.script("readlink", _readlink(booted=OLD_SYSTEM))
    other.script("stat", STAT)
    other.script("timedatectl", "echo UTC\n")
    other.script("systemctl", "true\n")
    await other.start()
    known = tmp_path / "fleet_known_hosts"
    known.write_text(host.known_hosts.read_text() + other.known_hosts.read_text())
    targets = {
        "pluto": host.target,
        "mimas": host.target,
        "titan": other.target,
        "caliban": "root@127.0.0.1:1",  # nothing listens there
        "umbriel": host.target,
    }
    hives = _hives_config(host, checkout, targets=targets)

    def edit(raw: dict[str, Any]) -> None:
        hives(raw)
        raw["deploy"]["ssh"] = {
            "known_hosts": str(known),
            "client_keys": [str(host.client_key), str(other.client_key)],
        }

    bot = make_bot(edit=edit)
    await bot.start()
    alice = people["alice"]
    try:
        fleet = await alice.ask(room, "!status", bot.user_id, timeout=60)
        lines = fleet.body.splitlines()
        assert lines[0].split()[:4] == ["host", "NixOS", "generation", "reboot"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert list(rows) == ["pluto", "mimas", "titan", "caliban", "umbriel"]
        pluto = rows["pluto"]
        assert "24.05.20241125.1925c60" in pluto and "142 (" in pluto and " ago)" in pluto
        assert " no " in pluto and "borgbackup-job-state.service" in pluto
        assert "Europe/Berlin" in pluto and "⚠️" not in pluto
        titan = rows["titan"]
        assert " yes " in titan and "UTC" in titan
        assert "⚠️ release 24.11 ≠ 24.05; time zone UTC ≠ Europe/Berlin" in titan
        assert "unreachable" in rows["caliban"]
        assert "cannot reach root@127.0.0.1:1 over SSH" in rows["caliban"]

        # Two hosts on two releases have no majority: both are flagged, not neither.
        pair = await alice.ask(room, "!status pluto,titan", bot.user_id, timeout=60)
        rows = {line.split()[0]: line for line in pair.body.splitlines()[1:]}
        assert "⚠️ release 24.05 ≠ the others; time zone Europe/Berlin" in rows["pluto"]
        assert "⚠️ release 24.11 ≠ the others; time zone UTC ≠ the others" in rows["titan"]

        group = await alice.ask(room, "!status @non-critical", bot.user_id, timeout=60)
        assert [x.split()[0] for x in group.body.splitlines()[1:]] == ["caliban", "umbriel"]
        one = await alice.ask(room, "!status titan", bot.user_id)
        assert "reboot pending: yes" in one.body and "time zone: UTC" in one.body
        down = await alice.ask(room, "!status caliban", bot.user_id)
        assert down.body.startswith("❌ cannot reach root@127.0.0.1:1 over SSH")
    finally:
        await other.stop()


async def test_one_colmena_run_per_hive_and_its_cancel_need_every_hosts_role(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    """Two groups sharing one hive: the admin's set runs as one colmena, so cancelling it
    stops hosts of both groups and needs both roles; a host with its own extra_args runs
    apart (one command line cannot give each host its own)."""
    host, data, checkout = deploy_env

    def edit(raw: dict[str, Any]) -> None:
        _deploy_config(host, checkout)(raw)
        raw["permissions"]["roles"]["deploy-critical"] = {"users": ["@mallory:localhost"]}
        raw["hosts"] = {
            "critical": {
                "method": "colmena",
                "dir": "build",
                "role": "deploy-critical",
                "hosts": [{"name": "pluto", "target": "root@pluto.nixos.org"}],
            },
            "canary": {
                "method": "colmena",
                "dir": "build",
                "role": "deploy",
                "hosts": [
                    {"name": "caliban", "target": "root@caliban.nixos.org"},
                    {
                        "name": "umbriel",
                        "target": "root@umbriel.nixos.org",
                        "extra_args": ["--keep-result"],
                    },
                ],
            },
        }

    bot = make_bot(edit=edit)
    await bot.start()
    bob, alice = people["bob"], people["alice"]
    (data / "mode").write_text("slow")
    mark = alice.mark()
    await alice.send(room, "!deploy pluto,caliban,umbriel")
    for node in ("pluto", "caliban", "umbriel"):
        said = f"Evaluating {node}"
        await alice.wait_for(
            lambda e: e.sender == bot.user_id and said in e.body,  # noqa: B023 (awaited here)
            after=mark,
            timeout=30,
        )
    assert sorted((data / "args.log").read_text().splitlines()) == [
        f"{host.bin_dir}/colmena apply switch --on pluto,caliban",
        f"{host.bin_dir}/colmena apply switch --on umbriel --keep-result",
    ]

    # bob holds caliban's role, not pluto's: he may not stop pluto's deploy through caliban.
    refused = await bob.ask(room, "!deploy cancel caliban", bot.user_id)
    assert "needs the deploy-critical role (pluto)" in refused.body, refused.body
    assert "cancelling" not in refused.body
    assert set(bot.rt[DEPLOY].running) == {"pluto", "caliban", "umbriel"}
    # His own host running alone is his to cancel.
    cancelled = await bob.ask(room, "!deploy cancel umbriel", bot.user_id)
    assert "cancelling the deploy of umbriel" in cancelled.body
    body = _new(await _final(alice, bot.user_id, "umbriel", mark, timeout=60))["body"]
    assert body.startswith("🛑 umbriel (switch) cancelled"), body
    cancelled = await alice.ask(room, "!deploy cancel caliban", bot.user_id)
    assert "cancelling the deploy of pluto,caliban" in cancelled.body
    body = _new(await _final(alice, bot.user_id, "pluto,caliban", mark, timeout=60))["body"]
    assert body.startswith("🛑 pluto,caliban (switch) cancelled"), body


async def test_a_request_waiting_across_a_restart_says_it_was_dropped(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    """The waiting lives in memory: after a restart, its prompt must not keep inviting a
    confirmation no one will answer. A confirmed request is not announced."""
    host, data, checkout = deploy_env
    bot = make_bot(edit=_hives_config(host, checkout))
    await bot.start()
    alice, mallory = people["alice"], people["mallory"]

    done = await alice.ask(room, "!deploy titan", bot.user_id)
    done_id = done.body.split("!confirm ", 1)[1].split("`")[0]
    mark = alice.mark()
    await mallory.send(room, f"!confirm {done_id}")
    body = _new(await _final(alice, bot.user_id, "titan", mark))["body"]
    assert body.startswith("✅ titan (switch) deployed"), body

    prompt = await alice.ask(room, "!deploy pluto,mimas boot", bot.user_id)
    cid = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    await bot.stop()

    mark = alice.mark()
    again = make_bot(edit=_hives_config(host, checkout))
    await again.start()
    dropped = await alice.wait_for(
        lambda e: (
            (e.content.get("m.relates_to") or {}).get("event_id") == prompt.event_id
            and "dropped" in _new(e).get("body", "")
        ),
        after=mark,
    )
    assert (
        f"deploy request {cid} (pluto,mimas, boot) by @alice:localhost was dropped by a bot "
        "restart before anyone confirmed it; nothing was deployed. "
        "Ask again: `!deploy pluto,mimas boot`."
    ) in _new(dropped)["body"]
    late = await mallory.ask(room, f"!confirm {cid}", again.user_id)
    assert "No deploy request" in late.body
    # The answer above comes after every start-up announcement: the confirmed one had none.
    assert not any(done_id in e.body and e.sender == again.user_id for e in alice.seen[mark:]), [
        e.body for e in alice.seen[mark:]
    ]
    assert len((data / "args.log").read_text().splitlines()) == 1


async def test_a_confirmation_prompt_across_midnight_at_a_month_end_gives_the_date(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    deploy_env: tuple[LocalSshServer, Path, Path],
) -> None:
    host, _, checkout = deploy_env
    clock = ManualClock(datetime(2026, 3, 31, 23, 58, tzinfo=UTC))
    bot = make_bot(edit=_hives_config(host, checkout, confirm_timeout="5m"), clock=clock)
    await bot.start()
    alice, mallory = people["alice"], people["mallory"]
    prompt = await alice.ask(room, "!deploy pluto", bot.user_id)
    assert "until 2026-04-01 00:03:00 UTC (within 5 min)" in prompt.body, prompt.body
    cid = prompt.body.split("!confirm ", 1)[1].split("`")[0]
    await clock.advance(timedelta(minutes=4, seconds=59))
    mark = alice.mark()
    ok = await mallory.ask(room, f"!confirm {cid}", bot.user_id)
    assert "confirmed by @mallory:localhost" in ok.body, ok.body
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("✅ pluto (switch) deployed"), body
