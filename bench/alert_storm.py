"""Alertmanager webhooks into the room: latency of one alert, and a storm of 5,000 alerts.

Measures, on a loopback Synapse with infrabot running as a subprocess:
- a raw Matrix send's latency (a nio client sends, a room member sees it) — the baseline;
- one webhook at a time: webhook response time and webhook → message visible to a member;
- a storm: 500 webhooks of 10 alerts each, sent as fast as possible (--in-flight, default 20):
  webhook p50/p99, how many groups reached the room, end-to-end p50/p99, the time to drain;
- the same arrivals through an ideal relay (a raw client, no webhook cost, the bot stopped)
  that sends one message at a time with everything that arrived meanwhile: the floor for any
  relay that keeps a room's messages in order on this homeserver.

With --rate-limit 1/1 the bot's sends are rate-limited during the storm (Synapse's admin API):
it must coalesce rather than fall behind.

    .venv/bin/python -m bench.alert_storm [--webhooks 500] [--in-flight 20] [--rate-limit 1/1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from functools import partial

import aiohttp

from bench.common import bench_room, bot_config, cpu_seconds, free_port, pct, start_bot, stop_bot
from bench.webhook_load import payload
from bot.mentions import NOBODY
from commands.alerts.payload import parse_notification
from commands.alerts.render import digest_line, render_batch
from devstack.client import RoomUser, SeenEvent


def titles(body: str) -> list[str]:
    """The groups a message shows: its title(s), or each line of a storm digest."""
    lines = body.splitlines()
    if lines and "🌩️ Alert storm" in lines[0]:
        return [line.split(" · ", 1)[1].split(" — ")[0] for line in lines if line.startswith("• ")]
    return [line.rsplit("· ", 1)[-1] for line in lines if "FIRING" in line and " · " in line]


def is_event(event_id: str, event: SeenEvent) -> bool:
    """Whether `event` is the one with `event_id`."""
    return event.event_id == event_id


async def bot_metric(session: aiohttp.ClientSession, port: int, name: str) -> int:
    """One counter from the bot's /metrics (0 while it has no value)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[-1]))
    return 0


async def bot_syncs(session: aiohttp.ClientSession, port: int) -> int:
    """How many sync requests the bot has made so far."""
    return await bot_metric(session, port, "infrabot_sync_request_seconds_count")


async def bot_sends(session: aiohttp.ClientSession, port: int) -> tuple[int, int]:
    """Events the bot has sent, and send attempts that failed (e.g. refused: rate limit)."""
    sent = await bot_metric(session, port, "infrabot_messages_sent_total")
    return sent, await bot_metric(session, port, 'infrabot_errors_total{where="outbox"}')


async def ideal_relay(
    sender: RoomUser, room: str, arrivals: list[tuple[str, float]], alerts: int
) -> dict[str, float]:
    """The storm through a relay that costs nothing: the same arrivals, one send at a time.

    Each send carries every group that arrived while the previous one was out, rendered as the
    bot renders a storm message; arrivals are offsets in seconds. Returns each group's arrival
    (time.perf_counter() clock). This is the floor for any relay that keeps a room's messages
    in order on this homeserver.
    """
    lines = {
        name: digest_line(parse_notification(json.dumps(payload(name, alerts)).encode()))
        for name, _ in arrivals
    }
    start = time.perf_counter()
    index = 0
    while index < len(arrivals):
        wait = arrivals[index][1] - (time.perf_counter() - start)
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.perf_counter() - start
        batch = []
        while index < len(arrivals) and arrivals[index][1] <= now:
            batch.append(arrivals[index][0])
            index += 1
        text, html = render_batch(None, [lines[name] for name in batch], NOBODY)
        content = {
            "msgtype": "m.notice",
            "body": text,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
        }
        await sender.send(room, text, content)
    return {name: start + offset for name, offset in arrivals}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--alerts-per-webhook", type=int, default=10)
    parser.add_argument("--single", type=int, default=40)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument(
        "--rate-limit",
        metavar="PER_SECOND/BURST",
        help="rate-limit the bot's sends during the storm (Synapse admin API), e.g. 1/1",
    )
    args = parser.parse_args()

    with bench_room("storm", ["raw", "bot"]) as bench:
        hs, room, user = bench.hs, bench.room, bench.person
        raw, bot = bench.accounts["raw"], bench.accounts["bot"]
        person = RoomUser(hs.url, user.user_id, user.access_token)
        await person.start()

        # Baseline: one raw send, seen by the member.
        sender = RoomUser(hs.url, raw.user_id, raw.access_token)
        raw_lat = []
        for i in range(args.single):
            t0 = time.perf_counter()
            event_id = await sender.send(room, f"raw {i}")
            await person.wait_for(partial(is_event, event_id), timeout=30)
            raw_lat.append((time.perf_counter() - t0) * 1000)
        await sender.client.close()

        port = free_port()
        config = bot_config(bench, bot, port, alertmanager={}, logging={"level": "WARNING"})
        proc = await asyncio.to_thread(start_bot, config, port, False)
        url = f"http://127.0.0.1:{port}/alertmanager"
        seen_at: dict[str, float] = {}
        senders = {bot.user_id, raw.user_id}

        async def watch() -> None:
            index = 0
            while True:
                async with person._changed:
                    await person._changed.wait()
                for event in person.seen[index:]:
                    if event.sender in senders and "m.new_content" not in event.content:
                        for name in titles(event.body):
                            seen_at.setdefault(name, time.perf_counter())
                index = len(person.seen)

        watcher = asyncio.get_running_loop().create_task(watch())
        async with aiohttp.ClientSession() as session:
            # One webhook at a time (after a few to warm up templates and connections).
            for i in range(3):
                body = json.dumps(payload(f"Warmup{i}", 1)).encode()
                async with session.post(url, data=body) as resp:
                    assert resp.status == 200
            while not all(f"Warmup{i}" in seen_at for i in range(3)):
                await asyncio.sleep(0.01)
            single_hook, single_e2e = [], []
            for i in range(args.single):
                name = f"Single{i}"
                body = json.dumps(payload(name, 1)).encode()
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    assert resp.status == 200, await resp.text()
                single_hook.append((time.perf_counter() - t0) * 1000)
                while name not in seen_at:
                    await asyncio.sleep(0.001)
                single_e2e.append((seen_at[name] - t0) * 1000)

            if args.rate_limit:
                per_second, burst = (int(x) for x in args.rate_limit.split("/"))
                admin = hs.register("storm-admin", "storm-admin-pw", admin=True)
                await asyncio.to_thread(hs.limit_messages, admin, bot.user_id, per_second, burst)
            sent_before, failed_before = await bot_sends(session, port)

            # The storm, from a separate lean process so that its CPU does not delay the watcher.
            loader = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.webhook_load",
                f"--port={port}",
                f"--webhooks={args.webhooks}",
                f"--alerts={args.alerts_per_webhook}",
                f"--in-flight={args.in_flight}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,  # its report is one JSON line, ~100 bytes per webhook
            )
            assert loader.stdin is not None and loader.stdout is not None
            assert (await loader.stdout.readline()).strip() == b"ready"
            assert hs.proc is not None
            pids = {
                "bot": proc.pid,
                "synapse": hs.proc.pid,
                "load": loader.pid,
                "bench": os.getpid(),
            }
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            syncs_before = await bot_syncs(session, port)
            loader.stdin.write(b"go\n")
            await loader.stdin.drain()
            report = json.loads(await loader.stdout.readline())
            cpu_load = cpu_seconds(loader.pid) - cpu_before["load"]
            await loader.wait()
            storm_start = report["started"]
            sent_at = {name: t0 for name, t0, _, _ in report["results"]}
            hook_ms = [ms for _, _, ms, _ in report["results"]]
            assert all(status == 200 for *_, status in report["results"])
            accepted_s = max(t0 + ms / 1000 for _, t0, ms, _ in report["results"]) - storm_start
            names = list(sent_at)
            deadline = time.perf_counter() + 300
            while time.perf_counter() < deadline and not all(n in seen_at for n in names):
                await asyncio.sleep(0.005)
            drained_s = time.perf_counter() - storm_start
            cpu_used = {
                name: round(cpu_seconds(pid) - cpu_before[name], 2)
                for name, pid in pids.items()
                if name != "load"
            }
            cpu_used["load"] = round(cpu_load, 2)
            syncs = await bot_syncs(session, port) - syncs_before
            sent_after, failed_after = await bot_sends(session, port)
        stop_bot(proc)
        delivered = [n for n in names if n in seen_at]
        e2e = [(seen_at[n] - sent_at[n]) * 1000 for n in delivered]

        # The same arrivals through a relay that costs nothing, with the bot stopped (not
        # comparable when only the bot is rate-limited).
        ideal_at: dict[str, float] = {}
        if not args.rate_limit:
            ideal_sender = RoomUser(hs.url, raw.user_id, raw.access_token)
            arrivals = sorted(
                ((f"Ideal{n.removeprefix('Storm')}", sent_at[n] - storm_start) for n in names),
                key=lambda item: item[1],
            )
            ideal_at = await ideal_relay(ideal_sender, room, arrivals, args.alerts_per_webhook)
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline and not all(n in seen_at for n in ideal_at):
                await asyncio.sleep(0.005)
            await ideal_sender.client.close()
        ideal = [(seen_at[n] - t0) * 1000 for n, t0 in ideal_at.items() if n in seen_at]
        watcher.cancel()
        await person.close()
        raw_med = statistics.median(raw_lat)
        result = {
            "raw_send_median_ms": round(raw_med, 1),
            "raw_send_p99_ms": round(pct(raw_lat, 0.99), 1),
            "single_webhook_p50_ms": round(statistics.median(single_hook), 2),
            "single_webhook_p99_ms": round(pct(single_hook, 0.99), 2),
            "single_e2e_p50_ms": round(statistics.median(single_e2e), 1),
            "single_e2e_p90_ms": round(pct(single_e2e, 0.9), 1),
            "single_e2e_p99_ms": round(pct(single_e2e, 0.99), 1),
            "single_e2e_p50_vs_raw_median": round(statistics.median(single_e2e) / raw_med, 2),
            "single_e2e_p99_vs_raw_p99": round(pct(single_e2e, 0.99) / pct(raw_lat, 0.99), 2),
            "storm_alerts": args.webhooks * args.alerts_per_webhook,
            "storm_webhooks": args.webhooks,
            "storm_in_flight": args.in_flight,
            "storm_webhook_p50_ms": round(statistics.median(hook_ms), 2),
            "storm_webhook_p99_ms": round(pct(hook_ms, 0.99), 2),
            "storm_accepted_in_s": round(accepted_s, 2),
            "storm_delivered": f"{len(delivered)}/{len(names)}",
            "storm_e2e_p50_ms": round(statistics.median(e2e), 1) if e2e else None,
            "storm_e2e_p99_ms": round(pct(e2e, 0.99), 1) if e2e else None,
            "storm_drained_in_s": round(drained_s, 2),
            "ideal_relay_delivered": f"{len(ideal)}/{len(ideal_at)}",
            "ideal_relay_e2e_p50_ms": round(statistics.median(ideal), 1) if ideal else None,
            "ideal_relay_e2e_p99_ms": round(pct(ideal, 0.99), 1) if ideal else None,
            "storm_e2e_p99_vs_ideal_relay_p99": round(pct(e2e, 0.99) / pct(ideal, 0.99), 2)
            if e2e and ideal
            else None,
            "storm_cpu_s": cpu_used,
            "storm_bot_sync_requests": syncs,
            "storm_rate_limit": args.rate_limit or "none (relaxed)",
            "storm_bot_sends": sent_after - sent_before,
            "storm_bot_sends_refused_or_failed": failed_after - failed_before,
            "storm_room_messages": sum(
                1
                for e in person.seen
                if e.sender == bot.user_id and titles(e.body) and "Storm" in e.body
            ),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
