"""The PostgreSQL store through the running bot, and a real outage of the server under it."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.store import PostgresStore, StoreUnavailable
from devstack.client import RoomUser
from devstack.postgres import LocalPostgres
from devstack.synapse import free_port
from tests.conftest import PG_PASSWORD, PG_ROLE, Accounts, BotFactory
from tests.test_alerts_e2e import _alerting, _payload, _post


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """A cluster of the test's own, so that stopping it touches no other test."""
    base = Path(tempfile.mkdtemp(prefix="infrabot-outage-pg-", dir="/tmp"))
    base.chmod(0o755)
    server = LocalPostgres(base / "pg")
    server.start()
    try:
        server.add_login(PG_ROLE, PG_PASSWORD)
        server.create_database("infrabot", PG_ROLE)
        (base / "password").write_text(PG_PASSWORD)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_a_postgres_outage_answers_503_retries_and_loses_nothing(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    own_pg: LocalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()

    def edit(raw: dict[str, Any]) -> None:
        _alerting(port)(raw)
        raw["state"] = {
            "dsn": f"host=127.0.0.1 port={own_pg.port} user={PG_ROLE} dbname=infrabot",
            "password_file": str(own_pg.workdir.parent / "password"),
            "connect_timeout": "2s",
        }

    bot = make_bot(edit=edit)
    await bot.start()
    alice = people["alice"]
    await alice.ask(room, "!ping", bot.user_id, timeout=30)

    own_pg.stop()
    # Not committed, so not accepted: Alertmanager retries a 5xx.
    status, text = await _post(bot, _payload("DuringOutage"))
    assert status == 503, text
    assert "state store (PostgreSQL) is unavailable" in text
    code, health = await bot.http("/healthz")
    # Either the pool's own refusal or, on a busy machine, /healthz's 2 s wait for it.
    assert code == 503 and "state store" in health and "unavailable" in health, health
    # A command sent now is seen, cannot be recorded, and waits in the homeserver.
    asked = await alice.send(room, "!ping")
    await bot.wait_metric('infrabot_errors_total{where="store"}', timeout=60)

    own_pg.start()
    # Alertmanager's retry, as it would send it.
    for _ in range(300):
        status, text = await _post(bot, _payload("DuringOutage"))
        if status == 200:
            break
        assert status == 503, text
        await asyncio.sleep(0.2)
    assert status == 200, text
    await alice.wait_for(lambda e: e.sender == bot.user_id and "DuringOutage" in e.body, timeout=60)
    await alice.reply_to(asked, bot.user_id, timeout=60)
    await bot.barrier(alice, room)
    answers = [e for e in alice.seen if e.sender == bot.user_id and e.replies_to(asked)]
    assert len(answers) == 1, "the command sent during the outage is answered once"
    groups = [e for e in alice.seen if e.sender == bot.user_id and "DuringOutage" in e.body]
    assert len(groups) == 1, "the alert is posted once"
    assert (await bot.http("/healthz"))[0] == 200
    assert bot.task is not None and not bot.task.done(), "the bot never stopped"
    assert "unavailable" in caplog.text, "the outage is logged"
    assert PG_PASSWORD not in caplog.text, "the password never reaches the log"


async def test_after_a_long_outage_the_first_statement_once_postgres_is_back_succeeds(
    own_pg: LocalPostgres,
) -> None:
    """psycopg_pool retries a lost server with a doubling delay (1, 2, 4, 8, 16 s …, for 5
    minutes): after an outage of a minute, the pool's next try came up to a minute after the
    server was back, and every webhook, sync and outbox turn failed meanwhile (an instance
    could even take the lease, on its own connection, and crash its leader tasks). The pool's
    tries are bounded to one connect_timeout, so a statement waiting that long is served."""
    store = await PostgresStore.open(
        f"host=127.0.0.1 port={own_pg.port} user={PG_ROLE} dbname=infrabot",
        password=PG_PASSWORD,
        connect_timeout=timedelta(seconds=2),
    )
    try:
        await store.execute("SELECT 1")
        own_pg.stop()
        # Statements during the outage, as the bot's loops and webhooks make them, until the
        # pool has failed to connect five times: psycopg_pool's own delay would now be 16 s.
        while store.pool.get_stats().get("connections_errors", 0) < 5:
            with pytest.raises(StoreUnavailable):
                await store.execute("SELECT 1")
        own_pg.start()
        # The server answers now (pg_ctl -w): the next statement, waiting its connect_timeout
        # for a connection, gets one.
        result = await store.execute("SELECT 1 AS one")
        assert result.rows == [{"one": 1}]
    finally:
        await store.close()


@pytest.mark.parametrize("state_store", ["postgres"], indirect=True)
async def test_two_instances_logging_in_by_password_at_once_share_one_device(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, accounts: Accounts
) -> None:
    """Both find no stored session and log in; each used to keep its own device, so the
    outbox's transaction ids (deduplicated per device) no longer made a resend after a
    failover the same event. The second to store its session now takes the first's."""

    def with_password(raw: dict[str, Any]) -> None:
        del raw["matrix"]["access_token"]
        raw["matrix"]["password"] = accounts.bot.password

    first, second = make_bot(edit=with_password), make_bot(edit=with_password)
    await asyncio.gather(first.start(lead=False), second.start(lead=False))
    one, two = first.rt.transport.client, second.rt.transport.client
    assert (one.device_id, one.access_token) == (two.device_id, two.access_token)
    key = f"matrix.session:{first.raw['matrix']['homeserver']}:{first.user_id}"
    saved = await first.rt.store.get_json(key)
    assert saved == {"access_token": one.access_token, "device_id": one.device_id}
    answer = await people["alice"].ask(room, "!ping", first.user_id, timeout=60)
    assert answer.body.startswith("pong")


async def test_a_revoked_password_session_is_replaced_and_the_bot_answers(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, accounts: Accounts
) -> None:
    """The homeserver revokes the stored session (its device logged out): the leader logs in
    again, stores the new session in place of the refused one, and answers."""

    def with_password(raw: dict[str, Any]) -> None:
        del raw["matrix"]["access_token"]
        raw["matrix"]["password"] = accounts.bot.password

    bot = make_bot(edit=with_password)
    await bot.start()
    alice = people["alice"]
    await alice.ask(room, "!ping", bot.user_id, timeout=60)
    client = bot.rt.transport.client
    refused = client.access_token
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{client.homeserver}/_matrix/client/v3/logout",
            headers={"Authorization": f"Bearer {refused}"},
            json={},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()

    # A command sent before the bot is back in the room would be late (not run, as after a
    # restart): ask once it holds a new session and has joined again.
    def back() -> bool:
        renewed = client.access_token not in ("", refused)
        return renewed and bot.rt.health.reason in ("connected", "syncing")

    async with asyncio.timeout(120):
        while not back():  # noqa: ASYNC110 - polled state, no event to await
            await asyncio.sleep(0.1)
    answer = await alice.ask(room, "!ping", bot.user_id, timeout=120)
    assert answer.body.startswith("pong")
    key = f"matrix.session:{bot.raw['matrix']['homeserver']}:{bot.user_id}"
    assert (await bot.rt.store.get_json(key))["access_token"] == client.access_token
