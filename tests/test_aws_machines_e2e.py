"""On-demand machines (`!aws start|stop|extend|machines`) against moto's EC2 and a real Synapse.

The bot's clock is a ManualClock the test moves: auto-stop warnings and stops happen when the
test says it is time, also across bot restarts (the timers live in the bot's database).
moto answers StartInstances with `pending` and StopInstances with `stopping`, as EC2 does
(moto 5 `ec2/responses/instances.py`), and DescribeInstances then shows `running`/`stopped`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from bot.audit import of_command
from bot.clock import ManualClock
from commands.costs import AwsConfig
from commands.costs.machines import at, due, month_cost, next_moment
from commands.costs.machines_db import TimerRow
from devstack.client import RoomUser, SeenEvent
from devstack.moto import LocalMoto
from devstack.synapse import free_port
from tests.conftest import BotFactory, BotHandle


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMoto]:
    server = LocalMoto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


def _ec2(moto: LocalMoto) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _stopped_instance(ec2: Any, instance_type: str, name: str | None) -> str:
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}]
    made = ec2.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        **({"TagSpecifications": tags} if name else {}),
    )
    instance_id = str(made["Instances"][0]["InstanceId"])
    ec2.stop_instances(InstanceIds=[instance_id])
    return instance_id


def _state(ec2: Any, instance_id: str) -> str:
    found = ec2.describe_instances(InstanceIds=[instance_id])
    return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])


def _aws(url: str, builder_id: str, timeout_s: float = 5) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["aws"] = {
            "endpoint_url": url,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "timeout_s": timeout_s,
            # Far from the test's moments: no weekly summary runs in between.
            "weekly_cron": "0 9 1 7 *",
            "on_demand": [
                # By its Name tag; operators may start it.
                {"name": "archeology", "region": "us-east-1", "auto_stop_after": "8h"},
                # By instance id; admins only.
                {"name": "builder", "instance": builder_id, "role": "admin"},
                # Its Name tag is on no instance.
                {"name": "ghost", "auto_stop_after": "1h"},
            ],
        }

    return edit


def _at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def _from_bot(bot: BotHandle, start: str) -> Callable[[SeenEvent], bool]:
    return lambda e: e.sender == bot.user_id and e.body.startswith(start)


def _row(body: str, name: str) -> str:
    return next(line for line in body.splitlines() if line.startswith(name + " "))


async def test_start_warn_extend_restart_auto_stop_and_refusals(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    ec2 = _ec2(moto)
    archeology = _stopped_instance(ec2, "m4.xlarge", "archeology")
    builder = _stopped_instance(ec2, "t2.micro", None)
    edit = _aws(moto.url, builder)
    clock = ManualClock(_at(2026, 11, 30, 10, 30))
    bot = make_bot(edit=edit, clock=clock)
    await bot.start()
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]

    # Refusals: no role, an unknown name (answered with the list), a Name tag on no instance.
    refused = await mallory.ask(room, "!aws start archeology", bot.user_id)
    assert "needs the operator role" in refused.body and "nothing was done" in refused.body
    unknown = await alice.ask(room, "!aws start nothing", bot.user_id)
    assert "no on-demand machine `nothing`; on-demand machines: archeology, builder, ghost" in (
        unknown.body
    )
    assert "usage: `!aws start <machine>`" in unknown.body
    helped = await mallory.ask(room, "!help aws start", bot.user_id)
    assert helped.body.endswith(
        "needs role: the machine's role: archeology: operator · builder: admin · ghost: operator"
    ), helped.body
    ghost = await bob.ask(room, "!aws start ghost", bot.user_id, timeout=30)
    assert ghost.body.startswith("❌ no instance ghost in us-east-1")
    assert _state(ec2, archeology) == "stopped"

    # Start: the answer has the state change, the price and the auto-stop; the address
    # follows in the thread once EC2 says `running`.
    mark = alice.mark()
    started = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert started.body.startswith(
        f"▶️ starting archeology ({archeology}, m4.xlarge in us-east-1, $0.20/hour): "
        "stopped → pending. It stops by itself at 18:30 UTC (after 8h); "
        "`!aws extend archeology 2h` keeps it longer."
    ), started.body
    running = await alice.wait_for(
        _from_bot(bot, "✅ archeology is running: address "), timeout=60, after=mark
    )
    address = running.body.removeprefix("✅ archeology is running: address ")
    assert address and address != "-"
    assert _state(ec2, archeology) == "running"
    again = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert again.body.startswith("archeology is already running") and "18:30 UTC" in again.body

    await clock.set(_at(2026, 11, 30, 17, 30))
    listing = await alice.ask(room, "!aws machines", bot.user_id, timeout=30)
    row = _row(listing.body, "archeology")
    for cell in (archeology, "running", "  7 h  ", "18:30 UTC", "$0.20/hour", "$1.40"):
        assert cell in row, (cell, row)
    row = _row(listing.body, "builder")
    assert builder in row and "stopped" in row and "$0.0116/hour" in row and "$0.00" in row
    assert "ghost: could not ask AWS: no instance ghost in us-east-1" in listing.body
    assert "November so far: $1.40 (est.:" in listing.body

    # 15 minutes before the auto-stop the room is warned; extending moves it 2 h later.
    mark = alice.mark()
    await clock.set(_at(2026, 11, 30, 18, 15))
    warning = await alice.wait_for(_from_bot(bot, "⏰ stopping"), timeout=30, after=mark)
    assert warning.body == (
        "⏰ stopping archeology at 18:30 UTC; `!aws extend archeology 2h` to keep it"
    )
    extended = await bob.ask(room, "!aws extend archeology 2h", bot.user_id, timeout=30)
    assert extended.body.startswith("⏰ archeology now stops at 20:30 UTC instead of 18:30 UTC"), (
        extended.body
    )
    bad = await bob.ask(room, "!aws extend archeology 9d", bot.user_id)
    assert "must be between 1m and 1w" in bad.body and "usage: `!aws extend" in bad.body

    # The old auto-stop time passes: nothing is stopped (the barrier is a later answer).
    mark = alice.mark()
    await clock.set(_at(2026, 11, 30, 18, 31))
    await bot.barrier(alice, room)
    assert not [e for e in alice.seen[mark:] if e.body.startswith(("⏹", "⏰"))]
    assert _state(ec2, archeology) == "running"

    # A restart keeps the timer: the new bot warns 15 minutes before, then stops it.
    await bot.stop()
    clock = ManualClock(_at(2026, 11, 30, 20, 20))
    mark = alice.mark()
    bot = make_bot(edit=edit, clock=clock)
    await bot.start()
    warning = await alice.wait_for(_from_bot(bot, "⏰ stopping"), timeout=30, after=mark)
    assert warning.body.startswith("⏰ stopping archeology at 20:30 UTC")
    await clock.set(_at(2026, 11, 30, 20, 30))
    stopped = await alice.wait_for(_from_bot(bot, "⏹ stopped"), timeout=60, after=mark)
    assert stopped.body == (
        f"⏹ stopped archeology ({archeology}, auto-stop at 20:30 UTC): running → stopping; "
        "it ran 10 h this time. `!aws start archeology` starts it again."
    )
    assert _state(ec2, archeology) == "stopped"

    # Started again, then the bot is down past its auto-stop (and the month's end): the next
    # start stops it at once and says it was overdue.
    await clock.set(_at(2026, 11, 30, 20, 40))
    started = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert "It stops by itself at 2026-12-01 04:40 UTC" in started.body
    await bot.stop()
    clock = ManualClock(_at(2026, 12, 1, 5, 0))
    mark = alice.mark()
    bot = make_bot(edit=edit, clock=clock)
    await bot.start()
    stopped = await alice.wait_for(_from_bot(bot, "⏹ stopped"), timeout=60, after=mark)
    assert stopped.body.startswith(
        f"⏹ stopped archeology ({archeology}, overdue: its auto-stop was due at 04:40 UTC): "
        "running → stopping; it ran 8 h 20 min this time."
    ), stopped.body
    assert _state(ec2, archeology) == "stopped"
    listing = await alice.ask(room, "!aws machines", bot.user_id, timeout=30)
    row = _row(listing.body, "archeology")
    assert "stopped" in row and "$1.00" in row, row  # 00:00–05:00 on 1 December
    assert "December so far: $1.00 (est.:" in listing.body

    # builder is for admins: bob is refused; alice starts and stops it.
    refused = await bob.ask(room, "!aws stop builder", bot.user_id)
    assert "`!aws stop builder` needs the admin role" in refused.body
    idle = await alice.ask(room, "!aws stop builder", bot.user_id, timeout=30)
    assert idle.body == "builder is already stopped; nothing to do."
    mark = alice.mark()
    started = await alice.ask(room, "!aws start builder", bot.user_id, timeout=30)
    assert started.body.startswith(f"▶️ starting builder ({builder}, t2.micro in us-east-1")
    await alice.wait_for(_from_bot(bot, "✅ builder is running"), timeout=60, after=mark)
    await clock.set(_at(2026, 12, 1, 6, 30))
    stopping = await alice.ask(room, "!aws stop builder", bot.user_id, timeout=30)
    assert stopping.body == (
        f"⏹ stopping builder ({builder}): running → stopping; it ran 1 h 30 min this time."
    )
    await alice.wait_for(_from_bot(bot, "✅ builder has stopped"), timeout=60, after=mark)
    assert _state(ec2, builder) == "stopped"
    not_running = await alice.ask(room, "!aws extend builder 1h", bot.user_id, timeout=30)
    assert not_running.body == "builder is stopped; `!aws start builder` starts it."

    # Every start, stop and extend is audited, the bot's own auto-stops included.
    store = bot.rt.store
    starts = [(r.sender, r.args, r.outcome) for r in await of_command(store, "aws start")]
    assert (mallory.client.user_id, ("archeology",), "denied") in starts
    assert (alice.client.user_id, ("nothing",), "bad_input") in starts
    assert (bob.client.user_id, ("ghost",), "error") in starts
    assert [s for s in starts if s[2] == "ok"] == [
        (bob.client.user_id, ("archeology",), "ok"),
        (bob.client.user_id, ("archeology",), "ok"),
        (bob.client.user_id, ("archeology",), "ok"),
        (alice.client.user_id, ("builder",), "ok"),
    ]
    stops = [(r.sender, r.args, r.outcome) for r in await of_command(store, "aws stop")]
    assert stops == [
        (bot.user_id, ("archeology", "auto-stop"), "ok"),
        (bot.user_id, ("archeology", "auto-stop"), "ok"),
        (bob.client.user_id, ("builder",), "denied"),
        (alice.client.user_id, ("builder",), "ok"),
        (alice.client.user_id, ("builder",), "ok"),
    ]
    extends = [(r.args, r.outcome) for r in await of_command(store, "aws extend")]
    assert extends == [
        (("archeology", "2h"), "ok"),
        (("archeology", "9d"), "bad_input"),
        (("builder", "1h"), "bad_input"),
    ]


async def test_auto_stop_while_aws_is_unreachable_is_said_and_retried(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    ec2 = _ec2(moto)
    archeology = _stopped_instance(ec2, "m4.xlarge", "archeology")
    builder = _stopped_instance(ec2, "t2.micro", None)
    alice, bob = people["alice"], people["bob"]
    bot = make_bot(edit=_aws(moto.url, builder), clock=ManualClock(_at(2026, 11, 30, 10, 0)))
    await bot.start()
    started = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert "It stops by itself at 18:00 UTC" in started.body
    await bot.stop()

    # The bot comes back after the auto-stop was due, but AWS does not answer: the room is
    # told once, the stop is tried again 5 minutes later, and the machine keeps its timer.
    dead = f"http://127.0.0.1:{free_port()}"
    clock = ManualClock(_at(2026, 11, 30, 18, 5))
    mark = alice.mark()
    bot = make_bot(edit=_aws(dead, builder, timeout_s=2), clock=clock)
    await bot.start()
    failed = await alice.wait_for(_from_bot(bot, "❌ could not stop"), timeout=60, after=mark)
    assert failed.body.startswith(
        f"❌ could not stop archeology ({archeology}) at its auto-stop: AWS call "
        "ec2:stop_instances failed"
    ), failed.body
    assert failed.body.endswith("Trying again every 5m.")
    store = bot.rt.store

    await bot.wait_metric('infrabot_commands_total{command="aws stop",outcome="error"} 1.0')
    await clock.set(_at(2026, 11, 30, 18, 11))
    await bot.wait_metric(
        'infrabot_commands_total{command="aws stop",outcome="error"} 2.0', timeout=60
    )
    assert [r.outcome for r in await of_command(store, "aws stop")] == ["error", "error"]
    listing = await alice.ask(room, "!aws machines", bot.user_id, timeout=60)
    assert "archeology: could not ask AWS: AWS call ec2:describe_instances failed" in (listing.body)
    await bot.barrier(alice, room)
    assert len([e for e in alice.seen[mark:] if e.body.startswith("❌ could not stop")]) == 1
    assert _state(ec2, archeology) == "running"
    await bot.stop()

    # With AWS back, the next start stops it and says it was overdue.
    mark = alice.mark()
    bot = make_bot(edit=_aws(moto.url, builder), clock=ManualClock(_at(2026, 11, 30, 18, 20)))
    await bot.start()
    stopped = await alice.wait_for(_from_bot(bot, "⏹ stopped"), timeout=60, after=mark)
    assert stopped.body.startswith(
        f"⏹ stopped archeology ({archeology}, overdue: its auto-stop was due at 18:00 UTC): "
        "running → stopping; it ran 8 h 20 min this time."
    ), stopped.body
    assert _state(ec2, archeology) == "stopped"
    outcomes = [(r.sender, r.outcome) for r in await of_command(bot.rt.store, "aws stop")]
    assert outcomes == [(bot.user_id, "error"), (bot.user_id, "error"), (bot.user_id, "ok")]


async def test_a_machine_stopped_outside_the_bot_is_not_warned_of_nor_stopped_again(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    # Used to warn "stopping archeology at 18:00 UTC; extend to keep it" for a machine
    # someone had stopped in the console, then "⏹ stopped archeology: stopped → stopped;
    # it ran 8 h this time" (and count those hours in the month's cost).
    moto.reset()
    ec2 = _ec2(moto)
    archeology = _stopped_instance(ec2, "m4.xlarge", "archeology")
    builder = _stopped_instance(ec2, "t2.micro", None)
    alice, bob = people["alice"], people["bob"]
    clock = ManualClock(_at(2026, 11, 30, 10, 0))
    bot = make_bot(edit=_aws(moto.url, builder), clock=clock)
    await bot.start()
    mark = alice.mark()
    started = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert "It stops by itself at 18:00 UTC" in started.body
    await alice.wait_for(_from_bot(bot, "✅ archeology is running"), timeout=60, after=mark)
    await clock.set(_at(2026, 11, 30, 12, 0))
    ec2.stop_instances(InstanceIds=[archeology])

    mark = alice.mark()
    await clock.set(_at(2026, 11, 30, 17, 45))
    dropped = await alice.wait_for(_from_bot(bot, "archeology is already"), timeout=60, after=mark)
    assert dropped.body == (
        "archeology is already stopped (stopped outside the bot): its auto-stop at 18:00 UTC "
        "is dropped. `!aws start archeology` starts it again."
    )
    await clock.set(_at(2026, 11, 30, 18, 5))
    listing = await alice.ask(room, "!aws machines", bot.user_id, timeout=30)
    row = _row(listing.body, "archeology")
    assert "stopped" in row and "  -  " in row, row
    await bot.barrier(alice, room)
    assert not [e for e in alice.seen[mark:] if e.body.startswith(("⏰", "⏹"))]
    assert [r.outcome for r in await of_command(bot.rt.store, "aws stop")] == []


async def test_a_timer_of_a_machine_removed_from_the_config_is_dropped_at_start(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    # Used to wait for the warning time, then warn "`!aws extend archeology 2h` to keep it"
    # (a command that then answers "no on-demand machine `archeology`").
    moto.reset()
    ec2 = _ec2(moto)
    _stopped_instance(ec2, "m4.xlarge", "archeology")
    builder = _stopped_instance(ec2, "t2.micro", None)
    alice, bob = people["alice"], people["bob"]
    bot = make_bot(edit=_aws(moto.url, builder), clock=ManualClock(_at(2026, 11, 30, 10, 0)))
    await bot.start()
    started = await bob.ask(room, "!aws start archeology", bot.user_id, timeout=30)
    assert "It stops by itself at 18:00 UTC" in started.body
    await bot.stop()

    def without_archeology(raw: dict[str, Any]) -> None:
        _aws(moto.url, builder)(raw)
        raw["aws"]["on_demand"] = raw["aws"]["on_demand"][1:]

    mark = alice.mark()
    bot = make_bot(edit=without_archeology, clock=ManualClock(_at(2026, 11, 30, 11, 0)))
    await bot.start()
    dropped = await alice.wait_for(_from_bot(bot, "⚠️ archeology"), timeout=60, after=mark)
    assert dropped.body == (
        "⚠️ archeology is no longer in `aws.on_demand`: its auto-stop at 18:00 UTC is "
        "dropped; it was not stopped."
    )
    await bot.barrier(alice, room)
    assert not [e for e in alice.seen[mark:] if e.body.startswith(("⏰", "⏹"))]


def test_timer_and_month_cost_rules() -> None:
    stop_at = _at(2026, 11, 30, 18, 30).timestamp()
    row = TimerRow("archeology", "i-1", "!r", stop_at, False, "@bob")
    assert due(row, stop_at - 16 * 60) is None
    assert due(row, stop_at - 15 * 60) == "warn"
    assert due(row, stop_at) == "stop"
    assert next_moment(row) == stop_at - 15 * 60
    warned = TimerRow("archeology", "i-1", "!r", stop_at, True, "@bob")
    assert due(warned, stop_at - 60) is None and next_moment(warned) == stop_at
    now = _at(2026, 12, 1, 5, 0)
    day = timedelta(days=1).total_seconds()
    runs = [
        (now.timestamp() - 2 * day, now.timestamp() - day),  # all in November
        (_at(2026, 11, 30, 20, 0).timestamp(), _at(2026, 12, 1, 2, 0).timestamp()),
        (_at(2026, 12, 1, 4, 0).timestamp(), None),  # still running
    ]
    assert month_cost(runs, now, 0.5) == pytest.approx(1.5)
    assert month_cost(runs, now, None) is None


def test_auto_stop_times_are_said_by_the_utc_day() -> None:
    # A clock in another zone used to compare the UTC stop time with its local day: 23:30
    # UTC on 30 November, seen at 01:00+02:00 on 1 December, was shown without its date.
    stop_at = _at(2026, 11, 30, 23, 30).timestamp()
    east = timezone(timedelta(hours=2))
    assert at(stop_at, datetime(2026, 12, 1, 1, 0, tzinfo=east)) == "23:30 UTC"
    assert at(stop_at, datetime(2026, 11, 30, 1, 0, tzinfo=east)) == "2026-11-30 23:30 UTC"
    assert at(stop_at, _at(2026, 11, 30, 20, 0)) == "23:30 UTC"


def test_on_demand_config_is_checked() -> None:
    ok = AwsConfig.model_validate({"on_demand": [{"name": "archeology", "auto_stop_after": "8h"}]})
    assert ok.on_demand[0].ref == "archeology" and ok.on_demand[0].role == "operator"
    for bad, reason in [
        ([{"name": "a"}, {"name": "a"}], "on_demand names must be unique: a given twice"),
        ([{"name": "Big Machine"}], "one lower-case word"),
        ([{"name": "a", "auto_stop_after": "30s"}], "auto_stop_after must be at least 1m"),
        ([{"name": "a", "stop_after": "2h"}], "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValidationError, match=reason):
            AwsConfig.model_validate({"on_demand": bad})
