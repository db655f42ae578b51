"""On-demand EC2 machines: `!aws start|stop|extend|machines`, with a lasting auto-stop.

`aws.on_demand` lists the machines the room may start and stop, each by its Name tag or
instance id, with its region, the role allowed and `auto_stop_after`. Starting one sets its
auto-stop (stored through `machines_db`, so a restart keeps it); 15 minutes before it the room
is warned, and then the bot stops the machine and says so. A stop that fell due while the bot
was not running is done as soon as it runs again.

EC2 calls go through `AwsClients` (a thread each, with timeouts). The instance states and the
fields read (`State.Name`, `InstanceType`, `PublicIpAddress`, `PrivateIpAddress`,
`LaunchTime`, `StartingInstances[].PreviousState/CurrentState`) are those of the EC2 API
reference (DescribeInstances, StartInstances, StopInstances, API version 2016-11-15).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo, field_validator

from bot import audit, messages
from bot.config import Section, known_role
from bot.context import Context, Runtime
from bot.durations import Duration, format_duration, parse_duration
from bot.errors import BotError, PermissionDenied, RemoteError, UserError
from bot.messages import human_duration
from bot.registry import StateKey
from commands.costs import checks
from commands.costs import machines_db as db
from commands.costs.aws import AwsClients
from commands.costs.report import money

log = logging.getLogger(__name__)

WARN_BEFORE = timedelta(minutes=15)
# A failed auto-stop is tried again this much later (by the bot's clock).
RETRY_AFTER = timedelta(minutes=5)
# How late an auto-stop may run before the room is told it was overdue.
LATE = timedelta(minutes=1)
MAX_EXTEND = timedelta(days=7)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
# EC2 instance states (DescribeInstances `State.Name`) other than terminated.
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


class OnDemand(Section):
    """One machine the room may start and stop."""

    # What the room calls it (`!aws start archeology`).
    name: str
    # Its Name tag or instance id (i-…); the name as Name tag when not given.
    instance: str | None = None
    # Its region; `aws.region` when not given.
    region: str | None = None
    # Who may start, stop and extend it (the admin role always may).
    role: str = "operator"
    auto_stop_after: Duration = timedelta(hours=8)
    # How long `!aws start` waits for `running` (and `!aws stop` for `stopped`).
    ready_timeout: Duration = timedelta(minutes=5)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: one lower-case word (a-z, 0-9, . _ -)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else checks.region(value)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str, info: ValidationInfo) -> str:
        return known_role(value, info)

    @field_validator("auto_stop_after")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("auto_stop_after must be at least 1m")
        return value

    @property
    def ref(self) -> str:
        """The Name tag or instance id to look the machine up by."""
        return self.instance or self.name


def _unique(machines: list[OnDemand]) -> list[OnDemand]:
    names = [m.name for m in machines]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"on_demand names must be unique: {', '.join(twice)} given twice")
    return machines


# The type of `aws.on_demand`.
OnDemandList = Annotated[list[OnDemand], AfterValidator(_unique)]


@dataclass(frozen=True)
class Instance:
    """What DescribeInstances says about one machine."""

    id: str
    state: str
    type: str
    public_ip: str | None
    private_ip: str | None
    launched: datetime | None

    @property
    def address(self) -> str:
        """Public IP (with the private one), the private IP alone, or "-"."""
        if self.public_ip:
            return self.public_ip + (f" (private {self.private_ip})" if self.private_ip else "")
        return self.private_ip or "-"


def parse_instance(raw: dict[str, Any]) -> Instance:
    """One `Reservations[].Instances[]` item of DescribeInstances as an Instance."""
    launched = raw.get("LaunchTime")
    return Instance(
        id=str(raw["InstanceId"]),
        state=str(raw.get("State", {}).get("Name", "?")),
        type=str(raw.get("InstanceType", "?")),
        public_ip=raw.get("PublicIpAddress") or None,
        private_ip=raw.get("PrivateIpAddress") or None,
        launched=launched.astimezone(UTC) if isinstance(launched, datetime) else None,
    )


def month_start(now: datetime) -> float:
    """The 1st of `now`'s month, 00:00 UTC, as Unix seconds."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_cost(
    runs: Sequence[tuple[float, float | None]],
    now: datetime,
    price: float | None,
) -> float | None:
    """USD the runs (start, end or None while running; Unix seconds) cost this month at
    `price` per hour, counting only the part since the 1st of `now`'s month (UTC); None
    when the price is unknown."""
    if price is None:
        return None
    month = month_start(now)
    end_now = now.timestamp()
    seconds = sum(
        max(0.0, min(end if end is not None else end_now, end_now) - max(start, month))
        for start, end in runs
    )
    return seconds / 3600 * price


def due(row: db.TimerRow, now: float, warn_before: timedelta = WARN_BEFORE) -> str | None:
    """What a timer needs at `now`: "stop", "warn" or None (nothing yet)."""
    if now >= row.stop_at:
        return "stop"
    if not row.warned and now >= row.stop_at - warn_before.total_seconds():
        return "warn"
    return None


def next_moment(row: db.TimerRow, warn_before: timedelta = WARN_BEFORE) -> float:
    """When the timer next needs something (Unix seconds)."""
    return row.stop_at if row.warned else row.stop_at - warn_before.total_seconds()


def at(moment: float, now: datetime) -> str:
    """ "18:30 UTC", with the date when it is not `now`'s day."""
    when = datetime.fromtimestamp(moment, UTC)
    # `now`'s UTC day: a clock in another zone must not drop (or add) the date.
    if when.date() == now.astimezone(UTC).date():
        return f"{when:%H:%M} UTC"
    return f"{when:%Y-%m-%d %H:%M} UTC"


def extension(word: str, rt: Runtime) -> timedelta:
    """`30m`, `2h`, `1d` (at most 7 days) for `!aws extend`."""
    delta = parse_duration(word)
    if delta < timedelta(minutes=1) or delta > MAX_EXTEND:
        raise ValueError(f"`{word}` must be between 1m and {format_duration(MAX_EXTEND)}")
    return delta


@dataclass
class Machines:
    """The configured machines, the EC2 clients, and the auto-stop loop's wake-up.

    `run()` is the auto-stop loop (a service); commands change timers through this object,
    which wakes the loop. Failed auto-stops are retried every RETRY_AFTER.
    """

    rt: Runtime
    aws: AwsClients
    machines: list[OnDemand]
    region: str
    prices: dict[str, float]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # name → (when to try again, Unix seconds) for auto-stops that failed.
    retry: dict[str, float] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, name: str) -> asyncio.Lock:
        """The lock that serialises starting, stopping and extending machine `name`."""
        return self.locks.setdefault(name, asyncio.Lock())

    @property
    def by_name(self) -> dict[str, OnDemand]:
        """The configured machines by name."""
        return {m.name: m for m in self.machines}

    def known(self) -> str:
        """ "on-demand machines: archeology, builder" or how to configure one."""
        if not self.machines:
            return "no on-demand machines are configured (`aws.on_demand`)"
        return "on-demand machines: " + ", ".join(m.name for m in self.machines)

    def who(self) -> str:
        """Who may start and stop each machine."""
        if not self.machines:
            return "no on-demand machines are configured (`aws.on_demand`)"
        return "the machine's role: " + " · ".join(f"{m.name}: {m.role}" for m in self.machines)

    def price(self, instance_type: str) -> float | None:
        """USD per hour from the price table, or None."""
        return self.prices.get(instance_type)

    def price_text(self, instance_type: str) -> str:
        """ "$0.20/hour", or which key to add to the price table."""
        price = self.price(instance_type)
        if price is None:
            return f"price unknown (add {instance_type} to `aws.prices.instance_hour`)"
        # Small hourly prices keep their digits: $0.0116, not $0.01.
        shown = money(price) if round(price, 2) == price else f"${price:.4f}"
        return f"{shown}/hour"

    async def describe(self, m: OnDemand) -> Instance:
        """The machine's instance; RemoteError when none or several match its Name tag."""
        region = m.region or self.region
        kwargs: dict[str, Any]
        if _INSTANCE_ID.match(m.ref):
            kwargs = {"InstanceIds": [m.ref]}
        else:
            kwargs = {
                "Filters": [
                    {"Name": "tag:Name", "Values": [m.ref]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            }
        reservations = await self.aws.paginate(
            "ec2", "describe_instances", region, "Reservations", **kwargs
        )
        found = [parse_instance(i) for r in reservations for i in r.get("Instances", [])]
        found = [i for i in found if i.state != "terminated"]
        if not found:
            raise RemoteError(
                f"no instance {m.ref} in {region} for {m.name} (terminated ones do not count); "
                "check `aws.on_demand`"
            )
        if len(found) > 1:
            ids = ", ".join(i.id for i in found)
            raise RemoteError(
                f"{len(found)} instances are tagged Name={m.ref} in {region} ({ids}); "
                f"give {m.name}'s instance id in `aws.on_demand`"
            )
        return found[0]

    def check_role(self, ctx: Context, m: OnDemand, what: str) -> None:
        """PermissionDenied (audited as 'denied') unless the sender holds the machine's role."""
        if not ctx.has_role(m.role):
            log.warning("refused %s to %s: needs role %s", what, ctx.sender, m.role)
            raise PermissionDenied(
                f"Sorry, `{ctx.rt.prefix}{what}` needs the {m.role} role, which you do not "
                "have; nothing was done. This refusal is recorded."
            )

    # --- commands ---------------------------------------------------------------------------

    async def start(self, ctx: Context, m: OnDemand) -> None:
        """See `_start`; one command or auto-stop acts on a machine at a time."""
        self.check_role(ctx, m, f"aws start {m.name}")
        async with self.lock(m.name):
            await self._start(ctx, m)

    async def _start(self, ctx: Context, m: OnDemand) -> None:
        """Start `m` (or keep it running), set its auto-stop, answer, then say once it runs."""
        rt = ctx.rt
        p = rt.prefix
        inst = await self.describe(m)
        now = rt.clock.now()
        if inst.state in ("stopping", "shutting-down"):
            raise UserError(
                f"{m.name} is {inst.state}; start it once it has stopped "
                f"(`{p}aws machines` shows its state)."
            )
        if inst.state in ("running", "pending"):
            stop_at = await self._keep_timer(m, inst, ctx.room_id, ctx.sender, now)
            await db.open_run(rt.store, m.name, inst.id, now.timestamp())
            ctx.audit_note = f"{inst.id} already {inst.state}"
            await ctx.reply(
                f"{m.name} is already {inst.state} (address {inst.address}, "
                f"{self.price_text(inst.type)}); it stops at {at(stop_at, now)} "
                f"(`{p}aws extend {m.name} 2h` keeps it longer)."
            )
            return
        # A run left open by a stop outside the bot ends here (when it stopped is not known).
        await self._reconcile(m, inst, now)
        await ctx.react("👀")
        answer = await self.aws.call(
            "ec2", "start_instances", m.region or self.region, InstanceIds=[inst.id]
        )
        change = _change(answer.get("StartingInstances", []), inst.state, "pending")
        stop_at = (now + m.auto_stop_after).timestamp()
        await db.set_timer(rt.store, m.name, inst.id, ctx.room_id, stop_at, ctx.sender)
        await db.open_run(rt.store, m.name, inst.id, now.timestamp())
        self.retry.pop(m.name, None)
        self.wake.set()
        ctx.audit_note = f"started {inst.id}; auto-stop at {at(stop_at, now)}"
        await ctx.reply(
            f"▶️ starting {m.name} ({inst.id}, {inst.type} in {m.region or self.region}, "
            f"{self.price_text(inst.type)}): {change}. It stops by itself at {at(stop_at, now)} "
            f"(after {format_duration(m.auto_stop_after)}); `{p}aws extend {m.name} 2h` "
            "keeps it longer."
        )
        ctx.spawn(self._wait(m, "running", ("pending",)), f"waiting for {m.name}")

    async def stop(self, ctx: Context, m: OnDemand) -> None:
        """See `_stop`; one command or auto-stop acts on a machine at a time."""
        self.check_role(ctx, m, f"aws stop {m.name}")
        async with self.lock(m.name):
            await self._stop(ctx, m)

    async def _stop(self, ctx: Context, m: OnDemand) -> None:
        """Stop `m`, drop its auto-stop, answer with what the run cost, then say once stopped."""
        rt = ctx.rt
        inst = await self.describe(m)
        now = rt.clock.now()
        if inst.state in ("stopped", "stopping", "shutting-down"):
            await db.clear_timer(rt.store, m.name)
            await db.close_run(rt.store, m.name, now.timestamp())
            self.wake.set()
            ctx.audit_note = f"{inst.id} already {inst.state}"
            await ctx.reply(f"{m.name} is already {inst.state}; nothing to do.")
            return
        await ctx.react("👀")
        answer = await self.aws.call(
            "ec2", "stop_instances", m.region or self.region, InstanceIds=[inst.id]
        )
        change = _change(answer.get("StoppingInstances", []), inst.state, "stopping")
        ran = await self._stopped(m, now)
        ctx.audit_note = f"stopped {inst.id}"
        await ctx.reply(f"⏹ stopping {m.name} ({inst.id}): {change}{ran}.")
        ctx.spawn(self._wait(m, "stopped", ("stopping",)), f"waiting for {m.name}")

    async def extend(self, ctx: Context, m: OnDemand, by: timedelta) -> None:
        """See `_extend`; one command or auto-stop acts on a machine at a time."""
        self.check_role(ctx, m, f"aws extend {m.name}")
        async with self.lock(m.name):
            await self._extend(ctx, m, by)

    async def _extend(self, ctx: Context, m: OnDemand, by: timedelta) -> None:
        """Move `m`'s auto-stop `by` later (from now if it was due already)."""
        rt = ctx.rt
        p = rt.prefix
        inst = await self.describe(m)
        now = rt.clock.now()
        if inst.state not in ("running", "pending"):
            await db.clear_timer(rt.store, m.name)
            self.wake.set()
            raise UserError(f"{m.name} is {inst.state}; `{p}aws start {m.name}` starts it.")
        row = await db.timer(rt.store, m.name)
        base = max(row.stop_at if row else now.timestamp(), now.timestamp())
        stop_at = base + by.total_seconds()
        await db.set_timer(rt.store, m.name, inst.id, ctx.room_id, stop_at, ctx.sender)
        await db.open_run(rt.store, m.name, inst.id, now.timestamp())
        self.retry.pop(m.name, None)
        self.wake.set()
        before = f" instead of {at(row.stop_at, now)}" if row else ""
        ctx.audit_note = f"auto-stop of {inst.id} at {at(stop_at, now)}"
        await ctx.reply(
            f"⏰ {m.name} now stops at {at(stop_at, now)}{before}; "
            f"`{p}aws stop {m.name}` stops it sooner."
        )

    async def listing(self, ctx: Context) -> None:
        """Every machine: state, address, uptime, auto-stop, $/hour and cost this month."""
        rt = ctx.rt
        if not self.machines:
            raise UserError(f"{self.known()}.")
        now = rt.clock.now()
        found = await asyncio.gather(
            *(self.describe(m) for m in self.machines), return_exceptions=True
        )
        rows: list[list[str]] = []
        total = 0.0
        unknown = False
        notes: list[str] = []
        for m, inst in zip(self.machines, found, strict=True):
            if isinstance(inst, BaseException):
                if not isinstance(inst, BotError):
                    raise inst
                rows.append([m.name, "?", "?", "-", "-", "-", "?", "?"])
                notes.append(f"{m.name}: could not ask AWS: {inst}")
                continue
            await self._reconcile(m, inst, now)
            runs = [
                (r.started_at, r.stopped_at)
                for r in await db.runs_since(rt.store, m.name, month_start(now))
            ]
            running = inst.state in ("running", "pending")
            open_since = next((s for s, e in runs if e is None), None)
            if running and open_since is None and inst.launched is not None:
                # Started outside the bot: priced from its launch (EC2 sets it at each start).
                open_since = min(inst.launched.timestamp(), now.timestamp())
                runs.append((open_since, None))
            cost = month_cost(runs, now, self.price(inst.type))
            total += cost or 0.0
            unknown = unknown or cost is None
            row = await db.timer(rt.store, m.name)
            uptime = (
                human_duration(max(0.0, now.timestamp() - open_since))
                if running and open_since is not None
                else "-"
            )
            rows.append(
                [
                    m.name,
                    inst.id,
                    inst.state,
                    inst.address if running else "-",
                    uptime,
                    at(row.stop_at, now) if row and running else "-",
                    self.price_text(inst.type) if self.price(inst.type) is not None else "?",
                    money(cost) if cost is not None else "?",
                ]
            )
        text, html = messages.table(
            ["machine", "instance", "state", "address", "up", "auto-stop", "price", "this month"],
            rows,
        )
        foot = [
            *notes,
            f"{now.astimezone(UTC):%B} so far: {money(total)}{' + unknown' if unknown else ''} "
            "(est.: hours run × `aws.prices.instance_hour`, compute only)",
        ]
        await ctx.reply(
            "\n".join(["On-demand machines", text, *foot]),
            "<p>On-demand machines</p>"
            + html
            + "".join(f"<p>{messages.escape(line)}</p>" for line in foot),
        )

    # --- the auto-stop loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Warn and stop as timers fall due; sleeps on the bot's clock until the next one.

        At start every overdue timer is acted on at once (a stop that fell due while the bot
        was not running is done and said so).
        """
        while True:
            self.wake.clear()
            now = self.rt.clock.now().timestamp()
            for row in await db.timers(self.rt.store):
                if self.retry.get(row.name, 0.0) > now:
                    continue
                if row.name not in self.by_name:
                    # Removed from the config while its timer ran: say so now, not hours
                    # later with a warning whose `!aws extend` no longer works.
                    await self._stop_now(row)
                    continue
                action = due(row, now)
                if action == "warn":
                    await self._warn(row)
                elif action == "stop":
                    await self._auto_stop(row)
            rows = await db.timers(self.rt.store)
            moments = [max(next_moment(r), self.retry.get(r.name, 0.0)) for r in rows]
            if moments:
                await self.rt.clock.sleep_until(
                    datetime.fromtimestamp(min(moments), UTC), self.wake
                )
            else:
                await self.wake.wait()

    async def _warn(self, row: db.TimerRow) -> None:
        p = self.rt.prefix
        m = self.by_name.get(row.name)
        if m is not None:
            async with self.lock(m.name):
                if await self._gone(m, row):
                    return
        now = self.rt.clock.now()
        await self.rt.post(
            row.room_id,
            f"⏰ stopping {row.name} at {at(row.stop_at, now)}; "
            f"`{p}aws extend {row.name} 2h` to keep it",
        )
        await db.mark_warned(self.rt.store, row.name)

    async def _auto_stop(self, row: db.TimerRow) -> None:
        async with self.lock(row.name):
            # A command may have stopped or extended it while this waited.
            current = await db.timer(self.rt.store, row.name)
            if current is not None and due(current, self.rt.clock.time()) == "stop":
                await self._stop_now(current)

    async def _gone(self, m: OnDemand, row: db.TimerRow) -> bool:
        """True (and said once, the timer dropped) when `m` was stopped outside the bot
        (the caller holds `m`'s lock):
        a warning or auto-stop would otherwise announce stopping a machine that is not
        running and count hours it did not run. False when AWS cannot tell."""
        try:
            inst = await self.describe(m)
        except BotError:
            return False
        if inst.state in ("running", "pending"):
            return False
        now = self.rt.clock.now()
        await self._reconcile(m, inst, now)
        await db.clear_timer(self.rt.store, m.name)
        self.wake.set()
        await self.rt.post(
            row.room_id,
            f"{m.name} is already {inst.state} (stopped outside the bot): its auto-stop at "
            f"{at(row.stop_at, now)} is dropped. `{self.rt.prefix}aws start {m.name}` starts it "
            "again.",
        )
        return True

    async def _stop_now(self, row: db.TimerRow) -> None:
        rt = self.rt
        m = self.by_name.get(row.name)
        now = rt.clock.now()
        if m is not None and await self._gone(m, row):
            return
        if m is None:
            await db.clear_timer(rt.store, row.name)
            await rt.post(
                row.room_id,
                f"⚠️ {row.name} is no longer in `aws.on_demand`: "
                f"its auto-stop at {at(row.stop_at, now)} is dropped; it was not stopped.",
            )
            return
        audit_id = await audit.start(
            rt.store,
            sender=rt.config.core.matrix.user_id,
            room_id=row.room_id,
            event_id="",
            command="aws stop",
            args=[row.name, "auto-stop"],
            now=now.timestamp(),
        )
        try:
            answer = await self.aws.call(
                "ec2", "stop_instances", m.region or self.region, InstanceIds=[row.instance_id]
            )
        except BotError as exc:
            first = row.name not in self.retry
            self.retry[row.name] = (now + RETRY_AFTER).timestamp()
            await audit.end(rt.store, audit_id, "error", str(exc), now=rt.clock.time())
            # Counted like a command's outcome, so /metrics shows failing auto-stops.
            rt.metrics.commands.labels("aws stop", "error").inc()
            log.warning("auto-stop of %s failed: %s", row.name, exc)
            if first:
                await rt.post(
                    row.room_id,
                    f"❌ could not stop {row.name} ({row.instance_id}) at its "
                    f"auto-stop: {exc}. Trying again every "
                    f"{format_duration(RETRY_AFTER)}.",
                )
            return
        self.retry.pop(row.name, None)
        change = _change(answer.get("StoppingInstances", []), "running", "stopping")
        ran = await self._stopped(m, now)
        late = now.timestamp() - row.stop_at > LATE.total_seconds()
        why = (
            f"overdue: its auto-stop was due at {at(row.stop_at, now)}"
            if late
            else f"auto-stop at {at(row.stop_at, now)}"
        )
        await audit.end(
            rt.store, audit_id, "ok", f"auto-stop of {row.instance_id}", now=rt.clock.time()
        )
        rt.metrics.commands.labels("aws stop", "ok").inc()
        await rt.post(
            row.room_id,
            f"⏹ stopped {m.name} ({row.instance_id}, {why}): {change}{ran}. "
            f"`{rt.prefix}aws start {m.name}` starts it again.",
        )

    # --- helpers ----------------------------------------------------------------------------

    async def _keep_timer(
        self, m: OnDemand, inst: Instance, room: str, user: str, now: datetime
    ) -> float:
        row = await db.timer(self.rt.store, m.name)
        if row is not None:
            return row.stop_at
        stop_at = (now + m.auto_stop_after).timestamp()
        await db.set_timer(self.rt.store, m.name, inst.id, room, stop_at, user)
        self.wake.set()
        return stop_at

    async def _stopped(self, m: OnDemand, now: datetime) -> str:
        """Drop the timer and end the run; "; it ran 2 h 5 min this time" when known."""
        await db.clear_timer(self.rt.store, m.name)
        self.wake.set()
        run = await db.close_run(self.rt.store, m.name, now.timestamp())
        if run is None or run.stopped_at is None:
            return ""
        took = run.stopped_at - run.started_at
        return f"; it ran {human_duration(took) if took >= 60 else 'under a minute'} this time"

    async def _reconcile(self, m: OnDemand, inst: Instance, now: datetime) -> None:
        """A machine stopped outside the bot: its run ends now and its auto-stop is dropped."""
        if inst.state in ("stopped", "shutting-down"):
            await db.close_run(self.rt.store, m.name, now.timestamp())
            if await db.timer(self.rt.store, m.name) is not None:
                await db.clear_timer(self.rt.store, m.name)
                self.wake.set()

    async def _wait(self, m: OnDemand, target: str, passing: tuple[str, ...]) -> str:
        """Poll DescribeInstances until `target`, another state, or `ready_timeout`."""
        deadline = time.monotonic() + m.ready_timeout.total_seconds()
        delay = 0.5
        while True:
            inst = await self.describe(m)
            if inst.state == target:
                if target == "running":
                    return f"✅ {m.name} is running: address {inst.address}"
                return f"✅ {m.name} has stopped"
            if inst.state not in passing:
                return f"⚠️ {m.name} is {inst.state} (expected {target})"
            if time.monotonic() + delay > deadline:
                return (
                    f"⚠️ {m.name} is still {inst.state} after "
                    f"{format_duration(m.ready_timeout)}; `{self.rt.prefix}aws machines` "
                    "shows its state"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


def _change(items: list[dict[str, Any]], before: str, after: str) -> str:
    """ "stopped → pending" from a StartInstances/StopInstances answer's first item."""
    if items:
        before = str(items[0].get("PreviousState", {}).get("Name", before))
        after = str(items[0].get("CurrentState", {}).get("Name", after))
    return f"{before} → {after}"


MACHINES = StateKey("aws machines", Machines)


def machine(word: str, rt: Runtime) -> OnDemand:
    """A name from `aws.on_demand`; UserError naming the configured ones otherwise."""
    found = rt[MACHINES].by_name.get(word.lower())
    if found is None:
        raise UserError(f"no on-demand machine `{word}`; {rt[MACHINES].known()}")
    return found
