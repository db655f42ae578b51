"""Does a deploy streaming 100,000 lines slow the bot's other work? `!ping` idle vs during.

Starts a loopback Synapse, an SSH server (in this process) whose fake nixos-rebuild prints
100,000 lines over ~10 s, and infrabot as a subprocess. Measures `!ping` round trips with the
bot idle, then while the deploy streams, and prints both and their ratio (target: at most 2 times).

    .venv/bin/python -m bench.deploy_ping [--pings 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time

from bench.common import bench_room, bot_config, free_port, pct, start_bot, stop_bot
from bench.ping import measure
from devstack.client import RoomUser
from devstack.ssh import LocalSshServer

FLOOD = r"""for i in $(seq 1 100); do
  seq 1 1000 | sed "s|^|copying path '/nix/store/$i-hash-package-|; s|$|' to 'ssh://root@pluto'...|"
  sleep 0.1
done
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pings", type=int, default=20)
    args = parser.parse_args()
    proc: subprocess.Popen[bytes] | None = None
    with bench_room("deploy", ["bot"]) as bench:
        ssh = LocalSshServer(bench.work / "ssh")
        ssh.script("nixos-rebuild", FLOOD)
        ssh.script("git", "echo 3f2c1a9b8e7d6c5b4a39281706f5e4d3c2b1a098\n")
        await ssh.start()
        hs, room, user, bot = bench.hs, bench.room, bench.person, bench.accounts["bot"]
        port = free_port()
        (bench.work / "infra").mkdir()
        config = bot_config(
            bench,
            bot,
            port,
            permissions={"roles": {"admin": {"users": [user.user_id]}}},
            hosts=[{"name": "pluto", "target": "root@pluto.example.org"}],
            deploy={
                "runner": ssh.target,
                "checkout": str(bench.work / "infra"),
                "ssh": {"known_hosts": str(ssh.known_hosts), "client_keys": [str(ssh.client_key)]},
            },
            logging={"level": "WARNING"},
        )
        proc = await asyncio.to_thread(start_bot, config, port, False)
        person = RoomUser(hs.url, user.user_id, user.access_token)
        await person.start()
        await measure(person, room, bot.user_id, 3)
        idle = await measure(person, room, bot.user_id, args.pings)

        t0 = time.perf_counter()
        await person.send(room, "!deploy pluto")
        busy: list[float] = []
        done = False
        while not done:
            busy += await measure(person, room, bot.user_id, 1)
            done = any(
                e.sender == bot.user_id
                and e.content.get("m.new_content", {}).get("body", "").startswith(("✅", "❌"))
                for e in person.seen
            )
        deploy_s = time.perf_counter() - t0
        final = next(
            e.content["m.new_content"]["body"].splitlines()[0]
            for e in person.seen
            if e.sender == bot.user_id
            and e.content.get("m.new_content", {}).get("body", "").startswith(("✅", "❌"))
        )
        await person.close()
        result = {
            "idle_ping_median_ms": round(statistics.median(idle), 1),
            "idle_ping_p90_ms": round(pct(idle, 0.9), 1),
            "during_deploy_ping_median_ms": round(statistics.median(busy), 1),
            "during_deploy_ping_p90_ms": round(pct(busy, 0.9), 1),
            "ratio_median": round(statistics.median(busy) / statistics.median(idle), 2),
            "pings_during_deploy": len(busy),
            "deploy_lines": 100_000,
            "deploy_seconds": round(deploy_s, 1),
            "deploy_result": final,
        }
        print(json.dumps(result, indent=2, ensure_ascii=False))
        stop_bot(proc)
        await ssh.stop()


if __name__ == "__main__":
    asyncio.run(main())
