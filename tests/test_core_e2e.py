"""The foundation end to end, through a real Synapse: users type commands, the bot answers."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import audit, job_runs, messages
from bot.clock import ManualClock
from bot.context import Context, JobContext
from bot.errors import RemoteError
from bot.registry import Router
from bot.store import open_store
from devstack.client import RoomUser, SeenEvent
from devstack.synapse import LocalSynapse
from tests.conftest import Accounts, BotFactory, both_stores

# The core's command checks run with the default prefix and with another one: every answer
# that names a command must name it with the prefix the config sets.
PREFIXES = pytest.mark.parametrize("p", ["!", "?"])


def _with_prefix(p: str) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["commands"] = {"prefix": p}

    return edit


def _names_commands_with(body: str, p: str) -> None:
    """No command in `body` is written with a prefix other than `p`."""
    for other in {"!", "?"} - {p}:
        wrong = re.findall(rf"(?:^|[\s`(]){re.escape(other)}[a-z]+", body)
        assert not wrong, f"{wrong} in {body!r}"


@PREFIXES
async def test_ping_and_help(
    p: str,
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    accounts: Accounts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bot = make_bot(edit=_with_prefix(p))
    await bot.start()
    alice = people["alice"]

    pong = await alice.ask(room, f"{p}ping", bot.user_id)
    assert pong.body.startswith("pong — heard you")
    assert pong.content["msgtype"] == "m.notice"
    assert "formatted_body" in pong.content

    helped = await alice.ask(room, f"{p}help", bot.user_id)
    assert f"{p}ping" in helped.body and f"{p}audit [count]" in helped.body
    assert f"`{p}help <command>` shows one in detail" in helped.body
    _names_commands_with(helped.body, p)

    # mallory has no role: the admin-only command is not offered to her.
    theirs = await people["mallory"].ask(room, f"{p}help", bot.user_id)
    assert f"{p}ping" in theirs.body and f"{p}audit" not in theirs.body
    assert "need a role you do not have" in theirs.body

    usage = await alice.ask(room, f"{p}help jobs run", bot.user_id)
    assert f"{p}jobs run <name>" in usage.body and "operator" in usage.body
    # As the list writes it, with the prefix, and with more words than the name.
    again = await alice.ask(room, f"{p}help {p}jobs run reminder", bot.user_id)
    assert again.body == usage.body
    helped_help = await alice.ask(room, f"{p}help help", bot.user_id)
    assert f"{p}help [command…]" in helped_help.body
    nothing = await alice.ask(room, f"{p}help nosuch", bot.user_id)
    assert f"No command `nosuch`. Send `{p}help` for the list." in nothing.body

    # Mentioning the bot works like the prefix.
    mentioned = await alice.ask(room, f"{accounts.bot.localpart}: ping", bot.user_id)
    assert mentioned.body.startswith("pong")
    for answer in (pong, theirs, usage, helped_help, nothing):
        _names_commands_with(answer.body, p)

    # The access token never reaches the log.
    assert accounts.bot.access_token not in caplog.text


@PREFIXES
async def test_unknown_command_bad_quoting_and_bad_arguments(
    p: str, make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot(edit=_with_prefix(p))
    await bot.start()
    alice = people["alice"]

    unknown = await alice.ask(room, f"{p}pnig", bot.user_id)
    assert "Unknown command `pnig`" in unknown.body
    assert f"Did you mean `{p}ping`" in unknown.body and f"`{p}help`" in unknown.body

    quoting = await alice.ask(room, f'{p}jobs run "reminder', bot.user_id)
    assert "could not read that command" in quoting.body
    assert "quote" in quoting.body

    missing = await alice.ask(room, f"{p}jobs run", bot.user_id)
    assert f"usage: `{p}jobs run <name>`" in missing.body
    assert f"`{p}help jobs run` says more" in missing.body

    wrong = await alice.ask(room, f"{p}jobs run nosuchjob", bot.user_id)
    assert "name: no job named `nosuchjob` (jobs: reminder)" in wrong.body
    assert f"usage: `{p}jobs run <name>`" in wrong.body

    count = await alice.ask(room, f"{p}audit lots", bot.user_id)
    assert "count: `lots` is not a whole number" in count.body
    assert f"usage: `{p}audit [count]`" in count.body
    too_many = await alice.ask(room, f"{p}audit 500", bot.user_id)
    assert "count: must be between 1 and 100, not 500" in too_many.body
    extra = await alice.ask(room, f"{p}ping now", bot.user_id)
    assert "unexpected `now`" in extra.body and f"usage: `{p}ping`" in extra.body

    for answer in (unknown, quoting, missing, wrong, count, too_many, extra):
        _names_commands_with(answer.body, p)
    # Each bad argument is audited as such.
    outcomes = [r.outcome for r in await audit.of_command(bot.rt.store, "audit")]
    assert outcomes == ["bad_input", "bad_input"]


@PREFIXES
async def test_roles_outsider_refused_and_audited(
    p: str,
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    accounts: Accounts,
) -> None:
    bot = make_bot(edit=_with_prefix(p))
    await bot.start()

    refused = await people["mallory"].ask(room, f"{p}jobs run reminder", bot.user_id)
    assert f"Sorry, `{p}jobs run` needs the operator role" in refused.body
    _names_commands_with(refused.body, p)

    # bob holds "operator" through his power level (50) in the room.
    mark = people["alice"].mark()
    ran = await people["bob"].ask(room, f"{p}jobs run reminder", bot.user_id)
    assert ran.body == "job reminder: ok: posted"
    posted = await people["alice"].wait_for(
        lambda e: e.sender == bot.user_id and "rotate the on-call pager" in e.body, after=mark
    )
    assert posted.content["msgtype"] == "m.notice"

    # alice is admin: she may read the audit log, which holds both attempts.
    log = await people["alice"].ask(room, f"{p}audit 5", bot.user_id)
    assert accounts.outsider.user_id in log.body and "denied" in log.body
    assert accounts.member.user_id in log.body
    assert "jobs run reminder" in log.body
    rows = await audit.recent(bot.rt.store, 10)
    outcomes = {(r.sender, r.command): r.outcome for r in rows}
    assert outcomes[(accounts.outsider.user_id, "jobs run")] == "denied"
    assert outcomes[(accounts.member.user_id, "jobs run")] == "ok"
    assert all(r.ended_at is not None for r in rows if r.command != "audit")
    assert [r.args for r in rows if r.command == "jobs run"] == [("reminder",), ("reminder",)]


@both_stores
async def test_command_sent_while_bot_is_down_is_never_run(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot()
    await bot.start()
    alice = people["alice"]
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")
    await bot.stop()

    stale_job = await alice.send(room, "!jobs run reminder")
    stale_ping = await alice.send(room, "!ping")
    # The server stamped both before answering; the next start must be a later millisecond.
    await asyncio.sleep(0.01)

    restarted = make_bot()
    await restarted.start()
    fresh = await alice.ask(room, "!ping", restarted.user_id)
    assert fresh.body.startswith("pong")
    # Barrier: the stale commands came in the same or an earlier sync batch than the fresh
    # one, so had they been run, their audit rows, their 👀 and their replies (posted before
    # any await, and delivered in order) would all have come before this answer.
    replies = [e for e in alice.seen if e.sender == restarted.user_id and e.room_id == room]
    about = {(e.content.get("m.relates_to") or {}).get("event_id") for e in replies}
    assert not any(e.replies_to(stale_job) or e.replies_to(stale_ping) for e in replies)
    assert stale_job not in about and stale_ping not in about
    assert not any("rotate the on-call pager" in e.body for e in replies)
    events = {r.event_id for r in await audit.recent(restarted.rt.store, 50)}
    assert stale_job not in events and stale_ping not in events


async def test_survives_a_homeserver_restart(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    bot = make_bot()
    await bot.start()
    alice = people["alice"]
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")
    status, _ = await bot.http("/healthz")
    assert status == 200

    synapse.stop()
    try:
        async with asyncio.timeout(120):  # a guard against a hang, not a measure of speed
            while True:
                status, body = await bot.http("/healthz")
                if status == 503:
                    break
                await asyncio.sleep(0.2)
        assert "failing" in body and "sync" in body
    finally:
        synapse.start()

    answer = await alice.ask(room, "!ping", bot.user_id, timeout=40)
    assert answer.body.startswith("pong")
    status, _ = await bot.http("/healthz")
    assert status == 200
    assert bot.task is not None and not bot.task.done()


@both_stores
async def test_scheduled_job_posts_and_missed_run_runs_once(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    def two_jobs(raw: dict[str, object]) -> None:
        raw["schedules"] = [
            {"name": "tick", "cron": "30 9 * * *", "job": "message", "params": {"text": "tick"}},
            {"name": "hourly", "cron": "0 * * * *", "job": "message", "params": {"text": "hourly"}},
        ]

    clock = ManualClock(datetime(2026, 11, 30, 9, 29, 50, tzinfo=UTC))
    bot = make_bot(edit=two_jobs, clock=clock)
    await bot.start()
    alice = people["alice"]
    early = await alice.ask(room, "!jobs", bot.user_id)
    assert "never run" in early.body and "2026-11-30 09:30 UTC (in 10 s)" in early.body
    await clock.set(datetime(2026, 11, 30, 9, 30, tzinfo=UTC))
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "tick")
    await clock.advance(timedelta(minutes=1))
    listing = await alice.ask(room, "!jobs", bot.user_id)
    assert "tick" in listing.body and "ok" in listing.body and "never run" in listing.body
    assert "2026-11-30 09:30 UTC (1 min ago)" in listing.body, "times from the bot's clock"
    assert "2026-12-01 09:30 UTC (in 23 h 59 min)" in listing.body
    # Pretend the hourly job last ran three hours ago, i.e. it missed runs while we were down.
    await bot.stop()
    store = await open_store(bot.rt.config.core.state)
    three_hours_ago = clock.time() - 3 * 3600
    run = await job_runs.start(
        store, "hourly", scheduled_for=three_hours_ago, trigger="schedule", now=three_hours_ago
    )
    await job_runs.end(store, run, "ok", "posted", now=three_hours_ago)
    await store.close()
    mark = alice.mark()
    again = make_bot(edit=two_jobs, clock=clock)
    await again.start()
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "hourly", after=mark)
    # Barrier: missed runs start with the scheduler, before any command is handled, and post
    # before their first await; a second one would have come before this answer.
    await alice.ask(room, "!ping", bot.user_id)
    hourly = [e for e in alice.seen[mark:] if e.sender == bot.user_id and e.body == "hourly"]
    assert len(hourly) == 1, "a missed run runs once, not once per missed slot"
    runs = await job_runs.of_job(again.rt.store, "hourly")
    assert [(r.trigger, r.outcome) for r in runs] == [("schedule", "ok"), ("missed", "ok")]
    assert runs[1].scheduled_for == datetime(2026, 11, 30, 9, 0, tzinfo=UTC).timestamp()
    # A second restart right away does not run it again.
    await again.stop()
    mark = alice.mark()
    third = make_bot(edit=two_jobs, clock=clock)
    await third.start()
    await alice.ask(room, "!ping", bot.user_id)  # barrier, as above
    assert not any(e.body == "hourly" for e in alice.seen[mark:])
    assert len(await job_runs.of_job(third.rt.store, "hourly")) == 2
    # Its next slot comes when the clock gets there.
    await clock.set(datetime(2026, 11, 30, 10, 0, tzinfo=UTC))
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "hourly", after=mark)


def _toolbox() -> Router:
    """Commands that exercise every way a handler can answer."""
    router = Router("toolbox")

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "slow work finished"

    async def broken() -> str:
        await asyncio.sleep(0.1)
        raise RemoteError("the SSH host pluto did not answer")

    async def crashing() -> str:
        raise ZeroDivisionError

    @router.command("show")
    async def show(ctx: Context) -> None:
        """Reply, edit, react, thread and upload."""
        first = await ctx.reply("step 1")
        await ctx.edit(first, "step 2")
        await ctx.react("✅")
        await ctx.thread("in the thread")
        await ctx.upload(b"line one\nline two\n", "deploy.log", "text/plain")

    @router.command("later")
    async def later(ctx: Context) -> None:
        """Start background work."""
        ctx.spawn(slow(), "slow work")
        ctx.spawn(broken(), "deploy of pluto")
        ctx.spawn(crashing(), "crashing work")
        await ctx.reply("started")

    @router.command("explode")
    async def explode(ctx: Context) -> None:
        """Fail unexpectedly."""
        raise KeyError("secret internals")

    return router


async def test_reply_edit_react_thread_upload_and_background_work(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    bot = make_bot(extra_routers=(_toolbox(),))
    await bot.start()
    alice = people["alice"]
    mark = alice.mark()
    command = await alice.send(room, "!show")

    def mine(e: SeenEvent) -> bool:
        return e.sender == bot.user_id

    first = await alice.wait_for(lambda e: mine(e) and e.replies_to(command), after=mark)
    assert first.body == "step 1"
    edit = await alice.wait_for(
        lambda e: mine(e) and e.content.get("m.relates_to", {}).get("rel_type") == "m.replace",
        after=mark,
    )
    assert edit.content["m.relates_to"]["event_id"] == first.event_id
    assert edit.content["m.new_content"]["body"] == "step 2"
    react = await alice.wait_for(lambda e: mine(e) and e.source["type"] == "m.reaction", after=mark)
    assert react.content["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": command,
        "key": "✅",
    }
    threaded = await alice.wait_for(lambda e: mine(e) and e.body == "in the thread", after=mark)
    assert threaded.content["m.relates_to"]["rel_type"] == "m.thread"
    assert threaded.content["m.relates_to"]["event_id"] == command
    upload = await alice.wait_for(
        lambda e: mine(e) and e.content.get("msgtype") == "m.file", after=mark
    )
    assert upload.content["body"] == "deploy.log" and upload.content["url"].startswith("mxc://")
    assert upload.content["info"]["size"] == len(b"line one\nline two\n")

    mark = alice.mark()
    await alice.send(room, "!later")
    done = await alice.wait_for(lambda e: mine(e) and e.body == "slow work finished", after=mark)
    assert done.content["m.relates_to"]["rel_type"] == "m.thread"
    failed = await alice.wait_for(
        lambda e: mine(e) and "deploy of pluto failed" in e.body, after=mark
    )
    assert "did not answer" in failed.body
    crashed = await alice.wait_for(
        lambda e: mine(e) and "crashing work failed" in e.body, after=mark
    )
    assert "ref " in crashed.body and "ZeroDivision" not in crashed.body

    boom = await alice.ask(room, "!explode", bot.user_id)
    assert "failed unexpectedly (ref " in boom.body and "secret internals" not in boom.body
    assert bot.task is not None and not bot.task.done()


async def test_metrics_and_health(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot()
    await bot.start()
    await people["alice"].ask(room, "!ping", bot.user_id)
    await people["alice"].ask(room, "!nope", bot.user_id)
    status, body = await bot.http("/healthz")
    assert status == 200 and '"status": "ok"' in body
    status, text = await bot.http("/metrics")
    assert status == 200
    assert 'infrabot_commands_total{command="ping",outcome="ok"} 1.0' in text
    assert 'infrabot_commands_total{command="(unknown)",outcome="bad_input"} 1.0' in text
    assert "infrabot_command_duration_seconds_bucket" in text
    assert "infrabot_sync_lag_seconds" in text


async def test_commands_only_from_configured_rooms(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    synapse: LocalSynapse,
    accounts: Accounts,
) -> None:
    bot = make_bot()
    await bot.start()
    other = synapse.create_room(accounts.admin, name="elsewhere", invite=[accounts.bot.user_id])
    synapse.join(accounts.bot, other)  # the bot is in the room, but it is not configured
    ignored = await people["alice"].send(other, "!ping")
    answered = await people["alice"].ask(room, "!ping", bot.user_id)
    assert answered.body.startswith("pong")
    # Barrier: the ignored message was sent first, so it came in the same or an earlier sync
    # batch; had it been taken for a command, its audit row would have been written before
    # this answer was even posted.
    assert ignored not in {r.event_id for r in await audit.recent(bot.rt.store, 50)}
    assert not any(e.replies_to(ignored) for e in people["alice"].seen)


async def test_password_login_keeps_token_and_device(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, accounts: Accounts
) -> None:
    def with_password(raw: dict[str, Any]) -> None:
        del raw["matrix"]["access_token"]
        raw["matrix"]["password"] = accounts.bot.password

    bot = make_bot(edit=with_password)
    await bot.start()
    assert (await people["alice"].ask(room, "!ping", bot.user_id)).body.startswith("pong")
    device = bot.rt.transport.client.device_id
    await bot.stop()
    again = make_bot(edit=with_password)
    await again.start()
    assert again.rt.transport.client.device_id == device, "the stored session is reused"
    assert (await people["alice"].ask(room, "!ping", again.user_id)).body.startswith("pong")


async def test_an_encrypted_room_is_reported(
    make_bot: BotFactory,
    synapse: LocalSynapse,
    accounts: Accounts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_room = synapse.create_room(
        accounts.admin, name="e2ee", invite=[accounts.bot.user_id], encrypted=True
    )

    def use_it(raw: dict[str, Any]) -> None:
        raw["matrix"]["rooms"] = [secret_room]

    bot = make_bot(edit=use_it)
    await bot.start()
    # The warning is logged right after the first sync, in the step that reports "syncing".
    while bot.rt.health.reason != "syncing":  # noqa: ASYNC110 - polled state, no event to await
        await asyncio.sleep(0.05)
    assert f"room {secret_room} is end-to-end encrypted" in caplog.text


async def test_a_message_too_large_for_matrix_arrives_cut_not_dropped(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot()
    await bot.start()
    mark = people["alice"].mark()
    text = "".join(f"row {i}: pluto haumea eris ⚠️\n" for i in range(8000))  # ~220 KB
    await bot.rt.outbox.post(room, messages.notice(text))
    seen = await people["alice"].wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("row 0: "), timeout=20, after=mark
    )
    assert seen.body.endswith(messages.CUT_NOTE)
    assert await bot.rt.outbox.pending() == 0
    assert await bot.rt.outbox.failed() == 0


def _skip_notice(bot_user: str) -> Callable[[SeenEvent], bool]:
    return lambda e: e.sender == bot_user and e.body.startswith("I skipped ")


async def test_no_command_runs_late_after_restart_kick_and_reinvite(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    synapse: LocalSynapse,
    accounts: Accounts,
) -> None:
    """Issue 12 item 3, as a user met it: restart, kick, re-invite; nothing old runs again."""
    alice, bob = people["alice"], people["bob"]
    bot = make_bot()
    await bot.start()
    old_ping = await alice.send(room, "!ping")
    await alice.reply_to(old_ping, bot.user_id)
    await bot.stop()

    mark = alice.mark()
    deploy = await alice.send(room, "!deploy pluto")
    restarted = make_bot()
    await restarted.start()
    notice = await alice.wait_for(_skip_notice(bot.user_id), after=mark)
    assert notice.body.startswith("I skipped 1 command sent while I could not see this room:")
    assert f"`!deploy pluto` by {accounts.admin.user_id}" in notice.body
    assert notice.body.endswith("send it again if still wanted.")
    assert "<code>!deploy pluto</code>" in notice.content["formatted_body"]
    assert not notice.content.get("m.relates_to"), "a notice to the room, not a reply"

    synapse.kick(accounts.admin, room, bot.user_id, "testing")
    silence = await bob.send(room, "!silence alertname=Watchdog 1d")
    job = await bob.send(room, "!jobs run reminder")
    hello = await bob.send(room, "hello, is anyone there?")  # not a command: never listed
    mark = alice.mark()
    synapse.invite(accounts.admin, room, bot.user_id)
    notice = await alice.wait_for(_skip_notice(bot.user_id), after=mark, timeout=20)
    assert notice.body.startswith("I skipped 2 commands sent while I could not see this room:")
    assert f"`!silence alertname=Watchdog 1d` by {accounts.member.user_id}" in notice.body
    assert f"`!jobs run reminder` by {accounts.member.user_id}" in notice.body
    assert "send them again if still wanted" in notice.body
    assert "ping" not in notice.body and "deploy" not in notice.body and "hello" not in notice.body

    # Barrier: a fresh command is answered, so anything replayed would have shown up by now.
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")
    mine = [e for e in alice.seen if e.sender == bot.user_id and e.room_id == room]
    old = (old_ping, deploy, silence, job, hello)
    assert [e for e in mine if any(e.replies_to(x) for x in old)] == [
        e for e in mine if e.replies_to(old_ping)
    ], "only the first !ping was ever answered"
    assert len([e for e in mine if e.replies_to(old_ping)]) == 1
    assert not any(e.source["type"] == "m.reaction" for e in mine)
    assert not any("rotate the on-call pager" in e.body for e in mine), "the job never ran"
    assert len([e for e in mine if _skip_notice(bot.user_id)(e)]) == 2
    audited = {r.event_id for r in await audit.recent(restarted.rt.store, 50)}
    assert audited.isdisjoint({deploy, silence, job})


async def test_a_room_newly_served_does_not_run_its_history(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    synapse: LocalSynapse,
    accounts: Accounts,
) -> None:
    """A room added to the config: the commands in its history are reported, never run."""
    fresh = synapse.create_room(accounts.admin, name="new-infra", invite=[accounts.bot.user_id])
    alice = people["alice"]
    mark = alice.mark()
    job = await alice.send(fresh, "!jobs run reminder")
    await alice.send(fresh, "just chatting")

    def serve_it(raw: dict[str, Any]) -> None:
        raw["matrix"]["rooms"] = [fresh]

    bot = make_bot(edit=serve_it)
    await bot.start()
    notice = await alice.wait_for(_skip_notice(bot.user_id), after=mark, timeout=20)
    assert "`!jobs run reminder`" in notice.body and "chatting" not in notice.body
    assert (await alice.ask(fresh, "!ping", bot.user_id)).body.startswith("pong")
    mine = [e for e in alice.seen[mark:] if e.sender == bot.user_id]
    assert not any(e.replies_to(job) or "rotate the on-call pager" in e.body for e in mine)


async def test_two_manual_runs_of_one_job_at_once_run_it_once(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, accounts: Accounts
) -> None:
    """Issue 12 item 4: a second `!jobs run` while one runs is told who runs it."""
    gate = asyncio.Event()
    runs: list[float] = []
    router = Router("gated")

    @router.job("gated")
    async def gated(ctx: JobContext) -> str:
        runs.append(time.time())
        await gate.wait()
        return "done"

    def with_gated_job(raw: dict[str, Any]) -> None:
        raw["schedules"].append({"name": "slow", "cron": "0 0 1 1 *", "job": "gated"})

    bot = make_bot(extra_routers=(router,), edit=with_gated_job)
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    first = await alice.send(room, "!jobs run slow")
    second = await bob.send(room, "!jobs run slow")
    loser = await alice.wait_for(
        lambda e: e.sender == bot.user_id and (e.replies_to(first) or e.replies_to(second))
    )
    assert "Job slow is already running: started by @" in loser.body, loser.body
    winner, winner_id = (
        (accounts.member.user_id, second)
        if loser.replies_to(first)
        else (accounts.admin.user_id, first)
    )
    assert f"started by {winner}" in loser.body
    gate.set()
    done = await alice.reply_to(winner_id, bot.user_id)
    assert done.body == "job slow: ok: done"
    assert len(runs) == 1
    assert [r.trigger for r in await job_runs.of_job(bot.rt.store, "slow")] == ["manual"]
