"""Who speaks: a lease in PostgreSQL, judged by the database's clock, held by one instance.

Two `infrabot run` processes share one PostgreSQL database; the one holding the lease row
`infrabot_lease('speaker')` syncs, answers commands, runs jobs and sends the outbox (the
leader), the other only serves HTTP (the standby). With SQLite there is one instance and it
always leads (`SoleLeader`).

The lease (`PostgresLease`) is one statement, for taking and for renewing it:

    INSERT … ON CONFLICT (name) DO UPDATE SET holder = me, expires = now() + lease
    WHERE lease.holder = me OR lease.expires < now()

so whether it is free is decided by the database's clock alone (`now()`, the start of the
statement's transaction), never by comparing two machines' clocks.

Why there are never two speakers, even on a network split: the leader notes its own monotonic
time `t` BEFORE sending each renewal. The database stamps `expires` from its `now()`, which is
later than `t`, so the lease lasts for others at least until `t + lease`. The leader acts only
until `t + lease * STEP_DOWN_AT` of its last successful renewal, then stops every leader-only
task (the remaining `lease / 4` is the margin for stopping and for the two clocks' rates). A
leader cut off from the database therefore steps down before anybody else can take the lease.
Renewals go out every `lease / 3`: two may fail before it steps down.

What it does not guarantee: an HTTP request to the homeserver already on the wire when the
leader steps down may still land (the outbox's transaction ids make a resent event the same
event); a machine whose monotonic clock runs a quarter slower than the database's breaks the
margin; a process frozen (SIGSTOP, a VM pause) longer than the margin between its deadline
check and its next action may act once more after its lease has passed.

The lease uses a connection of its own, not the store's pool: a pool exhausted by slow
queries must not cost the leader its lease. A second connection LISTENs on `infrabot_outbox`,
which a trigger notifies when any instance commits an outbox row, so the leader sends a
webhook accepted by the standby at once (and, failing a notification, at the next renewal).
(psycopg's `notifies()` holds its connection for as long as it waits, hence two.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

# psycopg is imported inside the methods that use it: a bot on SQLite never loads libpq and
# its pool (~10 MB, ~0.15 s of start-up; README "Speed").
if TYPE_CHECKING:
    import psycopg

    from bot.config import StateConfig
    from bot.metrics import Metrics

log = logging.getLogger(__name__)

LEADER = "leader"
STANDBY = "standby"
# Renewals per lease, and the fraction of the lease after a renewal was SENT at which a leader
# that could not renew since stops acting (see the module docstring).
RENEWALS_PER_LEASE = 3
STEP_DOWN_AT = 0.75
# How long stopping the leader-only tasks may take before the lease could pass to another.
STOP_TIMEOUT_FRACTION = 0.2
NOTIFY_CHANNEL = "infrabot_outbox"
# Takeover after a crash within lease + lease/3 (20 s): inside the 30 s the team asked for.
DEFAULT_LEASE = timedelta(seconds=15)

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS infrabot_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires TIMESTAMPTZ NOT NULL
    )
    """,
    # Every commit of outbox rows wakes the leader, whichever instance committed them.
    f"""
    CREATE OR REPLACE FUNCTION infrabot_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END $$
    """,
    # The outbox is the store's (bot.outbox_db); the lease only adds a trigger when it exists.
    """
    DO $$ BEGIN
        IF to_regclass('outbox') IS NOT NULL THEN
            CREATE OR REPLACE TRIGGER infrabot_outbox_notify AFTER INSERT OR UPDATE ON outbox
            FOR EACH STATEMENT EXECUTE FUNCTION infrabot_outbox_notify();
        END IF;
    END $$
    """,
)

TAKE = """
INSERT INTO infrabot_lease(name, holder, expires)
VALUES ('speaker', %(me)s, now() + %(lease)s * interval '1 second')
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE infrabot_lease.holder = excluded.holder OR infrabot_lease.expires < now()
RETURNING holder
"""
RELEASE = "UPDATE infrabot_lease SET expires = now() WHERE name = 'speaker' AND holder = %(me)s"


def instance_id() -> str:
    """This process's name in the lease: host, pid and a random part (a restart is new)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseMetrics:
    """`infrabot_leader` (1 while this instance leads) and `infrabot_leader_changes_total`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "infrabot_leader", "1 while this instance is the speaker, else 0.", registry=registry
        )
        self.changes = Counter(
            "infrabot_leader_changes_total",
            "Times this instance became (became) or stopped being (stepped_down) the speaker.",
            ["change"],
            registry=registry,
        )
        for change in ("became", "stepped_down"):
            self.changes.labels(change)  # shown as 0 before the first change


@dataclass
class LeaseState:
    """What /healthz shows: the role, and whether the lease's database answers."""

    role: str = STANDBY
    reachable: bool = False
    reason: str = "starting"


Lead = Callable[[], Coroutine[Any, Any, None]]


class Leadership(Protocol):
    """Runs `lead()` only while this instance is the speaker."""

    state: LeaseState

    async def run(self, lead: Lead) -> None:
        """Until cancelled: run `lead` while leading, cancel it on losing the lease."""
        ...


class SoleLeader:
    """One instance on SQLite: always the leader."""

    def __init__(self, metrics: LeaseMetrics | None = None) -> None:
        self.state = LeaseState(role=LEADER, reachable=True, reason="single instance")
        self.metrics = metrics

    async def run(self, lead: Lead) -> None:
        """Run `lead` until cancelled."""
        if self.metrics is not None:
            self.metrics.leader.set(1)
        await lead()


class PostgresLease:
    """The lease row in PostgreSQL (see the module docstring).

    `dsn` is a libpq connection string without a password (`password` apart, so that no
    DSN can show it); `lease` is how long a renewal holds, at least 3 s (ValueError).
    `on_notify` is called when another instance commits outbox rows, and after every renewal
    (a lost notification is made up for within `lease / 3`).
    """

    def __init__(
        self,
        dsn: str,
        lease: timedelta,
        metrics: LeaseMetrics,
        *,
        me: str | None = None,
        password: str | None = None,
        on_notify: Callable[[], None] = lambda: None,
    ) -> None:
        if lease < timedelta(seconds=3):
            raise ValueError("the lease must last at least 3 s")
        self.dsn = dsn
        self._password = password
        self.lease_s = lease.total_seconds()
        self.metrics = metrics
        self.me = me or instance_id()
        self.on_notify = on_notify
        self.state = LeaseState()
        self.attempts = 0  # answered attempts to take the lease, for tests' barriers
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._abandoned: set[asyncio.Task[bool]] = set()
        self._attempted = asyncio.Condition()

    @property
    def interval_s(self) -> float:
        """Seconds between renewals (and between a standby's attempts)."""
        return self.lease_s / RENEWALS_PER_LEASE

    async def run(self, lead: Lead) -> None:
        """Try for the lease every `interval_s`; lead while holding it; never returns."""
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(), name="lease-listen")
        try:
            while True:
                sent = loop.time()
                if await self._attempt_until(sent + self.interval_s):
                    await self._hold(lead, sent)
                    continue  # stepped down: try again at once (it is likely taken by now)
                await asyncio.sleep(max(0.0, sent + self.interval_s - loop.time()))
        finally:
            listener.cancel()
            # Guarded by `holder = me`: a no-op unless this instance still holds the lease.
            await self._close(release=True)

    async def wait_attempts(self, count: int) -> None:
        """Until at least `count` attempts were answered (a test's barrier)."""
        async with self._attempted:
            await self._attempted.wait_for(lambda: self.attempts >= count)

    async def _hold(self, lead: Lead, sent: float) -> None:
        """Lead until no renewal has come back by the step-down deadline."""
        loop = asyncio.get_running_loop()
        deadline = sent + self.lease_s * STEP_DOWN_AT
        self._set_role(LEADER)
        log.warning("this instance (%s) is now the leader", self.me)
        self.metrics.changes.labels("became").inc()
        task = asyncio.create_task(lead(), name="leader")
        try:
            while True:
                next_renewal = sent + self.interval_s
                done, _ = await asyncio.wait({task}, timeout=max(0.0, next_renewal - loop.time()))
                if done:
                    task.result()  # a leader task that ended: its error is the supervisor's
                    return
                sent = loop.time()
                if sent >= deadline:
                    break
                attempt = asyncio.create_task(self._attempt(), name="lease-renew")
                # The deadline is watched here, not by cancelling the query: psycopg answers a
                # cancellation by asking the server to cancel, which a split holds up.
                either: set[asyncio.Future[Any]] = {attempt, task}
                await asyncio.wait(
                    either, timeout=deadline - loop.time(), return_when="FIRST_COMPLETED"
                )
                if task.done():
                    self._abandon(attempt)
                    task.result()
                    return
                if not attempt.done():
                    self._abandon(attempt)
                    self._unreachable("no answer before the step-down deadline")
                    break
                if attempt.result():
                    deadline = sent + self.lease_s * STEP_DOWN_AT
                elif self.state.reachable:
                    log.error("the lease was taken by another instance; stepping down")
                    return
            log.error(
                "could not renew the lease in time (%s); stepping down before it can pass "
                "to another instance",
                self.state.reason,
            )
        finally:
            await self._stop(task)

    async def _stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        # Bounded: a task that ignores cancellation must not keep the role past the margin.
        await asyncio.wait({task}, timeout=self.lease_s * STOP_TIMEOUT_FRACTION)
        if not task.done():
            log.error("leader tasks still stopping after stepping down")
        self._set_role(STANDBY)
        self.metrics.changes.labels("stepped_down").inc()
        log.warning("this instance (%s) is now standby", self.me)

    def _set_role(self, role: str) -> None:
        self.state.role = role
        self.metrics.leader.set(1 if role == LEADER else 0)

    async def _attempt_until(self, deadline: float) -> bool:
        """One attempt, given up (as failed) at `deadline` (loop time)."""
        attempt = asyncio.create_task(self._attempt(), name="lease-take")
        done, _ = await asyncio.wait(
            {attempt}, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
        )
        if not done:
            self._abandon(attempt)
            self._unreachable("no answer in time")
            return False
        return attempt.result()

    def _abandon(self, attempt: asyncio.Task[bool]) -> None:
        """Leave a hung attempt to end by itself, on a connection no one else will use."""
        self._conn = None
        attempt.cancel()
        self._abandoned.add(attempt)
        attempt.add_done_callback(self._abandoned.discard)

    async def _attempt(self) -> bool:
        """One TAKE; True if this instance holds the lease now."""
        import psycopg

        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            conn = await self._connection()
            cur = await conn.execute(TAKE, {"me": self.me, "lease": self.lease_s})
            row = await cur.fetchone()
        except (psycopg.Error, OSError) as exc:
            self._unreachable(_describe(exc))
            if conn is not None:
                await conn.close()
            if self._conn is conn:
                self._conn = None
            return False
        except asyncio.CancelledError:
            if conn is not None:
                await conn.close()
            raise
        held = row is not None
        self.state.reachable = True
        self.state.reason = "holding the lease" if held else "another instance holds the lease"
        async with self._attempted:
            self.attempts += 1
            self._attempted.notify_all()
        if held:
            self.on_notify()
        return held

    def _unreachable(self, detail: str) -> None:
        reason = f"the lease database does not answer: {detail}"
        if self.state.reachable or self.state.reason != reason:
            log.warning("%s", reason)
        self.state.reachable, self.state.reason = False, reason

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            conn = await self._connect()
            try:
                # Two instances starting at once create the same objects: one at a time.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(72017)")
                    for statement in SCHEMA:
                        await conn.execute(statement)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        import psycopg

        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        return await psycopg.AsyncConnection.connect(
            self.dsn,
            **extra,
            autocommit=True,
            connect_timeout=max(2, int(self.interval_s)),
            application_name="infrabot-lease",
            # The kernel gives up on a connection whose data goes unacknowledged this long.
            tcp_user_timeout=int(self.lease_s * 1000),
        )

    async def _listen(self) -> None:
        """Wake the leader's outbox on each notification; reconnects every `interval_s`."""
        import psycopg

        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
                        if self.state.role == LEADER:
                            self.on_notify()
            except (psycopg.Error, OSError) as exc:
                log.debug("outbox notifications lost (%s); listening again", _describe(exc))
            await asyncio.sleep(self.interval_s)

    async def _close(self, *, release: bool) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is None:
            return
        if release and not conn.closed:
            # A clean stop hands the lease on at once instead of after it expires.
            try:
                async with asyncio.timeout(2):
                    await conn.execute(RELEASE, {"me": self.me})
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("could not release the lease: %s", _describe(exc))
        await conn.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def make_leadership(
    state: StateConfig, metrics: Metrics, *, on_notify: Callable[[], None]
) -> SoleLeader | PostgresLease:
    """The lease for this configuration: PostgreSQL's when the state is there, else sole."""
    lease_metrics = LeaseMetrics(metrics.registry)
    if state.dsn is None:
        return SoleLeader(lease_metrics)
    return PostgresLease(
        state.dsn,
        state.lease,
        lease_metrics,
        password=None if state.password is None else state.password.get_secret_value(),
        on_notify=on_notify,
    )
