"""The lease on a real PostgreSQL: one speaker, handover, and stepping down on a split.

Each instance is a `PostgresLease` in this process whose `lead()` records when it starts and
when it is cancelled, in one list: the order of those records is the order things happened.
One instance reaches PostgreSQL through a `TcpProxy` that the test cuts (a black hole).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from bot.leader import LEADER, STANDBY, LeaseMetrics, PostgresLease, SoleLeader
from devstack.postgres import LocalPostgres
from devstack.tcpproxy import TcpProxy

LEASE = timedelta(seconds=3)


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    # Under /tmp with open permissions: the cluster runs as the unprivileged postgres user.
    base = Path(tempfile.mkdtemp(prefix="infrabot-pg-", dir="/tmp"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "pg")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def dsn(postgres: LocalPostgres) -> str:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS infrabot_lease")
    return postgres.dsn


class Instance:
    """A lease and its `lead()`, which records 'NAME leads' and 'NAME stopped' in `log`."""

    def __init__(self, name: str, dsn: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.lease = PostgresLease(dsn, LEASE, LeaseMetrics(CollectorRegistry()), me=name)
        self.leading = asyncio.Event()
        self.stopped = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def lead(self) -> None:
        self.log.append(f"{self.name} leads")
        self.stopped.clear()
        self.leading.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.leading.clear()
            self.log.append(f"{self.name} stopped")
            self.stopped.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.lease.run(self.lead))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def instances(*pairs: tuple[str, str]) -> AsyncIterator[tuple[list[str], list[Instance]]]:
    log: list[str] = []
    made = [Instance(name, dsn, log) for name, dsn in pairs]
    try:
        yield log, made
    finally:
        for inst in made:
            await inst.stop()


async def test_one_leader_and_a_standby_that_waits(dsn: str) -> None:
    async with instances(("a", dsn), ("b", dsn)) as (log, (a, b)):
        a.start()
        await a.leading.wait()
        b.start()
        # Barrier: b has been answered three times that the lease is held.
        await b.lease.wait_attempts(3)
        assert (a.lease.state.role, b.lease.state.role) == (LEADER, STANDBY)
        assert b.lease.state.reachable
        assert b.lease.state.reason == "another instance holds the lease"
        assert log == ["a leads"]
        # a renewed meanwhile: it still holds the row.
        assert a.lease.attempts >= 2


async def test_a_clean_stop_hands_the_lease_over(dsn: str) -> None:
    async with instances(("a", dsn), ("b", dsn)) as (log, (a, b)):
        a.start()
        await a.leading.wait()
        b.start()
        await b.lease.wait_attempts(1)
        await a.stop()
        await b.leading.wait()
        assert log == ["a leads", "a stopped", "b leads"]


async def test_split_from_the_database_steps_down_before_takeover(dsn: str) -> None:
    pg_port = int(dsn.split("port=")[1].split()[0])
    proxy = TcpProxy("127.0.0.1", pg_port)
    await proxy.start()
    split_dsn = dsn.replace(f"port={pg_port}", f"port={proxy.port}")
    try:
        async with instances(("a", split_dsn), ("b", dsn)) as (log, (a, b)):
            a.start()
            await a.leading.wait()
            b.start()
            await b.lease.wait_attempts(1)
            proxy.cut()
            await b.leading.wait()
            # a stopped acting before b could start: no moment with two speakers.
            assert log == ["a leads", "a stopped", "b leads"]
            assert a.lease.state.role == STANDBY
            assert not a.lease.state.reachable
            proxy.mend()
            # Back on the network, a learns that b holds the lease and stays standby.
            seen = a.lease.attempts
            await a.lease.wait_attempts(seen + 2)
            assert a.lease.state.role == STANDBY
            assert a.lease.state.reason == "another instance holds the lease"
            assert log == ["a leads", "a stopped", "b leads"]
    finally:
        await proxy.stop()


async def test_the_database_clock_decides_not_the_callers(dsn: str) -> None:
    """A row left by a crashed holder is free exactly when the database says it expired."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        async with instances(("b", dsn)) as (log, (b,)):
            b.start()
            await b.leading.wait()  # the table exists
            await b.stop()
            conn.execute(
                "UPDATE infrabot_lease SET holder = 'crashed', expires = now() + interval '1 h'"
            )
            b2 = Instance("b2", dsn, log)
            b2.start()
            await b2.lease.wait_attempts(2)
            assert b2.lease.state.role == STANDBY
            conn.execute("UPDATE infrabot_lease SET expires = now() - interval '1 ms'")
            await b2.leading.wait()
            await b2.stop()
    assert log == ["b leads", "b stopped", "b2 leads", "b2 stopped"]


async def test_sole_leader_always_leads() -> None:
    ran = asyncio.Event()

    async def lead() -> None:
        ran.set()

    sole = SoleLeader()
    await sole.run(lead)
    assert ran.is_set() and sole.state.role == LEADER
