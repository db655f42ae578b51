"""The Alertmanager relay through a real Alertmanager and a real Synapse."""

from __future__ import annotations

import asyncio
import html as htmllib
import io
import json
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot import outbox_db
from bot.clock import ManualClock
from bot.context import Runtime
from bot.dispatch import Dispatcher
from bot.http import read_body
from bot.matrix import IncomingReaction
from bot.registry import Router
from commands.alerts import ALERTS, db
from commands.alerts.render import REMINDER
from devstack.alertmanager import LocalAlertmanager
from devstack.client import RoomUser, SeenEvent
from devstack.synapse import LocalSynapse, free_port
from tests.conftest import BotFactory, BotHandle, both_stores
from tests.local_server import serve

TOKEN = "webhook-token-123456"


def _alerting(
    port: int, am_url: str | None = None, **more: Any
) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["http"]["port"] = port
        raw["alertmanager"] = {
            "auth": {"bearer_token": TOKEN},
            "dedupe_window_s": 600,
            **({"url": am_url} if am_url else {}),
            **more,
        }

    return edit


@pytest.fixture
async def alerting(
    make_bot: BotFactory, tmp_path: Path
) -> AsyncIterator[tuple[BotHandle, LocalAlertmanager]]:
    port = free_port()
    am = LocalAlertmanager(
        tmp_path / "am", f"http://127.0.0.1:{port}/alertmanager", bearer_token=TOKEN
    )
    am.start()
    bot = make_bot(edit=_alerting(port, am.url))
    await bot.start()
    yield bot, am
    am.stop()


def _edit(event: SeenEvent) -> bool:
    return (event.content.get("m.relates_to") or {}).get("rel_type") == "m.replace"


def _text(event: SeenEvent) -> str:
    return str(event.content.get("m.new_content", event.content).get("body", ""))


def _html(event: SeenEvent) -> str:
    return str(event.content.get("m.new_content", event.content).get("formatted_body", ""))


def _is_edit_of(event: SeenEvent, event_id: str) -> bool:
    rel = event.content.get("m.relates_to") or {}
    return rel.get("rel_type") == "m.replace" and rel.get("event_id") == event_id


def _unit_failed(host: str) -> dict[str, str]:
    """The labels of the users' failed-unit alert for nginx on `host`."""
    return {
        "alertname": "SystemdUnitFailed",
        "instance": f"{host}:9100",
        "name": "nginx.service",
        "severity": "WARNING",
    }


@both_stores
async def test_alerts_are_grouped_and_resolving_edits_the_message(
    alerting: tuple[BotHandle, LocalAlertmanager], people: dict[str, RoomUser], room: str
) -> None:
    bot, am = alerting
    alice = people["alice"]
    mark = alice.mark()
    for host in ("pluto", "haumea"):
        am.fire(
            _unit_failed(host),
            {"summary": f"unit nginx.service failed on {host}", "grafana": "https://grafana/d/1"},
        )
    message = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "SystemdUnitFailed" in e.body and not _edit(e),
        timeout=20,
        after=mark,
    )
    # Alerts reaching Alertmanager apart may arrive as 1, then 2: the same message is edited.
    latest = await alice.wait_for(
        lambda e: (
            (e.event_id == message.event_id or _is_edit_of(e, message.event_id))
            and "FIRING (2)" in _text(e)
        ),
        timeout=20,
        after=mark,
    )
    body = _text(latest)
    assert body.startswith("⚠️ FIRING (2) · WARNING · SystemdUnitFailed")
    assert "pluto" in body and "haumea" in body
    assert "Silence: " + am.url in body and "Grafana: https://grafana/d/1" in body
    html = _html(latest)
    assert "<a href=" in html and "unit nginx.service failed on pluto" in html
    originals = [
        e
        for e in alice.seen[mark:]
        if e.sender == bot.user_id and "FIRING" in e.body and not _edit(e)
    ]
    assert len(originals) == 1, "one message per group, not per alert"

    for host in ("pluto", "haumea"):
        am.fire(_unit_failed(host), resolved=True)
    edit = await alice.wait_for(
        lambda e: (
            _is_edit_of(e, message.event_id) and "RESOLVED" in e.content["m.new_content"]["body"]
        ),
        timeout=20,
        after=mark,
    )
    assert "✅ RESOLVED" in edit.content["m.new_content"]["body"]
    note = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("✅ resolved: SystemdUnitFailed"),
        timeout=10,
        after=mark,
    )
    assert note.content["m.relates_to"]["rel_type"] == "m.thread"
    assert note.content["m.relates_to"]["event_id"] == message.event_id


async def test_silence_from_chat(
    alerting: tuple[BotHandle, LocalAlertmanager],
    people: dict[str, RoomUser],
    room: str,
) -> None:
    bot, am = alerting
    bob, mallory = people["bob"], people["mallory"]
    am.fire(
        {"alertname": "NotUp", "instance": "pluto:9100", "severity": "warning"},
        {"summary": "pluto is down"},
    )
    listed = await bob.ask(room, "!alerts alertname=NotUp", bot.user_id)
    assert "NotUp" in listed.body and "pluto" in listed.body and "pluto is down" in listed.body

    refused = await mallory.ask(room, "!silence alertname=NotUp 1h", bot.user_id)
    assert "needs the operator role" in refused.body

    bad = await bob.ask(room, "!silence alertname=NotUp forever", bot.user_id)
    assert "not a duration" in bad.body
    bad = await bob.ask(room, "!silence 2h because", bot.user_id)
    assert "`2h` is not a matcher" in bad.body
    assert "usage: `!silence <matchers…> <duration> [comment…]`" in bad.body
    bad = await bob.ask(room, '!silence instance=~"pluto(" 2h', bot.user_id)
    assert "not a valid regular expression" in bad.body

    done = await bob.ask(
        room, '!silence alertname=NotUp instance=~"pluto.*" 2h planned reboot', bot.user_id
    )
    assert done.body.startswith("🔕 silenced") and "id " in done.body
    silence_id = done.body.rsplit("id ", 1)[1].strip()
    silences = {s["id"]: s for s in am.api("GET", "/silences")}
    made = silences[silence_id]
    assert made["createdBy"] == bob.client.user_id
    assert made["comment"] == "planned reboot"
    assert made["status"]["state"] == "active"
    assert {(m["name"], m["value"], m["isRegex"]) for m in made["matchers"]} == {
        ("alertname", "NotUp", False),
        ("instance", "pluto.*", True),
    }
    ends = datetime.fromisoformat(made["endsAt"].replace("Z", "+00:00"))
    assert timedelta(hours=1, minutes=58) < ends - datetime.now(UTC) <= timedelta(hours=2)

    listing = await bob.ask(room, "!silences", bot.user_id)
    assert silence_id[:8] in listing.body and "instance=~pluto.*" in listing.body

    gone = await bob.ask(room, f"!unsilence {silence_id[:8]}", bot.user_id)
    assert f"silence {silence_id} expired" in gone.body
    assert {s["id"]: s for s in am.api("GET", "/silences")}[silence_id]["status"][
        "state"
    ] == "expired"
    again = await bob.ask(room, f"!unsilence {silence_id}", bot.user_id)
    assert f"silence {silence_id} is already expired (since " in again.body
    unknown = await bob.ask(room, "!unsilence deadbeef", bot.user_id)
    assert "No such silence: `deadbeef`" in unknown.body
    # With Alertmanager gone, an id that cannot be one is still refused: no call was made.
    am.stop()
    refused = await bob.ask(room, "!unsilence ../../status", bot.user_id)
    assert "cannot be a silence id" in refused.body


def _payload(name: str, status: str = "firing", n: int = 1) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "status": status,
        "receiver": "infrabot",
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "severity": "warning"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, "instance": f"host{i}", "severity": "warning"},
                "annotations": {"summary": f"{name} number {i} <b>not bold</b>"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"{name}-{i}",
            }
            for i in range(n)
        ],
    }


async def _post(
    bot: BotHandle,
    body: bytes | dict[str, Any],
    token: str | None = TOKEN,
    path: str = "/alertmanager",
) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{bot.rt.http_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        # A stream, not raw bytes: aiohttp warns (ResourceWarning) about a large bytes body.
        session.post(url, data=io.BytesIO(data), headers=headers) as r,
    ):
        return r.status, await r.text()


async def test_webhook_rejects_bad_input_and_keeps_running(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    unconfigured = make_bot()
    await unconfigured.start()
    status, text = await _post(unconfigured, _payload("Nobody"))
    assert status == 404 and "not configured" in text
    await unconfigured.stop()
    bot = make_bot(edit=_alerting(free_port()))
    await bot.start()
    assert (await _post(bot, _payload("Ok"), token=None))[0] == 401
    assert (await _post(bot, _payload("Ok"), token="wrong-token"))[0] == 401
    status, text = await _post(bot, b"{not json")
    assert status == 400 and "not JSON" in text
    status, text = await _post(bot, {**_payload("Old"), "version": "3"})
    assert status == 400 and "version" in text
    status, text = await _post(bot, {**_payload("Empty"), "alerts": []})
    assert status == 400 and "alerts" in text
    bad_alert = _payload("BadAlert")
    bad_alert["alerts"][0]["status"] = "exploded"
    status, text = await _post(bot, bad_alert)
    assert status == 400 and "alerts.0.status" in text
    status, _ = await _post(bot, b"[" + b"1," * 700_000 + b"1]")
    assert status == 413
    fine = _payload("Fine")
    status, text = await _post(bot, fine)
    assert status == 200 and "posted" in text
    # The HA twin of the same notification is accepted but not posted again.
    status, text = await _post(bot, fine)
    assert status == 200 and "duplicate" in text
    status, text = await _post(bot, _payload("Routed"), path="/alertmanager/critical")
    assert status == 200
    # A few hundred mangled payloads through the live server: never a 5xx, never a crash.
    rng = random.Random(4)
    statuses = set()
    for _ in range(300):
        raw = bytearray(json.dumps(_payload(f"Fuzz{rng.randrange(5)}")).encode())
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        statuses.add((await _post(bot, bytes(raw)))[0])
    assert statuses <= {200, 400}, statuses
    # The answer to the ping comes after anything the webhooks above had queued.
    pong = await people["alice"].ask(room, "!ping", bot.user_id)
    assert pong.body.startswith("pong")
    shown = [e for e in people["alice"].seen if e.sender == bot.user_id and "Fine" in e.body]
    assert len(shown) == 1
    assert "&lt;b&gt;not bold&lt;/b&gt;" in shown[0].content["formatted_body"]


def _says(sender: str, text: str) -> Callable[[SeenEvent], bool]:
    """Matches an event from `sender` whose body contains `text`."""
    return lambda e: e.sender == sender and text in e.body


def _posts(sender: str, text: str) -> Callable[[SeenEvent], bool]:
    """Matches a new message (not an edit) from `sender` whose body contains `text`."""
    return lambda e: e.sender == sender and text in e.body and not _edit(e)


def _titles(event: SeenEvent) -> list[str]:
    """The alert groups a message shows: its title(s), or each line of a storm digest."""
    lines = event.body.splitlines()
    if lines and "🌩️ Alert storm" in lines[0]:
        return [line.split(" · ", 1)[1].split(" — ")[0] for line in lines if line.startswith("• ")]
    return [line.rsplit("· ", 1)[-1] for line in lines if "FIRING" in line and " · " in line]


def _count(user: RoomUser, bot: str, names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for e in user.seen:
        if e.sender != bot or not e.body or _edit(e):
            continue
        for title in _titles(e):
            if title in counts:
                counts[title] += 1
    return counts


async def _wait_counts(
    user: RoomUser, bot: BotHandle, room: str, names: list[str], timeout: float
) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if all(_count(user, bot.user_id, names).values()):
            await bot.barrier(user, room)  # a duplicate would have been queued before it
            break
        await asyncio.sleep(0.2)
    return _count(user, bot.user_id, names)


@both_stores
async def test_alerts_accepted_while_homeserver_down_arrive_exactly_once(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    bot = make_bot(edit=_alerting(free_port(), digest_max_groups=6))
    await bot.start()
    names = [f"Outage{i}" for i in range(15)]
    synapse.stop()
    try:
        assert (await _post(bot, _payload(names[0], n=2)))[0] == 200
        # Its message is tried (and refused: the homeserver is down) before the others come.
        async with asyncio.timeout(60):
            while True:
                row = await outbox_db.oldest_pending(bot.rt.store, room)
                if row is not None and row.attempts >= 1:
                    break
                await asyncio.sleep(0.05)
        # Posted together, so that one batch fills a shared message and starts the next.
        posted = await asyncio.gather(*(_post(bot, _payload(name, n=2)) for name in names[1:]))
        assert [status for status, _ in posted] == [200] * 14
        # The first group's message was tried (so it can no longer change); the other 14
        # groups share messages of at most 6 instead of queueing 14.
        assert await bot.rt.outbox.pending() == 1 + 3
    finally:
        synapse.start()
    counts = await _wait_counts(people["alice"], bot, room, names, timeout=60)
    assert counts == dict.fromkeys(names, 1)
    shared = [e for e in people["alice"].seen if e.sender == bot.user_id and len(_titles(e)) > 1]
    assert sorted(len(_titles(e)) for e in shared) == [2, 6, 6]
    # Up to 5 groups show in full; more get one line each.
    assert sum(e.body.split("\n", 1)[0].count("Alert storm") for e in shared) == 2

    # A group of a shared message gets its own message when it changes (an edit of the shared
    # one would replace the other groups): the message's first group as much as a later one.
    biggest = max(shared, key=lambda e: len(_titles(e)))
    changing = _titles(biggest)[:2]
    mark = people["alice"].mark()
    for name in changing:
        status, text = await _post(bot, _payload(name, n=3))
        assert status == 200 and json.loads(text)["results"] == ["updated"], text
    for name in changing:
        title = f"FIRING (3) · WARNING · {name}"
        own = await people["alice"].wait_for(
            _says(bot.user_id, title),
            timeout=20,
            after=mark,
        )
        assert not _edit(own)
    await bot.barrier(people["alice"], room)
    assert not [e for e in people["alice"].seen[mark:] if _edit(e)], "a shared message was edited"


@both_stores
async def test_a_group_changing_before_its_message_is_sent_changes_that_message(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    bot = make_bot(edit=_alerting(free_port()))
    await bot.start()
    synapse.stop()
    try:
        assert (await _post(bot, _payload("First")))[0] == 200  # tried, so fixed
        # Alone in the waiting message: fires with 1, then 2 alerts, then resolves.
        for status, n in (("firing", 1), ("firing", 2), ("resolved", 2)):
            assert (await _post(bot, _payload("Flappy", status=status, n=n)))[0] == 200
        # Three more join it together; one of them changes in the same batch or the next.
        posted = await asyncio.gather(
            *(_post(bot, _payload(name)) for name in ("Shared", "Other1", "Other2")),
            _post(bot, _payload("Shared", n=3)),
        )
        assert [status for status, _ in posted] == [200] * 4
        assert await bot.rt.outbox.pending() == 2, "First, and one message for the four others"
    finally:
        synapse.start()
    alice = people["alice"]
    await _wait_counts(alice, bot, room, ["First", "Other1", "Other2"], timeout=60)
    mine = [
        e
        for e in alice.seen
        if e.sender == bot.user_id
        and e.source["type"] != "m.room.member"
        and not e.body.startswith("pong")  # the barrier's answer
    ]
    assert len(mine) == 2 and not any(_edit(e) for e in mine), "no edits, no replies"
    shared = mine[1].body
    assert shared.startswith("🔔 4 alert groups started firing")
    assert "✅ RESOLVED · WARNING · Flappy" in shared
    assert (
        "FIRING (3) · WARNING · Shared" in shared and "FIRING (1) · WARNING · Shared" not in shared
    )


async def test_full_outbox_survives_a_bot_restart(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    port = free_port()
    # One group per message: which ones the first bot would have packed together depends on
    # when its outbox first tried (a resolve in a shared message reads otherwise).
    alone = _alerting(port, digest_max_groups=1)
    bot = make_bot(edit=alone)
    await bot.start()
    names = [f"Restart{i}" for i in range(10)]
    synapse.stop()
    try:
        for name in names:
            assert (await _post(bot, _payload(name)))[0] == 200
        await bot.stop()
    finally:
        synapse.start()
    again = make_bot(edit=alone)
    await again.start()
    counts = await _wait_counts(people["alice"], again, room, names, timeout=60)
    assert counts == dict.fromkeys(names, 1)
    # Resolving after the restart still edits the message posted by the outbox.
    status, text = await _post(again, _payload("Restart0", status="resolved"))
    assert status == 200 and "resolved" in text
    await people["alice"].wait_for(
        lambda e: e.sender == again.user_id and e.body.startswith("✅ resolved: Restart0"),
        timeout=20,
    )


async def test_routes_pick_rooms_and_mentions_ping(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    synapse: LocalSynapse,
    accounts: Any,
) -> None:
    critical_room = synapse.create_room(
        accounts.admin, name="critical", invite=[accounts.bot.user_id]
    )

    def edit(raw: dict[str, Any]) -> None:
        _alerting(free_port())(raw)
        raw["matrix"]["rooms"] = [room, critical_room]
        raw["alertmanager"]["routes"] = [
            {"room": critical_room, "path": "critical"},
            {"room": critical_room, "match_re": {"alertname": "Zfs.*"}},
        ]
        raw["alertmanager"]["mentions"] = [
            {"severity": ["critical"], "users": [accounts.admin.user_id], "room": True}
        ]

    bot = make_bot(edit=edit)
    await bot.start()
    alice = people["alice"]
    critical = _payload("DiskOnFire")
    critical["commonLabels"]["severity"] = "critical"
    for alert in critical["alerts"]:
        alert["labels"]["severity"] = "critical"
    assert (await _post(bot, critical, path="/alertmanager/critical"))[0] == 200
    assert (await _post(bot, _payload("ZfsPoolFull")))[0] == 200
    assert (await _post(bot, _payload("NotUp")))[0] == 200

    def where(name: str) -> Callable[[SeenEvent], bool]:
        return lambda e: e.sender == bot.user_id and f"· {name}" in e.body

    pinged = await alice.wait_for(where("DiskOnFire"), timeout=20)
    assert pinged.room_id == critical_room
    assert pinged.body.startswith(f"@room {accounts.admin.user_id} 🔥 FIRING (1) · CRITICAL")
    assert pinged.content["m.mentions"] == {"user_ids": [accounts.admin.user_id], "room": True}
    assert (await alice.wait_for(where("ZfsPoolFull"), timeout=20)).room_id == critical_room
    quiet = await alice.wait_for(where("NotUp"), timeout=20)
    assert quiet.room_id == room and quiet.content["m.mentions"] == {"user_ids": []}


@both_stores
async def test_two_alertmanager_replicas_post_one_message(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    """An HA pair that does not gossip (partitioned) sends every group twice."""
    port = free_port()
    webhook = f"http://127.0.0.1:{port}/alertmanager"
    replicas = [LocalAlertmanager(tmp_path / f"am{i}", webhook, bearer_token=TOKEN) for i in (1, 2)]
    for am in replicas:
        am.start()
    try:
        bot = make_bot(edit=_alerting(port))
        await bot.start()
        started = datetime.now(UTC) - timedelta(minutes=3)
        labels = {"alertname": "DomainExpiry", "domain": "nixos.org", "severity": "warning"}
        for am in replicas:  # Prometheus sends every alert to every replica
            am.fire(labels, {"summary": "nixos.org expires in 13 days"}, starts_at=started)
        mark = 0
        first = await people["alice"].wait_for(
            lambda e: e.sender == bot.user_id and "DomainExpiry" in e.body, timeout=20, after=mark
        )
        # The second replica's webhook is counted a duplicate; nothing it queued comes later.
        await bot.wait_metric('infrabot_alert_notifications_total{result="duplicate"} 1.0')
        await bot.barrier(people["alice"], room)
        copies = [
            e for e in people["alice"].seen if e.sender == bot.user_id and "DomainExpiry" in e.body
        ]
        assert copies == [first], "the second replica's identical webhook was not posted"
        assert "domain=nixos.org" in first.body
        _, metrics = await bot.http("/metrics")
        assert 'infrabot_alert_notifications_total{result="duplicate"} 1.0' in metrics

        # Both replicas also report the resolve: one edit and one "resolved" reply, no new post.
        for am in replicas:
            am.fire(labels, resolved=True, starts_at=started)
        await people["alice"].wait_for(
            lambda e: _is_edit_of(e, first.event_id) and "RESOLVED" in _text(e), timeout=20
        )
        await bot.wait_metric('infrabot_alert_notifications_total{result="duplicate"} 2.0')
        await bot.barrier(people["alice"], room)
        later = [
            e
            for e in people["alice"].seen
            if e.sender == bot.user_id and "DomainExpiry" in e.body and e != first
        ]
        replies = [e for e in later if e.body.startswith("✅ resolved: DomainExpiry")]
        posts = [e for e in later if not _edit(e) and e not in replies]
        assert len(replies) == 1, [e.body for e in replies]
        assert posts == [], "the second replica's resolve was posted as a new message"
        assert sum(1 for e in later if _is_edit_of(e, first.event_id)) == 1
        _, metrics = await bot.http("/metrics")
        assert 'infrabot_alert_notifications_total{result="duplicate"} 2.0' in metrics
    finally:
        for am in replicas:
            am.stop()


async def test_alertmanager_reminder_reposts_the_group_without_pings(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    """An unchanged group repeated after repeat_interval is posted again, not edited silently."""
    port = free_port()
    am = LocalAlertmanager(
        tmp_path / "am",
        f"http://127.0.0.1:{port}/alertmanager",
        bearer_token=TOKEN,
        repeat_interval="6s",
    )
    am.start()
    try:
        alice = people["alice"]
        mentions = [{"severity": ["critical"], "users": [alice.client.user_id]}]
        bot = make_bot(edit=_alerting(port, dedupe_window_s=2, mentions=mentions))
        await bot.start()
        mark = alice.mark()
        labels = {"alertname": "ZfsPoolDegraded", "instance": "eris:9100", "severity": "critical"}
        am.fire(labels, {"summary": "pool tank is DEGRADED"})
        first = await alice.wait_for(
            lambda e: e.sender == bot.user_id and "ZfsPoolDegraded" in e.body and not _edit(e),
            timeout=20,
            after=mark,
        )
        assert first.content["m.mentions"] == {"user_ids": [alice.client.user_id]}
        reminder = await alice.wait_for(
            lambda e: e.sender == bot.user_id and e.body.startswith(REMINDER),
            timeout=30,
            after=mark,
        )
        assert not _edit(reminder) and "FIRING (1) · CRITICAL · ZfsPoolDegraded" in reminder.body
        assert reminder.content["m.mentions"] == {"user_ids": []}, "a reminder pings nobody"
        _, metrics = await bot.http("/metrics")
        assert 'infrabot_alert_notifications_total{result="reminded"}' in metrics

        # The reminder is the group's message from now on: the resolve edits that one.
        am.fire(labels, resolved=True)
        edit = await alice.wait_for(
            lambda e: _is_edit_of(e, reminder.event_id) and "RESOLVED" in _text(e),
            timeout=30,
            after=mark,
        )
        assert not _text(edit).startswith(REMINDER)
        note = await alice.wait_for(
            lambda e: e.sender == bot.user_id and e.body.startswith("✅ resolved: ZfsPoolDegraded"),
            timeout=10,
            after=mark,
        )
        assert note.content["m.relates_to"]["event_id"] == reminder.event_id
        # Open since it first fired, not since the reminder.
        match = re.search(r"open for (\d+) s\)", note.body)
        assert match is not None and int(match.group(1)) >= 6, note.body
    finally:
        am.stop()


async def test_reminders_can_be_switched_off(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot(edit=_alerting(free_port(), dedupe_window_s=0, reminders=False))
    await bot.start()
    mark = people["alice"].mark()
    once = _payload("Quiet")
    status, text = await _post(bot, once)
    assert status == 200 and json.loads(text)["results"] == ["posted"]
    status, text = await _post(bot, once)  # an unchanged repeat, after the (zero) window
    assert status == 200 and json.loads(text)["results"] == ["duplicate"]
    await people["alice"].wait_for(
        lambda e: e.sender == bot.user_id and "Quiet" in e.body, timeout=20, after=mark
    )
    await bot.barrier(people["alice"], room)
    posts = [
        e
        for e in people["alice"].seen[mark:]
        if e.sender == bot.user_id
        and e.source["type"] == "m.room.message"
        and not e.body.startswith("pong")  # the barrier's answer
    ]
    assert len(posts) == 1, [e.body for e in posts]


@both_stores
async def test_a_bell_reaction_on_the_message_silences_its_group(
    alerting: tuple[BotHandle, LocalAlertmanager], people: dict[str, RoomUser], room: str
) -> None:
    bot, am = alerting
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]
    mark = alice.mark()
    am.fire(
        {"alertname": "DiskFull", "instance": "haumea:9100", "severity": "warning"},
        {"summary": "/ is 97% full"},
    )
    message = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "DiskFull" in e.body and not _edit(e),
        timeout=20,
        after=mark,
    )

    async def react(user: RoomUser) -> None:
        relation = {"rel_type": "m.annotation", "event_id": message.event_id, "key": "🔕"}
        await user.client.room_send(room, "m.reaction", {"m.relates_to": relation})

    await react(mallory)
    refused = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "needs the operator role" in e.body,
        timeout=10,
        after=mark,
    )
    assert refused.content["m.relates_to"]["event_id"] == message.event_id
    assert am.api("GET", "/silences") == []

    await react(bob)
    done = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith('🔕 silenced alertname="DiskFull"'),
        timeout=10,
        after=mark,
    )
    assert done.content["m.relates_to"]["event_id"] == message.event_id
    found = re.search(r"\(id ([0-9a-f-]+)\)", done.body)
    assert found is not None, done.body
    made = {s["id"]: s for s in am.api("GET", "/silences")}[found.group(1)]
    assert made["createdBy"] == bob.client.user_id and made["status"]["state"] == "active"
    assert [(m["name"], m["value"], m["isRegex"]) for m in made["matchers"]] == [
        ("alertname", "DiskFull", False)
    ]
    ends = datetime.fromisoformat(made["endsAt"].replace("Z", "+00:00"))
    assert timedelta(hours=1, minutes=58) < ends - datetime.now(UTC) <= timedelta(hours=2)

    # A second operator's 🔕 points at that silence instead of adding another.
    await react(alice)
    again = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "was already silenced" in e.body,
        timeout=10,
        after=mark,
    )
    assert f"(id {found.group(1)})" in again.body
    assert len(am.api("GET", "/silences")) == 1


async def test_alerts_in_a_storm_are_summarised_most_severe_first(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    port = free_port()
    am = LocalAlertmanager(
        tmp_path / "am", f"http://127.0.0.1:{port}/alertmanager", bearer_token=TOKEN
    )
    am.start()
    try:
        await _storm_listed_with_another_prefix(make_bot, people, room, port, am)
    finally:
        am.stop()


async def _storm_listed_with_another_prefix(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, port: int, am: LocalAlertmanager
) -> None:
    def edit(raw: dict[str, Any]) -> None:
        _alerting(port, am.url)(raw)
        raw["commands"] = {"prefix": "?"}

    bot = make_bot(edit=edit)
    await bot.start()
    now = datetime.now(UTC)
    storm = [
        {
            "labels": {
                "alertname": "NodeDown" if i % 3 else "ZfsPoolDegraded",
                "instance": f"host{i}:9100",
                "severity": "warning" if i % 3 else "critical",
            },
            "annotations": {"summary": f"host{i} trouble"},
            "startsAt": (now - timedelta(minutes=i)).isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
        }
        for i in range(90)
    ]
    am.api("POST", "/alerts", storm)
    listed = await people["bob"].ask(room, "?alerts", bot.user_id, timeout=20)
    head, *rows = listed.body.splitlines()
    assert head.startswith("90 active alert(s); by name: NodeDown ×60, ZfsPoolDegraded ×30.")
    assert "`?alerts alertname=NodeDown`" in head, "the configured prefix, not `!`"
    bad = await people["bob"].ask(room, "?silence 2h", bot.user_id)
    assert "usage: `?silence <matchers…> <duration> [comment…]`" in bad.body
    assert len(rows) == 1 + 40, "a header row and the 40 listed"
    assert all("ZfsPoolDegraded" in row and "critical" in row for row in rows[1:31])
    assert all("NodeDown" in row for row in rows[31:])


def _big_payload(name: str, size: int) -> bytes:
    """A real-shaped notification of about `size` bytes (long descriptions, as in the field)."""
    payload = _payload(name, n=1)
    alert = payload["alerts"][0]
    count = max(1, size // 5_000)
    payload["alerts"] = [
        {
            **alert,
            "labels": {**alert["labels"], "instance": f"host{i}:9100"},
            "annotations": {"summary": f"{name} on host{i}", "description": "x" * 4_800},
            "fingerprint": f"{name}-{i}",
        }
        for i in range(count)
    ]
    return json.dumps(payload).encode()


async def _raw_request(port: int, head: str, pieces: list[bytes]) -> tuple[int, str]:
    """HTTP/1.1 over a raw socket: the head, then each piece 50 ms after the previous one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = raw.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


def _head(path: str, extra: str) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n{extra}\r\n"
    )


def _chunked(*parts: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


async def test_webhook_bodies_arriving_in_pieces_are_read_whole(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    echo = Router("echo-test")

    @echo.route("POST", "/echo")
    async def echo_route(rt: Runtime, request: web.Request) -> web.StreamResponse:
        return web.json_response({"bytes": len(await read_body(request, 1_000))})

    bot = make_bot(extra_routers=(echo,), edit=_alerting(free_port(), max_body_bytes=300_000))
    await bot.start()
    port = bot.rt.http_port
    assert port is not None
    mark = people["alice"].mark()
    # 277 KB from an aiohttp client: many TCP segments.
    big = _big_payload("Huge", 277_000)
    assert len(big) > 270_000
    status, text = await _post(bot, big)
    assert status == 200 and json.loads(text)["results"] == ["posted"], text
    # 55 KB written in two halves 50 ms apart: with Content-Length, then chunked.
    for name, chunked in (("Halves", False), ("Chunks", True)):
        body = _big_payload(name, 55_000)
        halves = [body[: len(body) // 2], body[len(body) // 2 :]]
        if chunked:
            head, pieces = (
                _head("/alertmanager", "Transfer-Encoding: chunked\r\n"),
                _chunked(*halves),
            )
        else:
            head, pieces = _head("/alertmanager", f"Content-Length: {len(body)}\r\n"), halves
        status, text = await _raw_request(port, head, pieces)
        assert status == 200 and json.loads(text)["results"] in (["posted"], ["coalesced"]), text
    # Beyond the limit without a Content-Length: counted as it arrives.
    over = _chunked(*[b" " * 100_000] * 4)
    status, text = await _raw_request(
        port, _head("/alertmanager", "Transfer-Encoding: chunked\r\n"), over
    )
    assert status == 413 and "larger than 300000 bytes" in text
    # Any route reading its body through bot.http.read_body gets the same.
    status, text = await _raw_request(
        port, _head("/echo", "Transfer-Encoding: chunked\r\n"), _chunked(b"a" * 600, b"b" * 300)
    )
    assert status == 200 and json.loads(text) == {"bytes": 900}
    status, text = await _raw_request(
        port, _head("/echo", "Transfer-Encoding: chunked\r\n"), _chunked(b"a" * 600, b"b" * 600)
    )
    assert status == 413 and "larger than 1000 bytes" in text
    for name in ("Huge", "Halves", "Chunks"):
        title = f"WARNING · {name}"
        await people["alice"].wait_for(
            _says(bot.user_id, title),
            timeout=20,
            after=mark,
        )


async def test_truncated_alerts_are_counted_and_never_resolve_the_group(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    port = free_port()
    am = LocalAlertmanager(
        tmp_path / "am", f"http://127.0.0.1:{port}/alertmanager", bearer_token=TOKEN, max_alerts=2
    )
    am.start()
    try:
        bot = make_bot(edit=_alerting(port, am.url))
        await bot.start()
        alice = people["alice"]
        mark = alice.mark()
        started = datetime.now(UTC) - timedelta(minutes=5)
        labels = [{"alertname": "NodeDown", "instance": f"h{i}:9100"} for i in range(1, 6)]
        am.api(
            "POST",
            "/alerts",
            [
                {
                    "labels": lab,
                    "startsAt": started.isoformat(),
                    "endsAt": (started + timedelta(hours=2)).isoformat(),
                }
                for lab in labels
            ],
        )
        message = await alice.wait_for(
            lambda e: e.sender == bot.user_id and "NodeDown" in e.body and not _edit(e),
            timeout=20,
            after=mark,
        )
        assert message.body.startswith("⚠️ FIRING (5) · NONE · NodeDown"), message.body
        assert "5 firing (3 not in this notification)" in message.body
        # Alertmanager sorts a group by instance and keeps the first 2 (max_alerts): resolving
        # those makes it say "resolved" for the group while h3…h5 still fire.
        for lab in labels[:2]:
            am.fire(lab, resolved=True, starts_at=started)
        edit = await alice.wait_for(
            lambda e: _is_edit_of(e, message.event_id) and "PARTLY RESOLVED" in _text(e),
            timeout=20,
            after=mark,
        )
        assert "3 not in this notification, so the group is not known to be resolved" in _text(edit)
        await alice.ask(room, "!ping", bot.user_id)  # after anything the edit brought along
        said = [e.body for e in alice.seen[mark:] if e.sender == bot.user_id]
        assert not [b for b in said if b.startswith("✅ resolved")], said
        outbox_id = await bot.rt.outbox.row_of(message.event_id)
        assert outbox_id is not None
        (group,) = await db.groups_of_message(bot.rt.store, outbox_id, room)
        assert group.open
    finally:
        am.stop()


async def test_links_descriptions_and_long_annotations_in_the_room(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot(edit=_alerting(free_port()))
    await bot.start()
    mark = people["alice"].mark()
    payload = _payload("Hostile")
    payload["externalURL"] = "javascript:alert(3)//"
    payload["alerts"][0]["generatorURL"] = "javascript:alert(2)"
    payload["alerts"][0]["annotations"] = {
        "summary": "pluto's disk",
        "description": "first line\nsecond <line>",
        "runbook_url": "javascript:alert(1)",
        "grafana": "https://grafana.example/d/disk",
    }
    status, text = await _post(bot, payload)
    assert status == 200, text
    shown = await people["alice"].wait_for(
        lambda e: e.sender == bot.user_id and "Hostile" in e.body, timeout=20, after=mark
    )
    html = shown.content["formatted_body"]
    assert re.findall(r'href="([^"]*)"', html) == ["https://grafana.example/d/disk"]
    assert "javascript:alert(1)" in html  # as text
    assert "first line<br>second &lt;line&gt;" in html
    assert "  first line\n  second <line>" in shown.body, "plain clients see the description"
    # Posted once the first is shown: two groups still queued together share one message.
    long = _payload("Long")
    long["alerts"][0]["annotations"]["description"] = "y" * 63_000
    status, text = await _post(bot, long)
    assert status == 200, text
    cut = await people["alice"].wait_for(
        lambda e: e.sender == bot.user_id and "Long" in e.body, timeout=20, after=mark
    )
    assert "… 61,000 more characters" in cut.body
    assert "… 61,000 more characters" in cut.content["formatted_body"]


async def test_a_silence_stored_with_other_matchers_is_expired_and_said(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    am = LocalAlertmanager(tmp_path / "am", f"http://127.0.0.1:{free_port()}/alertmanager")
    am.start()

    # Alertmanager before 0.22 has no negative matchers and ignores `isEqual` (CHANGELOG,
    # 0.22.0 "Add support for negative matchers"): a proxy in front of the real one drops it,
    # so `job!=node` is stored as `job=node`, as such a server would.
    async def old_alertmanager(request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST" and request.path == "/api/v2/silences":
            data = json.loads(body)
            for matcher in data["matchers"]:
                matcher.pop("isEqual", None)
            body = json.dumps(data).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                am.url + request.path_qs,
                data=body or None,
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", old_alertmanager)
    try:
        async with serve(app) as proxy_url:
            bot = make_bot(edit=_alerting(free_port(), proxy_url))
            await bot.start()
            bob = people["bob"]
            answer = await bob.ask(room, "!silence alertname=NotUp job!=node 1h", bot.user_id)
            assert 'as alertname="NotUp", job="node", not alertname="NotUp", job!="node"' in (
                answer.body
            ), answer.body
            assert "so it is expired again" in answer.body
            found = re.search(r"silence ([0-9a-f-]{36})", answer.body)
            assert found is not None
            stored = {s["id"]: s for s in am.api("GET", "/silences")}[found.group(1)]
            assert stored["status"]["state"] == "expired"
            # The same matchers without a negative one are stored as asked, and said so.
            kept = await bob.ask(room, "!silence alertname=NotUp job=node 1h", bot.user_id)
            assert kept.body.startswith('🔕 silenced alertname="NotUp", job="node" until'), (
                kept.body
            )
    finally:
        am.stop()


async def _bell(user: RoomUser, room: str, event_id: str) -> None:
    relation = {"rel_type": "m.annotation", "event_id": event_id, "key": "🔕"}
    await user.client.room_send(room, "m.reaction", {"m.relates_to": relation})


def _active_silences(am: LocalAlertmanager) -> list[dict[str, Any]]:
    return [s for s in am.api("GET", "/silences") if s["status"]["state"] == "active"]


async def test_a_bell_on_a_group_without_group_labels_silences_only_its_alerts(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, tmp_path: Path
) -> None:
    port = free_port()
    am = LocalAlertmanager(
        tmp_path / "am", f"http://127.0.0.1:{port}/alertmanager", bearer_token=TOKEN, group_by=[]
    )
    am.start()
    try:
        bot = make_bot(edit=_alerting(port, am.url))
        await bot.start()
        alice, bob = people["alice"], people["bob"]
        mark = alice.mark()
        started = datetime.now(UTC) - timedelta(minutes=5)
        node = {"alertname": "NodeDown", "job": "node", "severity": "warning"}
        am.api(
            "POST",
            "/alerts",
            [
                {
                    "labels": node | {"instance": f"{host}:9100"},
                    "startsAt": started.isoformat(),
                    "endsAt": (started + timedelta(hours=2)).isoformat(),
                }
                for host in ("pluto", "haumea")
            ],
        )
        # One group (group_by: []); on a busy machine Alertmanager may flush it with one alert
        # first and the second as a change (an edit of the same message).
        message = await alice.wait_for(
            lambda e: e.sender == bot.user_id and "NodeDown" in e.body and not _edit(e),
            timeout=60,
            after=mark,
        )
        if "FIRING (2)" not in message.body:
            await alice.wait_for(
                lambda e: _is_edit_of(e, message.event_id) and "FIRING (2)" in _text(e),
                timeout=60,
                after=mark,
            )
        await _bell(bob, room, message.event_id)
        done = await alice.wait_for(
            lambda e: e.sender == bot.user_id and e.body.startswith("🔕 silenced"),
            timeout=20,
            after=mark,
        )
        assert 'job="node", instance=~"haumea:9100|pluto:9100"' in done.body or (
            'instance=~"haumea:9100|pluto:9100", job="node"' in done.body
        ), done.body
        # titan's NodeDown (job="node" as well) is not silenced by it.
        am.fire(node | {"instance": "titan:9100"}, starts_at=started)
        deadline = asyncio.get_running_loop().time() + 20
        states: dict[str, str] = {}
        while asyncio.get_running_loop().time() < deadline and len(states) < 3:
            states = {
                a["labels"]["instance"]: a["status"]["state"] for a in am.api("GET", "/alerts")
            }
            await asyncio.sleep(0.2)
        assert states == {
            "pluto:9100": "suppressed",
            "haumea:9100": "suppressed",
            "titan:9100": "active",
        }
    finally:
        am.stop()


async def test_two_bells_at_once_make_one_silence(
    alerting: tuple[BotHandle, LocalAlertmanager], people: dict[str, RoomUser], room: str
) -> None:
    bot, am = alerting
    alice, bob = people["alice"], people["bob"]
    mark = alice.mark()
    for name in ("DiskFull", "CertificateExpiry"):
        am.fire({"alertname": name, "instance": "haumea:9100", "severity": "warning"})
    messages_by_name: dict[str, SeenEvent] = {}
    for name in ("DiskFull", "CertificateExpiry"):
        messages_by_name[name] = await alice.wait_for(
            _posts(bot.user_id, f"· {name}"),
            timeout=20,
            after=mark,
        )

    def answers(event_id: str) -> list[str]:
        return [
            e.body
            for e in alice.seen[mark:]
            if e.sender == bot.user_id
            and e.body.startswith("🔕")
            and (e.content.get("m.relates_to") or {}).get("event_id") == event_id
        ]

    # Two operators' reactions sent back to back: often in one sync batch.
    disk = messages_by_name["DiskFull"].event_id
    await asyncio.gather(_bell(bob, room, disk), _bell(alice, room, disk))
    await alice.wait_for(lambda e: len(answers(disk)) == 2, timeout=20, after=mark)
    # The handler driven twice in the same event-loop turn, through the real Alertmanager.
    cert = messages_by_name["CertificateExpiry"].event_id
    twice = [
        IncomingReaction(room, user.client.user_id, f"$bell-{i}", cert, "🔕", 0)
        for i, user in enumerate((bob, alice))
    ]
    # Through the dispatcher's guard, both in the same loop turn.
    dispatcher = Dispatcher(bot.rt)
    (bell,) = bot.rt.registry.reactions_for("🔕")
    await asyncio.gather(*(dispatcher.handle_reaction(bell, r) for r in twice))
    await alice.wait_for(lambda e: len(answers(cert)) == 2, timeout=20, after=mark)
    silences = _active_silences(am)
    assert sorted(s["matchers"][0]["value"] for s in silences) == ["CertificateExpiry", "DiskFull"]
    for event_id in (disk, cert):
        made, told = sorted(answers(event_id), key=lambda b: "already" in b)
        found = re.search(r"\(id ([0-9a-f-]{36})\)", made)
        assert made.startswith("🔕 silenced alertname=") and found is not None, made
        assert "was already silenced" in told and f"(id {found.group(1)})" in told, told


async def test_dedupe_window_and_reminders_follow_the_bots_clock(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    """The window, the reminder and "open for" come from rt.clock: no waiting in the test."""
    clock = ManualClock(datetime.now(UTC))
    bot = make_bot(edit=_alerting(free_port(), dedupe_window_s=600), clock=clock)
    await bot.start()
    alice = people["alice"]
    mark = alice.mark()
    once = _payload("Clocked")

    async def results(body: dict[str, Any]) -> list[str]:
        status, text = await _post(bot, body)
        assert status == 200, text
        return list(json.loads(text)["results"])

    assert await results(once) == ["posted"]
    first = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "· Clocked" in e.body, timeout=20, after=mark
    )
    await clock.advance(timedelta(minutes=9))
    assert await results(once) == ["duplicate"], "inside the 10 min window"
    await clock.advance(timedelta(minutes=2))
    assert await results(once) == ["reminded"], "after the window: Alertmanager's reminder"
    reminder = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith(REMINDER), timeout=20, after=mark
    )
    assert reminder.event_id != first.event_id
    await clock.advance(timedelta(minutes=30))
    assert await results(_payload("Clocked", status="resolved")) == ["resolved"]
    note = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("✅ resolved: Clocked"),
        timeout=20,
        after=mark,
    )
    assert "open for 41 min)" in note.body, note.body
    assert note.content["m.relates_to"]["event_id"] == reminder.event_id
    # The lifespan's state is there while the bot runs, and gone (closed) after it stops.
    assert bot.rt[ALERTS].api is None
    rt = bot.rt
    await bot.stop()
    with pytest.raises(KeyError):
        rt[ALERTS]


async def test_the_alertmanager_client_is_one_session_closed_at_shutdown(
    alerting: tuple[BotHandle, LocalAlertmanager], people: dict[str, RoomUser], room: str
) -> None:
    bot, _am = alerting
    api = bot.rt[ALERTS].alertmanager()
    for _ in range(2):
        await people["bob"].ask(room, "!silences", bot.user_id)
    session = api._session
    assert session is not None and not session.closed
    await people["bob"].ask(room, "!alerts", bot.user_id)
    assert api._session is session, "one session for every call"
    await bot.stop()
    # getattr: mypy narrowed both before the shutdown changed them.
    assert getattr(session, "closed") and getattr(api, "_session") is None  # noqa: B009


async def test_a_body_shorter_than_its_content_length_is_a_408_not_a_hang(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    slow = Router("slow-body-test")

    @slow.route("POST", "/slow")
    async def slow_route(rt: Runtime, request: web.Request) -> web.StreamResponse:
        return web.json_response({"bytes": len(await read_body(request, 1_000, timeout_s=0.5))})

    bot = make_bot(extra_routers=(slow,), edit=_alerting(free_port()))
    await bot.start()
    port = bot.rt.http_port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Content-Length promises 100 bytes, 10 come, and the connection stays open.
        writer.write(_head("/slow", "Content-Length: 100\r\n").encode() + b'{"a": "b",')
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    assert status_line.split()[1] == b"408", status_line
    # The bot goes on: the next request to the same route is read whole.
    status, text = await _raw_request(port, _head("/slow", "Content-Length: 2\r\n"), [b"{}"])
    assert status == 200 and json.loads(text) == {"bytes": 2}
    assert (await people["alice"].ask(room, "!ping", bot.user_id)).body.startswith("pong")


def _links_by_alert(html: str) -> dict[str, dict[str, str]]:
    """{alert headline: {link text: href}} of each <li> of a rendered group."""
    out: dict[str, dict[str, str]] = {}
    for item in re.findall(r"<li>(.*?)</li>", html, flags=re.S):
        head = re.search(r"<(?:b|s)>([^<]+ on [^<]+)</(?:b|s)>", item)
        if head is not None:
            found = re.findall(r'<a href="([^"]*)">([^<]*)</a>', item)
            out[head.group(1)] = {text: htmllib.unescape(url) for url, text in found}
    return out


async def test_everything_go_nebs_message_carried_is_in_ours(
    alerting: tuple[BotHandle, LocalAlertmanager], people: dict[str, RoomUser], room: str
) -> None:
    """What the team's go-neb template showed (matrix-org/go-neb services/alertmanager/
    alertmanager.go; README "Moving in"): status in colour per alert, alertname, summary,
    📈 Grafana (annotations.grafana), 🔥 Prometheus (GeneratorURL), 🔕 Silence (SilenceURL), and
    [RESOLVED] in green, with its links, for an alert that resolved."""
    bot, am = alerting
    alice = people["alice"]
    mark = alice.mark()
    grafana = "https://monitoring.example.org/grafana/d/5LANB9pZk/per-instance-metrics?orgId=1&var-instance={}"
    # The team's disk rule at two thresholds: one alertname, a warning and a critical alert.

    def disk(host: str, severity: str, resolved: bool = False) -> None:
        # Prometheus sends a resolved alert with its labels and annotations as they were.
        am.fire(
            {
                "alertname": "PartitionLowDiskSpace",
                "instance": f"{host}:9100",
                "mountpoint": "/",
                "severity": severity,
            },
            {
                "summary": f"/dev/sda1 mounted to / on {host} has 9 GB free.",
                "grafana": grafana.format(host),
            },
            resolved=resolved,
        )

    for host, severity in (("pluto", "warning"), ("haumea", "critical")):
        disk(host, severity)
    message = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "PartitionLowDiskSpace" in e.body and not _edit(e),
        timeout=20,
        after=mark,
    )
    both = await alice.wait_for(
        lambda e: (
            (e.event_id == message.event_id or _is_edit_of(e, message.event_id))
            and "FIRING (2)" in _text(e)
        ),
        timeout=20,
        after=mark,
    )
    html = _html(both)
    # The group is as severe as its worst alert; the warning one keeps its own colour.
    red, orange, green = "#d32f2f", "#f57c00", "#2e7d32"
    assert f'<font color="{red}" data-mx-color="{red}">🔥 FIRING (2) · CRITICAL</font>' in html
    assert (
        f'<font color="{orange}" data-mx-color="{orange}"><b>[WARNING]</b></font> '
        "<b>PartitionLowDiskSpace on pluto</b> — /dev/sda1 mounted to / on pluto has 9 GB free."
    ) in html
    assert "[CRITICAL]" not in html, "an alert as severe as its group needs no tag"
    assert "• [WARNING] PartitionLowDiskSpace on pluto — /dev/sda1" in _text(both)
    links = _links_by_alert(html)
    for host in ("pluto", "haumea"):
        mine = links[f"PartitionLowDiskSpace on {host}"]
        assert mine["Grafana"] == grafana.format(host)
        assert mine["Prometheus"].startswith("http://prometheus.example:9090/graph?")
        # Alertmanager's own form, filled with the alert's labels, as go-neb's SilenceURL.
        assert mine["Silence"].startswith(am.url + "/#/silences/new?filter=")
        assert f'instance="{host}:9100"' in urllib.parse.unquote(mine["Silence"])

    # pluto's disk is freed: go-neb said [RESOLVED] in green with the alert's links.
    disk("pluto", "warning", resolved=True)
    partly = await alice.wait_for(
        lambda e: _is_edit_of(e, message.event_id) and "resolved (1)" in _text(e),
        timeout=20,
        after=mark,
    )
    html = _html(partly)
    assert f'<font color="{green}" data-mx-color="{green}">✅ resolved (1):</font>' in html
    assert "<s>PartitionLowDiskSpace on pluto</s>" in html
    resolved = _links_by_alert(html)["PartitionLowDiskSpace on pluto"]
    assert resolved["Grafana"] == grafana.format("pluto")
    assert resolved["Prometheus"].startswith("http://prometheus.example:9090/graph?")
    assert "Silence" not in resolved, "nothing to silence once resolved"
    assert "Grafana: " + grafana.format("pluto") in _text(partly).split("✅ resolved (1):")[1]
