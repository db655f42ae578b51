"""The harness of real servers: one Synapse per test session, a fresh room per test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import Bot
from bot.clock import Clock
from bot.config import parse_config
from bot.context import Runtime
from bot.registry import Registry, Router
from bot.store import PostgresStore, SqliteStore, Store
from commands import ROUTERS
from devstack.client import RoomUser
from devstack.postgres import LocalPostgres
from devstack.synapse import Account, LocalSynapse


@dataclass(frozen=True)
class Accounts:
    bot: Account
    admin: Account
    member: Account
    outsider: Account


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    hs = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    hs.prepare()
    hs.start()
    yield hs
    hs.stop()


@pytest.fixture(scope="session")
def accounts(synapse: LocalSynapse) -> Accounts:
    return Accounts(
        bot=synapse.register("infrabot", "bot-password-1", admin=False),
        admin=synapse.register("alice", "alice-password-1", admin=False),
        member=synapse.register("bob", "bob-password-1"),
        outsider=synapse.register("mallory", "mallory-password-1"),
    )


@pytest.fixture
def room(synapse: LocalSynapse, accounts: Accounts) -> Iterator[str]:
    """A private room: alice owns it, bob has power level 50, mallory is a plain member.

    Everyone leaves it afterwards: the accounts are shared by the session, and an initial sync
    covers every room an account is in, so without this each test's setup grew with the suite.
    """
    room_id = synapse.create_room(
        accounts.admin,
        name=f"infra-{secrets.token_hex(3)}",
        invite=[accounts.bot.user_id, accounts.member.user_id, accounts.outsider.user_id],
        power_levels={accounts.member.user_id: 50},
    )
    synapse.join(accounts.member, room_id)
    synapse.join(accounts.outsider, room_id)
    yield room_id
    for account in (accounts.bot, accounts.member, accounts.outsider, accounts.admin):
        synapse.leave(account, room_id)


# --- The state store (issue 17): SQLite and a real PostgreSQL ----------------------------------
# Every bot test runs on each store; `INFRABOT_STATE=sqlite` (or `postgres`) narrows that for a
# quicker run, except for the `both_stores` set. A test may parametrize `state_store` itself.
STORES = ("sqlite", "postgres")
PG_ROLE, PG_PASSWORD = "infrabot", "state-password-1"


@dataclass(frozen=True)
class PgState:
    """The session's PostgreSQL: the bot's role logs in with a password from a file."""

    server: LocalPostgres
    password_file: Path
    # A database with every router's migrations applied, copied for each bot test: copying
    # it costs what an empty CREATE DATABASE does, and spares each test the migrations.
    migrated_template: str

    def fresh_database(self, template: str = "template1") -> str:
        """A new database for one test (empty, or a copy of `template`); returns its DSN
        (no password in it)."""
        name = f"t_{secrets.token_hex(6)}"
        self.server.create_database(name, PG_ROLE, template)
        return self.dsn(name)

    def dsn(self, database: str) -> str:
        """The bot role's DSN for `database` (no password in it)."""
        return f"host=127.0.0.1 port={self.server.port} user={PG_ROLE} dbname={database}"

    def state(self) -> dict[str, Any]:
        """A `state:` section naming a fresh, already migrated database."""
        return {
            "dsn": self.fresh_database(self.migrated_template),
            "password_file": str(self.password_file),
        }


def _migrate(dsn: str) -> None:
    """Apply every router's migrations to `dsn`'s database, then close every connection.

    In a thread of its own: the session fixture may be first asked for inside a test's loop.
    """

    async def run() -> None:
        migrations = Registry(list(ROUTERS)).migrations
        store = await PostgresStore.open(dsn, migrations, password=PG_PASSWORD)
        await store.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def pg_state() -> Iterator[PgState]:
    # Under /tmp with open permissions: the cluster runs as the unprivileged postgres user.
    base = Path(tempfile.mkdtemp(prefix="infrabot-state-pg-", dir="/tmp"))
    base.chmod(0o755)
    server = LocalPostgres(base / "pg")
    server.start()
    try:
        server.add_login(PG_ROLE, PG_PASSWORD)
        secret = base / "password"
        secret.write_text(PG_PASSWORD + "\n")
        pg = PgState(server, secret, migrated_template="t_migrated")
        server.create_database(pg.migrated_template, PG_ROLE)
        _migrate(pg.dsn(pg.migrated_template))
        yield pg
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def selected_stores() -> list[str]:
    """The stores a bot test runs on: `INFRABOT_STATE` (comma-separated), else both."""
    wanted = [s.strip() for s in os.environ.get("INFRABOT_STATE", "").split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STORES))
    if unknown:
        raise pytest.UsageError(f"INFRABOT_STATE: unknown store {unknown}; known: {STORES}")
    return wanted or list(STORES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "state_store" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "state_store" in (names.split(",") if isinstance(names, str) else names):
            return
    metafunc.parametrize("state_store", selected_stores(), indirect=True)


@pytest.fixture
def state_store(request: pytest.FixtureRequest) -> str:
    """Which store the test's bots use: "sqlite" or "postgres"."""
    return str(request.param)


@pytest.fixture(params=STORES)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store with every router's tables: SQLite, then a fresh PostgreSQL database."""
    migrations = Registry(list(ROUTERS)).migrations
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "state.sqlite3", migrations)
    else:
        pg: PgState = request.getfixturevalue("pg_state")
        store = await PostgresStore.open(pg.fresh_database(), migrations, password=PG_PASSWORD)
    yield store
    await store.close()


@dataclass
class BotHandle:
    """A bot running in the test's event loop."""

    raw: dict[str, Any]
    registry: Registry
    clock: Clock | None = None
    bot: Bot | None = None
    task: asyncio.Task[None] | None = None

    @property
    def rt(self) -> Runtime:
        assert self.bot is not None and self.bot.runtime is not None
        return self.bot.runtime

    @property
    def user_id(self) -> str:
        return str(self.raw["matrix"]["user_id"])

    async def start(self, wait: bool = True, lead: bool = True) -> None:
        """Start the bot; with `wait`, return once it is ready and (with `lead`) leads, so
        that a command sent next is after its horizon (on PostgreSQL the lease takes a moment)."""
        config = parse_config(
            self.raw,
            "test-config.yaml",
            self.registry.sections,
            {j.name: j.params for j in self.registry.jobs.values()},
        )
        self.bot = Bot(config, self.registry, self.clock)
        self.task = asyncio.get_running_loop().create_task(self.bot.run())
        if wait:
            ready = asyncio.get_running_loop().create_task(self.bot.ready.wait())
            done, _ = await asyncio.wait(
                {ready, self.task}, timeout=60, return_when="FIRST_COMPLETED"
            )
            if self.task in done:
                ready.cancel()
                self.task.result()
            assert ready in done, "bot did not become ready"
            if lead:
                leading = asyncio.get_running_loop().create_task(self.bot.leading.wait())
                done, _ = await asyncio.wait(
                    {leading, self.task}, timeout=60, return_when="FIRST_COMPLETED"
                )
                if self.task in done:
                    leading.cancel()
                    self.task.result()
                assert leading in done, "bot did not become the leader"

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def barrier(self, user: RoomUser, room: str) -> None:
        """Return once `user` has seen everything the bot queued for `room` before now.

        The outbox sends a room's messages in order and a member sees the timeline in order,
        so the answer to a ping sent now comes after all of them: "nothing else arrived"
        is then checked against what was seen, without sleeping.
        """
        await user.ask(room, f"{self.rt.prefix}ping", self.user_id, timeout=60)

    async def wait_metric(self, line: str, timeout: float = 30) -> None:
        """Wait until /metrics shows `line` (e.g. a counter reaching a value)."""
        async with asyncio.timeout(timeout):
            while True:
                if line in (await self.http("/metrics"))[1]:
                    return
                await asyncio.sleep(0.1)

    async def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.rt.http_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status, await resp.text()


BotFactory = Callable[..., BotHandle]


def base_config(hs_url: str, accounts: Accounts, room: str, state_dir: Path) -> dict[str, Any]:
    return {
        "matrix": {
            "homeserver": hs_url,
            "user_id": accounts.bot.user_id,
            "access_token": accounts.bot.access_token,
            "rooms": [room],
            "sync_timeout_s": 5,
            "max_backoff_s": 2,
            "request_timeout_s": 10,
        },
        "permissions": {
            "roles": {
                "admin": {"users": [accounts.admin.user_id]},
                "operator": {"min_power_level": 50},
            }
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "state": {"data_dir": str(state_dir)},
        "schedules": [
            {
                "name": "reminder",
                "cron": "0 9 * * 1",
                "job": "message",
                "params": {"text": "weekly reminder: rotate the on-call pager"},
            }
        ],
    }


@pytest.fixture
async def make_bot(
    synapse: LocalSynapse,
    accounts: Accounts,
    room: str,
    tmp_path: Path,
    state_store: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[BotFactory]:
    """Build bots against the test room; every bot is stopped at the end.

    With `state_store` "postgres" the test's bots share one fresh PostgreSQL database.
    """
    handles: list[BotHandle] = []
    pg_section: dict[str, Any] | None = None
    if state_store == "postgres":
        pg_section = request.getfixturevalue("pg_state").state()

    def factory(
        extra_routers: tuple[Router, ...] = (),
        edit: Callable[[dict[str, Any]], None] | None = None,
        homeserver: str | None = None,
        clock: Clock | None = None,
    ) -> BotHandle:
        raw = base_config(homeserver or synapse.url, accounts, room, tmp_path / "state")
        if pg_section is not None:
            raw["state"] = dict(pg_section)
        if edit is not None:
            edit(raw)
        handle = BotHandle(raw, Registry([*ROUTERS, *extra_routers]), clock)
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:
        await handle.stop()


@pytest.fixture
async def people(synapse: LocalSynapse, accounts: Accounts) -> AsyncIterator[dict[str, RoomUser]]:
    """alice (admin), bob (operator by power level), mallory (no role), each syncing."""
    users = {
        "alice": RoomUser(synapse.url, accounts.admin.user_id, accounts.admin.access_token),
        "bob": RoomUser(synapse.url, accounts.member.user_id, accounts.member.access_token),
        "mallory": RoomUser(synapse.url, accounts.outsider.user_id, accounts.outsider.access_token),
    }
    for user in users.values():
        await user.start()
    yield users
    for user in users.values():
        await user.close()


# A test that runs once per store whatever INFRABOT_STATE says (see README "Tests").
both_stores = pytest.mark.parametrize("state_store", STORES, indirect=True)
