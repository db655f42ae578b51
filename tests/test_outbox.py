"""Outbox bookkeeping without a homeserver: coalescing, amending, pruning, references."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from bot import outbox_db
from bot.clock import ManualClock
from bot.matrix import MatrixError, Transport, is_transient
from bot.metrics import Metrics
from bot.outbox import KEEP_SENT_S, PACE_MAX_S, Outbox, ref
from bot.store import Store

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def outbox(any_store: Store, clock: ManualClock) -> Outbox:
    return Outbox(any_store, cast(Transport, None), Metrics(), clock)


async def _content(box: Outbox, outbox_id: int) -> dict[str, Any]:
    row = await outbox_db.get(box.store, outbox_id)
    assert row is not None
    return cast(dict[str, Any], json.loads(row.content))


async def test_coalesce_amend_prune_and_references(outbox: Outbox, clock: ManualClock) -> None:
    first = await outbox.post("!r", {"body": "v1"}, coalesce_key="edit:1")
    second = await outbox.post("!r", {"body": "v2"}, coalesce_key="edit:1")
    assert await outbox.pending() == 1 and (await _content(outbox, second))["body"] == "v2"
    assert await outbox_db.get(outbox.store, first) is None

    assert (
        await outbox.amend(second, {"body": "v3"})
        and (await _content(outbox, second))["body"] == "v3"
    )
    outbox._in_flight.add(second)
    assert not await outbox.amend(second, {"body": "v4"}), (
        "a row being sent is not changed under it"
    )
    outbox._in_flight.clear()

    original = await outbox.post("!r", {"body": "message"})
    edit = await outbox.post("!r", {"m.relates_to": {"event_id": ref(original)}})
    with pytest.raises(Exception, match="outbox:"):
        await outbox._fill_refs(json.loads(json.dumps({"x": ref(original)})))
    await outbox_db.mark_sent(outbox.store, original, "$abc", now=clock.time())
    assert await outbox._fill_refs({"m.relates_to": {"event_id": ref(original)}}) == {
        "m.relates_to": {"event_id": "$abc"}
    }
    assert await outbox.row_of("$abc") == original
    # Content is kept a week after the row was made, by the outbox's clock.
    await clock.advance(timedelta(seconds=KEEP_SENT_S))
    assert await outbox.prune() == 0, "not older than a week yet"
    await clock.advance(timedelta(seconds=1))
    assert await outbox.prune() == 1
    assert await _content(outbox, original) == {} and await outbox.event_id(original) == "$abc"
    assert await outbox.pending() == 2 and edit > original
    sent = await outbox_db.get(outbox.store, original)
    assert sent is not None and sent.created_at == START.timestamp() and sent.attempts == 1

    await outbox_db.record_refusal(outbox.store, original, 2, "refused", give_up=True)
    with pytest.raises(MatrixError, match="was not delivered"):
        await outbox._fill_refs({"event_id": ref(original)})
    assert await outbox.failed() == 1


class _RefusesFirst:
    """A transport whose first send is rate-limited for `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.bodies: list[str] = []

    async def send_event(
        self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str
    ) -> str:
        self.bodies.append(content["body"])
        if len(self.bodies) == 1:
            raise MatrixError(
                "homeserver refused the message: M_LIMIT_EXCEEDED",
                transient=True,
                retry_after=self.retry_after,
                errcode="M_LIMIT_EXCEEDED",
            )
        return f"$event{len(self.bodies)}"


async def test_a_long_retry_after_paces_the_backlog_at_most_pace_max(any_store: Store) -> None:
    transport = _RefusesFirst(retry_after=120)
    box = Outbox(any_store, cast(Transport, transport), Metrics())
    for body in ("a", "b", "c"):
        await box.post("!r", {"body": body})
    before = time.monotonic()
    await box._deliver(await box._next_in_room("!r"))
    assert box._retry_at["!r"] >= before + 120, "the refused message waits as told"
    assert box._pace["!r"] == PACE_MAX_S, "but the backlog's pace is capped"
    box._retry_at.clear()  # its wait is over
    before = time.monotonic()
    await box._deliver(await box._next_in_room("!r"))
    after = time.monotonic()
    assert transport.bodies == ["a", "a"], "the next one is not sent straight after"
    assert before + PACE_MAX_S <= box._retry_at["!r"] <= after + PACE_MAX_S
    box._retry_at.clear()
    await box._deliver(await box._next_in_room("!r"))
    await box._deliver(await box._next_in_room("!r"))
    assert transport.bodies == ["a", "a", "b", "c"] and await box.pending() == 0
    assert "!r" in box._retry_at, "each paced send sets the next one's time"
    assert await box._ready() == ([], [])
    assert "!r" not in box._pace, "with the backlog gone, so is the pace"
    assert "!r" not in box._retry_at, "and its wait: a new message goes at once"


@pytest.mark.parametrize(
    ("status", "errcode", "transient"),
    [
        (400, "M_DUPLICATE_ANNOTATION", False),
        (400, "M_UNKNOWN", False),
        (403, "M_FORBIDDEN", False),
        (413, "M_TOO_LARGE", False),
        (429, "M_LIMIT_EXCEEDED", True),
        (408, None, True),
        (500, "M_UNKNOWN", True),
        (502, None, True),
        (None, None, True),  # timeout or network: no answer at all
        (None, "M_FORBIDDEN", False),
    ],
)
def test_permanent_and_transient_refusals(
    status: int | None, errcode: str | None, transient: bool
) -> None:
    assert is_transient(status, errcode) is transient


class _Refuses:
    """A transport that refuses bodies listed in `refuse` with the given (status, errcode)."""

    def __init__(self, refuse: dict[str, tuple[int, str]]) -> None:
        self.refuse = refuse
        self.bodies: list[str] = []

    async def send_event(
        self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str
    ) -> str:
        self.bodies.append(content["body"])
        if content["body"] in self.refuse:
            status, errcode = self.refuse[content["body"]]
            raise MatrixError(
                f"homeserver refused the message: {errcode}",
                transient=is_transient(status, errcode),
                errcode=errcode,
                status=status,
            )
        return f"$event{len(self.bodies)}"


async def test_a_permanent_refusal_is_given_up_at_once_and_the_room_goes_on(
    any_store: Store,
) -> None:
    transport = _Refuses({"bad": (400, "M_UNKNOWN")})
    metrics = Metrics()
    box = Outbox(any_store, cast(Transport, transport), metrics)
    bad = await box.post("!r", {"body": "bad"})
    await box.post("!r", {"body": "good"})
    await box._deliver(await box._next_in_room("!r"))
    assert transport.bodies == ["bad", "good"], "tried once, and the next one went straight on"
    assert await box.pending() == 0
    with pytest.raises(MatrixError, match="M_UNKNOWN"):
        await box.wait_sent(bad)
    text = metrics.render().decode()
    assert 'infrabot_outbox_refused_total{errcode="M_UNKNOWN",outcome="given_up"} 1.0' in text
