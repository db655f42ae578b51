"""`!ping` round trip of infrabot against a raw matrix-nio echo client, on a loopback Synapse.

Prints the median and p90 round trip (user sends, user sees the answer) of both, their ratio,
the bot's idle RSS and its time from process start to first answer. The raw client and the bot
each run alone as a subprocess (a live bot in the room would slow the baseline too), in
alternating rounds so that machine noise hits both alike.

    .venv/bin/python -m bench.ping [--rounds 3] [--pings 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, RoomMessageText, SyncResponse

from bench.common import bench_room, bot_config, free_port, pct, start_bot, stop_bot
from devstack.client import RoomUser


async def raw_echo(homeserver: str, user_id: str, token: str, room: str) -> None:
    """The baseline: the least a nio client can do to answer `!ping`."""
    client = AsyncClient(homeserver, user_id, config=AsyncClientConfig(request_timeout=60))
    client.access_token, client.user_id = token, user_id
    # A unique filter defeats Synapse's cache of identical initial syncs (it would replay).
    nonce = {"room": {"timeline": {"limit": 1, "not_types": [f"x.nonce.{time.time_ns()}"]}}}
    first = await client.sync(timeout=0, sync_filter=nonce)
    started_ms = int(time.time() * 1000)
    assert isinstance(first, SyncResponse)
    print("ready", flush=True)
    while True:
        resp = await client.sync(timeout=30000)
        if not isinstance(resp, SyncResponse):
            continue
        for room_id, info in resp.rooms.join.items():
            for ev in info.timeline.events:
                if (
                    isinstance(ev, RoomMessageText)
                    and ev.body == "!ping"
                    and ev.sender != user_id
                    and ev.server_timestamp >= started_ms
                ):
                    content = {
                        "msgtype": "m.notice",
                        "body": "pong",
                        "m.relates_to": {"m.in_reply_to": {"event_id": ev.event_id}},
                    }
                    await client.room_send(room_id, "m.room.message", content)


async def measure(user: RoomUser, room: str, responder: str, pings: int) -> list[float]:
    """Round trips in ms for `pings` sequential !ping commands."""
    out = []
    for _ in range(pings):
        t0 = time.perf_counter()
        await user.ask(room, "!ping", responder, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=30)
    args = parser.parse_args()

    with bench_room("bench", ["raw-echo", "bot"]) as bench:
        raw, bot = bench.accounts["raw-echo"], bench.accounts["bot"]
        hs, room, user = bench.hs, bench.room, bench.person
        http_port = free_port()
        config_path = bot_config(bench, bot, http_port)
        person = RoomUser(hs.url, user.user_id, user.access_token)
        await person.start()

        raw_times: list[float] = []
        bot_times: list[float] = []
        start_to_answer: list[float] = []
        rss: list[float] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for _ in range(args.rounds):
            echo = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.ping",
                    "--raw-echo",
                    hs.url,
                    raw.user_id,
                    raw.access_token,
                    room,
                ],
                stdout=subprocess.PIPE,
                env=env,
            )
            assert echo.stdout is not None
            echo.stdout.readline()  # "ready"
            await measure(person, room, raw.user_id, 3)  # warm-up
            raw_times += await measure(person, room, raw.user_id, args.pings)
            echo.terminate()
            echo.wait()

            t0 = time.perf_counter()
            proc = await asyncio.to_thread(start_bot, config_path, http_port)
            await person.ask(room, "!ping", bot.user_id, timeout=30)
            start_to_answer.append((time.perf_counter() - t0) * 1000)
            await measure(person, room, bot.user_id, 3)  # warm-up
            bot_times += await measure(person, room, bot.user_id, args.pings)
            await asyncio.sleep(3)
            rss.append(rss_mb(proc.pid))
            stop_bot(proc)
        await person.close()

        raw_med, bot_med = statistics.median(raw_times), statistics.median(bot_times)
        result = {
            "raw_nio_median_ms": round(raw_med, 1),
            "raw_nio_p90_ms": round(pct(raw_times, 0.9), 1),
            "infrabot_median_ms": round(bot_med, 1),
            "infrabot_p90_ms": round(pct(bot_times, 0.9), 1),
            "ratio_median": round(bot_med / raw_med, 3),
            "infrabot_idle_rss_mb": round(statistics.median(rss), 1),
            "infrabot_start_to_first_answer_ms": round(statistics.median(start_to_answer)),
            "samples_each": len(raw_times),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--raw-echo":
        asyncio.run(raw_echo(*sys.argv[2:6]))
    else:
        asyncio.run(main())
