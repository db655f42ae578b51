"""`!deploy` end to end: a real SSH server running fake nixos-rebuild/colmena, a real Synapse."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.client import RoomUser, SeenEvent
from devstack.ssh import LocalSshServer
from tests.conftest import BotFactory

SHA = "3f2c1a9b8e7d6c5b4a39281706f5e4d3c2b1a098"

NIXOS_REBUILD = r"""
echo "$0 $*" >> "$DATA/args.log"
pwd >> "$DATA/cwd.log"
echo $$ > "$DATA/pid"
mode=$(cat "$DATA/mode" 2>/dev/null || echo ok)
echo "building the system configuration..."
echo "these 3 derivations will be built:"
echo "  /nix/store/9k1x2-nixos-system-pluto-24.05.20241125.drv"
echo "building '/nix/store/9k1x2-nixos-system-pluto-24.05.20241125.drv'..."
case "$mode" in
  slow) for i in $(seq 1 600); do echo "still building ($i)"; sleep 0.1; done ;;
  flood) seq 1 10000 | sed 's/^/copying path \/nix\/store\/hash-path-/' ;;
esac
if [ "$mode" = fail ]; then
  echo "error: builder for '/nix/store/9k1x2-nixos-system-pluto.drv' failed with exit code 1" >&2
  echo "error: 1 dependencies of derivation failed to build" >&2
  exit 1
fi
echo "copying 12 paths..."
echo "activating the configuration..."
echo "setting up /etc..."
echo "restarting the following units: nginx.service"
echo "Done. The new configuration is /nix/store/abc-nixos-system-pluto-24.05"
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


@pytest.fixture
async def deploy_env(tmp_path: Path) -> AsyncIterator[tuple[LocalSshServer, Path, Path]]:
    host = LocalSshServer(tmp_path / "ssh")
    data = tmp_path / "data"
    data.mkdir()
    checkout = tmp_path / "infra"
    (checkout / "build").mkdir(parents=True)
    os.environ["DATA"] = str(data)  # the SSH server's commands inherit this
    host.script("nixos-rebuild", NIXOS_REBUILD)
    host.script("colmena", NIXOS_REBUILD.replace("nixos-system-pluto", "nixos-system-haumea"))
    host.script("git", GIT)
    host.script("nixos-version", "echo '24.05.20241125.abcdef (Uakari)'\n")
    host.script("readlink", "echo /nix/var/nix/profiles/system-142-link\n")
    host.script(
        "systemctl",
        "echo 'borgbackup-job-state.service loaded failed failed BorgBackup job state'\n",
    )
    await host.start()
    yield host, data, checkout
    await host.stop()
    os.environ.pop("DATA", None)


def _deploy_config(
    host: LocalSshServer, checkout: Path, known_hosts: Path | None = None, **extra: Any
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
            and _new(e)["body"][:2] in ("✅ ", "❌ ", "🛑 ", "⏱️")
        ),
        timeout=timeout,
        after=after,
    )


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
    assert "requested by @bob:localhost" in body and "Done. The new configuration" in body
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
    assert "1 dependencies of derivation failed to build" in body

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
        lambda e: e.sender == bot.user_id and "still building" in e.body, after=mark, timeout=20
    )
    locked = await alice.ask(room, "!deploy pluto boot", bot.user_id)
    assert "pluto is being deployed by @bob:localhost since" in locked.body
    pid = int((data / "pid").read_text())
    cancelled = await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    assert "cancelling" in cancelled.body
    body = _new(await _final(alice, bot.user_id, "pluto", mark))["body"]
    assert body.startswith("🛑 pluto (switch) cancelled") and "cancelled by @bob:localhost" in body
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the remote nixos-rebuild kept running"
        await asyncio.sleep(0.2)
    nothing = await bob.ask(room, "!deploy cancel pluto", bot.user_id)
    assert "No deploy of pluto is running" in nothing.body

    # The SSH connection drops in the middle of a deploy.
    mark = alice.mark()
    await bob.send(room, "!deploy pluto")
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and "still building" in e.body, after=mark, timeout=20
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
    bot = make_bot(edit=_deploy_config(host, checkout, confirm_timeout="3s"))
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

    # Unconfirmed requests expire.
    prompt = await bob.ask(room, "!deploy mimas", bot.user_id)
    expired = await alice.wait_for(
        lambda e: (
            (e.content.get("m.relates_to") or {}).get("event_id") == prompt.event_id
            and "expired" in _new(e).get("body", "")
        ),
        timeout=15,
    )
    assert "nothing was deployed" in _new(expired)["body"]
    late = await bob.ask(
        room, f"!confirm {prompt.body.split('!confirm ', 1)[1].split('`')[0]}", bot.user_id
    )
    assert "No deploy request" in late.body


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
        lambda e: e.sender == timed.user_id and "still building" in e.body, after=mark, timeout=20
    )
    await timed.stop()
    again = make_bot(edit=_deploy_config(host, checkout))
    await again.start()
    note = await alice.wait_for(
        lambda e: e.sender == again.user_id and "interrupted by a bot restart" in e.body, after=mark
    )
    assert "the deploy of pluto (switch) requested by @bob:localhost" in note.body
    history = await alice.ask(room, "!deploy history", again.user_id)
    assert "interrupted" in history.body and "timeout" in history.body

    status = await alice.ask(room, "!status local", again.user_id)
    assert "NixOS: 24.05.20241125.abcdef (Uakari)" in status.body
    assert "system: /nix/var/nix/profiles/system-142-link" in status.body
    assert "failed units: borgbackup-job-state.service" in status.body and "uptime: " in status.body
    unknown = await alice.ask(room, "!status nowhere", again.user_id)
    assert "Unknown host `nowhere`" in unknown.body
