"""`infrabot demo`: a local Synapse with a room and users, and the bot serving it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.app import Bot
from bot.cli import load, load_registry, secret_values, serve
from bot.logs import setup_logging
from devstack.alertmanager import LocalAlertmanager
from devstack.client import RoomUser
from devstack.moto import LocalMoto, daily_results
from devstack.postgres import LocalPostgres
from devstack.ssh import LocalSshServer
from devstack.synapse import Account, LocalSynapse, free_port

log = logging.getLogger(__name__)


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _passwords(base: Path) -> dict[str, str]:
    path = base / "passwords.json"
    if path.exists():
        saved: dict[str, str] = json.loads(path.read_text())
        return saved
    pw = {name: secrets.token_urlsafe(12) for name in ("admin", "infrabot")}
    path.write_text(json.dumps(pw))
    path.chmod(0o600)
    return pw


def demo_config(
    hs: LocalSynapse, base: Path, bot: Account, admin: Account, http_port: int, am_url: str
) -> dict[str, Any]:
    """The config the demo bot runs with (written to <dir>/config.yaml for reference)."""
    token_file = base / "bot-access-token"
    token_file.write_text(bot.access_token)
    token_file.chmod(0o600)
    return {
        "matrix": {
            "homeserver": hs.url,
            "user_id": bot.user_id,
            "access_token_file": str(token_file),
            "rooms": [f"#infra:{hs.server_name}"],
        },
        "permissions": {
            "roles": {
                "admin": {"users": [admin.user_id]},
                "operator": {"min_power_level": 50},
            }
        },
        "http": {"host": "127.0.0.1", "port": http_port},
        "alertmanager": {"url": am_url},
        "state": {"data_dir": str(base / "state")},
        "schedules": [
            {
                "name": "standup-reminder",
                "cron": "0 9 * * 1-5",
                "job": "message",
                "params": {"text": "Good morning! Anything on fire? `!jobs` lists what runs here."},
            }
        ],
    }


# The demo host's fake tools: pluto's ZFS snapshots are fresh, its zrepl job is 3 days stale.
# `zfs list -H -p -t snapshot -o name,creation,used … DATASET…` as OpenZFS 2.2 prints it
# (man/man8/zfs-list.8: tab-separated fields, creation in epoch seconds, used in bytes;
# cmd/zfs/zfs_iter.c: a dataset that does not exist is reported on stderr, the others are
# still listed, exit status 1). Snapshot names as zrepl's snapper makes them.
FAKE_ZFS = r"""now=$(date +%s)
snap=$(date -u -d @$((now-600)) +%Y%m%d_%H%M%S_000)
[ "$1" = list ] && shift
while [ $# -gt 0 ]; do
  case "$1" in -t|-o|-s|-S|-d) shift 2;; -*) shift;; *) break;; esac
done
rc=0
for ds in "$@"; do
  case "$ds" in
    zroot/pg|zroot/root) printf '%s@zrepl_%s\t%s\t52428800\n' "$ds" "$snap" $((now-600));;
    *) echo "cannot open '$ds': dataset does not exist" >&2; rc=1;;
  esac
done
exit $rc
"""
# `zrepl status --mode raw` as zrepl 0.6 prints it: daemon/daemon.go `Status` (Jobs, Global;
# the internal _control job included), daemon/job/job.go `Status.MarshalJSON` (a job's status
# under its type name), daemon/job/active.go `ActiveSideStatus` (Snapshotting null: manual
# snapshotting), replication/report/replication_report.go (Report.FinishAt stays the zero
# time; the attempt has its own). Go prints times as RFC 3339 with nanoseconds.
FAKE_ZREPL = r"""start=$(date -u -d '3 days ago 7 minutes ago' +%Y-%m-%dT%H:%M:%S.%NZ)
finish=$(date -u -d '3 days ago 5 minutes ago' +%Y-%m-%dT%H:%M:%S.%NZ)
from=$(date -u -d '3 days ago 20 minutes ago' +zrepl_%Y%m%d_%H%M%S_000)
to=$(date -u -d '3 days ago 10 minutes ago' +zrepl_%Y%m%d_%H%M%S_000)
zero=0001-01-01T00:00:00Z
fs() {
  printf '{"Info":{"Name":"%s"},"State":"done","BlockedOn":"nothing","PlanError":null,' "$1"
  printf '"StepError":null,"CurrentStep":1,"Steps":[{"Info":{"From":"%s@%s","To":"%s@%s",' \
    "$1" "$from" "$1" "$to"
  printf '"Resumed":false,"BytesExpected":1263616,"BytesReplicated":1263616}}]}'
}
printf '{"Jobs":{"_control":{"type":"internal","internal":null},'
printf '"rsyncnet":{"type":"push","push":{"Replication":{"StartAt":"%s","FinishAt":"%s",' \
  "$start" "$zero"
printf '"WaitReconnectSince":"%s","WaitReconnectUntil":"%s","WaitReconnectError":null,' \
  "$zero" "$zero"
printf '"Attempts":[{"State":"done","StartAt":"%s","FinishAt":"%s","PlanError":null,' \
  "$start" "$finish"
printf '"Filesystems":[%s,%s]}]},' "$(fs zroot/pg)" "$(fs zroot/root)"
printf '"PruningSender":null,"PruningReceiver":null,"Snapshotting":null}}},'
printf '"Global":{"ZFSCmds":null,"Envconst":null}}\n'
"""


# What `nixos-rebuild switch --flake .#pluto --target-host … --use-substitutes` prints
# without a terminal (all on stderr): nixpkgs pkgs/os-specific/linux/nixos-rebuild/
# nixos-rebuild.sh (commit 00409d13, 24.05) logs "building the system configuration...";
# Nix's SimpleLogger (libutil/logging.cc, 2.18) prints activities as "<text>..."
# ("building '<drv>'", "copying N paths", "copying path '<p>' to 'ssh://…'", store-api.cc);
# switch-to-configuration-ng (nixpkgs pkgs/by-name/sw/switch-to-configuration-ng/src/src/
# main.rs, commit 17358245) prints "activating the configuration...", "reloading user units
# for <user>...", "restarting sysinit-reactivation.target", "restarting the following units:
# …"; "setting up /etc..." is the activation script's (nixos/modules/system/etc/etc.nix).
# nixos-rebuild prints nothing more on success.
FAKE_NIXOS_REBUILD = r"""name=nixos-system-pluto-24.05.20241125.1925c60
sys=/nix/store/0r2vq1m3bx8d7lq6c0cmx1y7f9n4pk2s-$name
etc=/nix/store/3ylq9wzb0pq5kv0q1x3jhcw8kq0a2yq4-etc.drv
echo "building the system configuration..." >&2
echo "these 2 derivations will be built:" >&2
echo "  $etc" >&2
echo "  $sys.drv" >&2
for d in "$etc" "$sys.drv"; do echo "building '$d'..." >&2; sleep 0.5; done
echo "copying 2 paths..." >&2
echo "copying path '$sys' to 'ssh://root@pluto.nixos.org'..." >&2
echo "activating the configuration..." >&2
echo "setting up /etc..." >&2
echo "reloading user units for root..." >&2
echo "restarting sysinit-reactivation.target" >&2
echo "restarting the following units: nginx.service" >&2
"""


def demo_deploys(ssh: LocalSshServer, base: Path) -> dict[str, Any]:
    """A demo host `pluto` whose deploy runs through the local SSH server."""
    checkout = base / "infra-checkout"
    checkout.mkdir(exist_ok=True)
    ssh.script("nixos-rebuild", FAKE_NIXOS_REBUILD)
    ssh.script("git", "echo 3f2c1a9b8e7d6c5b4a39281706f5e4d3c2b1a098\n")
    # nixpkgs nixos/modules/installer/tools/nixos-version.sh: "@version@ (@codeName@)".
    ssh.script("nixos-version", "echo '24.05.20241125.1925c60 (Uakari)'\n")
    # `systemctl --failed --no-legend --plain` prints nothing when no unit failed.
    ssh.script("systemctl", "true\n")
    return {
        "hosts": [{"name": "pluto", "target": ssh.target}],
        "deploy": {
            "runner": ssh.target,
            "checkout": str(checkout),
            "ssh": {"known_hosts": str(ssh.known_hosts), "client_keys": [str(ssh.client_key)]},
        },
    }


def demo_backups(ssh: LocalSshServer, pg: LocalPostgres) -> dict[str, Any]:
    """Backup checks against the demo's SSH host and PostgreSQL; one of them is stale."""
    ssh.script("zfs", FAKE_ZFS)
    ssh.script("zrepl", FAKE_ZREPL)
    return {
        "ssh": {"known_hosts": str(ssh.known_hosts), "client_keys": [str(ssh.client_key)]},
        "checks": [
            {
                "name": "pluto-zfs",
                "kind": "zfs_snapshots",
                "host": ssh.target,
                "datasets": ["zroot/pg", "zroot/root"],
                "max_age": "2h",
                "with_used": True,
            },
            {
                "name": "rsyncnet-zrepl",
                "kind": "zrepl",
                "host": ssh.target,
                "jobs": ["rsyncnet"],
                "max_age": "1h",
                "severity": "critical",
            },
            {"name": "demo-pg-wal", "kind": "postgres_archiving", "dsn": pg.dsn, "max_age": "1d"},
        ],
    }


def demo_aws(moto: LocalMoto) -> dict[str, Any]:
    """Sample spend (queued for many !costs calls) and a few idle resources in moto."""
    import boto3

    today = datetime.now(UTC).date()
    start = (today - timedelta(days=60)).isoformat()

    def day(i: int) -> dict[str, float]:
        return {
            "Amazon Simple Storage Service": 33.0 + (i % 7),
            "Amazon Elastic Compute Cloud - Compute": 52.0 - i * 0.3,
            "EC2 - Other": 11.0,
            "Amazon CloudFront": 4.5,
        }

    daily = daily_results(start, 60, day)
    # What `!costs` asks next: the month so far, or on the 1st the month just ended.
    first = today.replace(day=1)
    if today > first:
        span, amount = (first, today), 95.0 * (today.day - 1)
    else:
        span, amount = ((first - timedelta(days=1)).replace(day=1), first), 95.0 * 30
    month = [
        {
            "TimePeriod": {"Start": span[0].isoformat(), "End": span[1].isoformat()},
            "Total": {"UnblendedCost": {"Amount": f"{amount:.2f}", "Unit": "USD"}},
            "Groups": [],
        }
    ]
    moto.queue_cost_results([daily, month] * 25)
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - moto accepts any
    )
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    volume = ec2.create_volume(Size=200, AvailabilityZone="us-east-1a", VolumeType="gp2")
    ec2.create_snapshot(VolumeId=volume["VolumeId"], Description="old release mirror")
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m4.large")
    return {
        "endpoint_url": moto.url,
        "access_key_id": "demo",
        "secret_access_key": "demo",
        "snapshot_max_age": "0s",
        "baseline_monthly": 3300,
    }


@dataclass
class DemoStack:
    """The local servers the demo bot talks to."""

    base: Path
    hs: LocalSynapse
    am: LocalAlertmanager
    pg: LocalPostgres
    ssh: LocalSshServer
    moto: LocalMoto
    http_port: int


def run_demo(directory: str, check: bool = False) -> int:
    """Start everything, print how to log in, serve until Ctrl-C (or self-check with --check)."""
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        hs = LocalSynapse(base / "synapse", port=_port(8008))
        hs.prepare()
        hs.start()
        stack.callback(hs.stop)
        http_port = _port(8080)
        am = LocalAlertmanager(
            base / "alertmanager",
            f"http://127.0.0.1:{http_port}/alertmanager",
            port=_port(9093),
            group_wait="5s",
            group_interval="30s",
        )
        am.start()
        stack.callback(am.stop)
        # PostgreSQL runs as the unprivileged postgres user: its directory must be reachable.
        pg_dir = Path(tempfile.mkdtemp(prefix="infrabot-demo-pg-", dir="/tmp"))
        pg_dir.chmod(0o755)
        stack.callback(shutil.rmtree, pg_dir, True)
        pg = LocalPostgres(pg_dir / "pg")
        pg.start()
        stack.callback(pg.stop)
        pg.switch_wal()
        # Port 0: the OS picks a free port at bind time (a port probed earlier may be taken).
        ssh = LocalSshServer(base / "ssh")
        moto = LocalMoto(base / "moto")
        moto.start()
        stack.callback(moto.stop)
        demo = DemoStack(base, hs, am, pg, ssh, moto, http_port)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_main(demo, check))
    return 0


async def _main(demo: DemoStack, check: bool) -> int:
    hs, am = demo.hs, demo.am
    await demo.ssh.start()
    try:
        pw = _passwords(demo.base)
        admin = hs.register("admin", pw["admin"], admin=True)
        bot = hs.register("infrabot", pw["infrabot"])
        alias = f"#infra:{hs.server_name}"
        room = hs.resolve_alias(alias) or hs.create_room(
            admin, name="Infra", alias="infra", invite=[bot.user_id]
        )
        config_path = demo.base / "config.yaml"
        raw = demo_config(hs, demo.base, bot, admin, demo.http_port, am.url)
        raw["backups"] = demo_backups(demo.ssh, demo.pg)
        raw.update(demo_deploys(demo.ssh, demo.base))
        raw["aws"] = demo_aws(demo.moto)
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        registry = load_registry()
        config = load(str(config_path), registry)
        setup_logging("INFO", secret_values(config))
        print(
            f"""
infrabot demo is up.
  homeserver : {hs.url}   (log in with any Matrix client, e.g. Element: set this as the server)
  user       : admin
  password   : {pw["admin"]}
  room       : {alias}  ({room})
  bot        : {bot.user_id}, health on http://127.0.0.1:{demo.http_port}/healthz
  backups    : `!backups` checks a local SSH host's zfs/zrepl and a local PostgreSQL
  deploys    : `!deploy pluto` runs a (fake) nixos-rebuild over a local SSH server
  aws        : `!costs` and `!aws idle` answer from a local moto server with sample spend
  alerts     : Alertmanager {am.url} sends to the bot; fire a test alert with
               amtool --alertmanager.url={am.url} alert add SystemdUnitFailed \\
                 instance=pluto name=nginx.service severity=warning \\
                 --annotation=summary='nginx failed'
  config     : {config_path}
Say `!help` in the room. Ctrl-C stops everything.
""",
            file=sys.stderr,
        )
        if check:
            return await _self_check(Bot(config, registry), demo, admin, room)
        await serve(Bot(config, registry))
        return 0
    finally:
        await demo.ssh.stop()


async def _self_check(bot: Bot, demo: DemoStack, admin: Account, room: str) -> int:
    task = asyncio.get_running_loop().create_task(bot.run())
    user = RoomUser(demo.hs.url, admin.user_id, admin.access_token)
    labels = {"alertname": "DemoCheck", "instance": "pluto", "severity": "warning"}
    try:
        await asyncio.wait_for(bot.ready.wait(), 60)
        await user.start()
        bot_id = bot.config.core.matrix.user_id
        reply = await user.ask(room, "!ping", bot_id, timeout=30)
        print(f"demo check: the bot answered !ping with: {reply.body}")
        demo.am.fire(labels, {"summary": "the demo's self-check alert"})
        alert = await user.wait_for(
            lambda e: e.sender == bot_id and "DemoCheck" in e.body, timeout=60
        )
        print(f"demo check: Alertmanager's alert reached the room: {alert.body.splitlines()[0]}")
        demo.am.fire(labels, resolved=True)
        backups = await user.ask(room, "!backups", bot_id, timeout=60)
        print("demo check: !backups answered:\n" + backups.body)
        await user.send(room, "!deploy pluto")
        done = await user.wait_for(
            lambda e: (
                e.sender == bot_id
                and e.content.get("m.new_content", {}).get("body", "").startswith("✅ pluto")
            ),
            timeout=60,
        )
        print("demo check: " + done.content["m.new_content"]["body"].splitlines()[0])
        costs = await user.ask(room, "!costs", bot_id, timeout=60)
        print("demo check: " + costs.body.splitlines()[0])
        return 0
    except TimeoutError:
        print("demo check: the bot did not answer in time", file=sys.stderr)
        return 1
    finally:
        await user.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.demo [--dir DIR] [--check]`, as `scripts/demo.sh` runs it."""
    parser = argparse.ArgumentParser(
        prog="devstack.demo", description="A local Synapse and every real part, with the bot."
    )
    parser.add_argument("--dir", default=".infrabot-demo", help="where the demo keeps its data")
    parser.add_argument(
        "--check", action="store_true", help="ping, alert, back up, deploy, cost; print; exit"
    )
    args = parser.parse_args(argv)
    return run_demo(args.dir, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
