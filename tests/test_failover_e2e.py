"""Issue 17 items 2 and 3: two `infrabot run` processes, one PostgreSQL, one speaker, failover.

Real parts only: two bot processes (`python -m bot run`, one config each, differing only in
the HTTP port, as two hosts would share one file), the harness's Synapse, a PostgreSQL cluster
run as the `postgres` user, an SSH server with the deploy fakes of tests/test_deploy_e2e.py,
and for the split a TCP proxy in front of PostgreSQL for one instance (devstack/tcpproxy.py).
The leader is ended with SIGKILL. Waits end on what the processes report (/healthz, /metrics,
the room); "nothing else came" is checked behind a later `!ping`'s answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml

from devstack.client import RoomUser, SeenEvent
from devstack.postgres import LocalPostgres
from devstack.ssh import LocalSshServer
from devstack.synapse import LocalSynapse, free_port
from devstack.tcpproxy import TcpProxy
from tests.conftest import Accounts, base_config
from tests.test_alerts_e2e import _edit
from tests.test_deploy_e2e import _deploy_config, deploy_env  # noqa: F401 (a fixture)

TOKEN = "failover-webhook-token"
# Short for the test, yet long enough that a busy 2-core machine (the whole suite running
# beside) does not make the leader miss its renewals and step down.
LEASE = "10s"


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
def database(postgres: LocalPostgres) -> str:
    """A fresh database for the test; returns its libpq DSN."""
    name = f"infrabot_{secrets.token_hex(4)}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"host=127.0.0.1 port={postgres.port} user=postgres dbname={name}"


class Instance:
    """One `infrabot run` process; its output goes to `log`."""

    def __init__(self, name: str, config: dict[str, Any], work: Path) -> None:
        self.name = name
        self.port = free_port()
        raw = json.loads(json.dumps(config))
        raw["http"]["port"] = self.port
        self.config = work / f"config-{name}.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET, or (0, reason) when nothing answers."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.port}{path}") as resp,
            ):
                return resp.status, await resp.text()
        except aiohttp.ClientError as exc:
            return 0, str(exc)

    async def health(self) -> dict[str, Any]:
        status, text = await self.get("/healthz")
        body: dict[str, Any] = json.loads(text) if status else {}
        return {"http": status, **body}

    async def wait_health(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll /healthz until `pred` holds; fails early if the process exited."""
        async with asyncio.timeout(120):
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.tail()
                body = await self.health()
                if pred(body):
                    return body
                await asyncio.sleep(0.1)

    async def metric(self, name: str) -> float | None:
        status, text = await self.get("/metrics")
        for line in text.splitlines() if status == 200 else []:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def logged(self, text: str) -> list[str]:
        """The timestamps ("YYYY-MM-DD HH:MM:SS,mmm", sortable) of log lines holding `text`."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line[:23] for line in lines if text in line]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def leads(body: dict[str, Any]) -> bool:
    return body.get("http") == 200 and body.get("role") == "leader"


def stands_by(body: dict[str, Any]) -> bool:
    return (
        body.get("http") == 200
        and body.get("role") == "standby"
        and "another instance holds the lease" in str(body.get("reason"))
    )


@contextlib.asynccontextmanager
async def pair(
    synapse: LocalSynapse,
    accounts: Accounts,
    room: str,
    work: Path,
    dsns: tuple[str, str],
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[tuple[Instance, Instance]]:
    made: list[Instance] = []
    for name, dsn in zip(("a", "b"), dsns, strict=True):
        raw = base_config(synapse.url, accounts, room, work / "unused-state")
        raw["state"] = {"dsn": dsn, "lease": LEASE}
        raw["alertmanager"] = {"auth": {"bearer_token": TOKEN}, "dedupe_window_s": 600}
        # A job every 3 s: any slot run twice would show in job_runs.
        raw["schedules"].append(
            {"name": "tick", "cron": "*/3 * * * * *", "job": "message", "params": {"text": "t"}}
        )
        if edit is not None:
            edit(raw)
        made.append(Instance(name, raw, work))
    try:
        yield made[0], made[1]
    finally:
        for inst in made:
            inst.stop()


def payload(name: str) -> bytes:
    """An Alertmanager version-4 notification of one firing group `name`.

    Shape: Alertmanager notify/webhook/webhook.go `Message` (v0.25), as in test_alerts_e2e.
    """
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{name}"}}',
            "status": "firing",
            "receiver": "infrabot",
            "groupLabels": {"alertname": name},
            "commonLabels": {"alertname": name, "severity": "warning"},
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": name, "instance": "host0", "severity": "warning"},
                    "annotations": {"summary": f"{name} summary"},
                    "startsAt": "2026-01-01T00:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": f"{name}-0",
                }
            ],
        }
    ).encode()


async def deliver(first: Instance, other: Instance, name: str) -> None:
    """POST one notification to `first`, or, while it does not answer 200, to `other`.

    Alertmanager retries a failed webhook the same way (notify/notify.go RetryStage); with
    both instances behind one URL a load balancer would send the retry to the live one.
    """
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with asyncio.timeout(120), aiohttp.ClientSession() as session:
        for target in [first, other] * 1000:
            url = f"http://127.0.0.1:{target.port}/alertmanager"
            try:
                async with session.post(url, data=payload(name), headers=headers) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{name} was never accepted")


def groups_in(event: SeenEvent) -> set[str]:
    """The Failover groups a message shows, alone or in a digest ("🔔 4 alert groups …")."""
    return set(re.findall(r"\bFailover\d+\b", event.body))


def posted(bot: str, name: str) -> Callable[[SeenEvent], bool]:
    """A new message (not an edit) of the bot that shows group `name`."""
    return lambda e: e.sender == bot and not _edit(e) and name in groups_in(e)


def times_posted(user: RoomUser, bot: str, names: list[str]) -> dict[str, int]:
    return {n: len([e for e in user.seen if posted(bot, n)(e)]) for n in names}


def slots_run_twice(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT job, scheduled_for, count(*) FROM job_runs "
            "WHERE trigger <> 'manual' GROUP BY job, scheduled_for HAVING count(*) > 1"
        ).fetchall()


def ticks(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM job_runs WHERE job = 'tick'").fetchone()
        return int(row[0]) if row else 0


async def ping(user: RoomUser, room: str, bot: str) -> SeenEvent:
    return await user.ask(room, "!ping", bot, timeout=120)


# Two bots, a deploy and two dozen webhooks share two busy cores with Synapse and PostgreSQL.
@pytest.mark.timeout(900)
async def test_kill9_of_the_leader_fails_over_exactly_once(
    synapse: LocalSynapse,
    accounts: Accounts,
    room: str,
    people: dict[str, RoomUser],
    database: str,
    tmp_path: Path,
    deploy_env: tuple[LocalSshServer, Path, Path],  # noqa: F811 (the imported fixture)
) -> None:
    host, data, checkout = deploy_env
    (data / "mode").write_text("slow")
    alice, bob = people["alice"], people["bob"]
    bot = accounts.bot.user_id
    async with pair(
        synapse, accounts, room, tmp_path, (database, database), _deploy_config(host, checkout)
    ) as (a, b):
        a.start()
        await a.wait_health(leads)
        b.start()
        await b.wait_health(stands_by)
        assert (await a.metric("infrabot_leader"), await b.metric("infrabot_leader")) == (1, 0)
        assert (await ping(alice, room, bot)).body.startswith("pong")

        # A deploy that is running when the leader dies.
        mark = alice.mark()
        await bob.send(room, "!deploy pluto")
        await alice.wait_for(
            lambda e: e.sender == bot and "building '/nix/store/x-" in e.body,
            after=mark,
            timeout=60,
        )
        # Webhooks to both instances before, during and after the switch.
        names = [f"Failover{i}" for i in range(24)]
        for i, name in enumerate(names[:8]):
            await deliver(a if i % 2 else b, b if i % 2 else a, name)

        a.kill9()
        during = await alice.send(room, "!ping")
        for i, name in enumerate(names[8:16]):
            await deliver(a if i % 2 else b, b if i % 2 else a, name)
        await b.wait_health(leads)
        for i, name in enumerate(names[16:]):
            await deliver(a if i % 2 else b, b if i % 2 else a, name)

        # The new leader announces the deploy the old one left unfinished, once.
        await alice.wait_for(
            lambda e: e.sender == bot and "interrupted by a bot restart or failover" in e.body,
            after=mark,
            timeout=120,
        )
        for name in names:
            await alice.wait_for(posted(bot, name), timeout=120)
        # Behind this answer lies anything the leader had queued before it.
        assert (await ping(alice, room, bot)).body.startswith("pong")
        assert times_posted(alice, bot, names) == dict.fromkeys(names, 1)
        interrupted = [
            e for e in alice.seen if not _edit(e) and "interrupted by a bot restart" in e.body
        ]
        assert len(interrupted) == 1
        # The command sent while no one led: answered once, or not run (never late, twice).
        assert len([e for e in alice.seen if e.sender == bot and e.replies_to(during)]) <= 1
        assert await b.metric('infrabot_leader_changes_total{change="became"}') == 1

        # The old leader comes back and stays standby.
        a.start()
        await a.wait_health(stands_by)
        assert (await ping(alice, room, bot)).body.startswith("pong")
        assert (await a.metric("infrabot_leader"), await b.metric("infrabot_leader")) == (0, 1)
        assert await a.metric('infrabot_leader_changes_total{change="became"}') == 0

    assert ticks(database) > 0
    assert slots_run_twice(database) == []
    # Nothing of the failover reached the room but what was asked for (log + metric only).
    assert not [e for e in alice.seen if e.sender == bot and "leader" in e.body.lower()]


@pytest.mark.timeout(600)
async def test_a_leader_split_from_the_database_steps_down_before_takeover(
    synapse: LocalSynapse,
    accounts: Accounts,
    room: str,
    people: dict[str, RoomUser],
    database: str,
    tmp_path: Path,
) -> None:
    alice, bot = people["alice"], accounts.bot.user_id
    pg_port = int(database.split("port=")[1].split()[0])
    proxy = TcpProxy("127.0.0.1", pg_port)
    await proxy.start()
    via_proxy = database.replace(f"port={pg_port}", f"port={proxy.port}")
    try:
        async with pair(synapse, accounts, room, tmp_path, (via_proxy, database)) as (a, b):
            a.start()
            await a.wait_health(leads)
            b.start()
            await b.wait_health(stands_by)
            assert (await ping(alice, room, bot)).body.startswith("pong")

            proxy.cut()
            await b.wait_health(leads)
            # a is still up and serving HTTP, but knows it is cut off and does not lead.
            cut_off = await a.health()
            assert cut_off["role"] == "standby" and cut_off["http"] == 503
            assert await a.metric("infrabot_leader") == 0
            # One answer per command: only b speaks.
            pong = await ping(alice, room, bot)
            assert pong.body.startswith("pong")
            again = await ping(alice, room, bot)
            answers = [e for e in alice.seen if e.sender == bot and e.body.startswith("pong")]
            assert len([e for e in answers if e.event_id in (pong.event_id, again.event_id)]) == 2
            assert len(answers) == 3  # the first ping, and these two

            proxy.mend()
            await a.wait_health(stands_by)
            assert (await ping(alice, room, bot)).body.startswith("pong")
            assert (await a.metric("infrabot_leader"), await b.metric("infrabot_leader")) == (0, 1)
            # Both logs are stamped by this machine's clock: a stopped before b started.
            stepped_down = a.logged("stepping down before it can pass to another instance")
            took_over = b.logged("is now the leader")
            assert len(stepped_down) == 1 and len(took_over) == 1
            assert stepped_down[0] < took_over[0]
    finally:
        await proxy.stop()
    assert slots_run_twice(database) == []
