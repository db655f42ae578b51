"""Declared arguments, the reaction-key rule, the settable clock and the supervisor's backoff."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot.app import supervise
from bot.args import (
    arg,
    args,
    choice,
    duration,
    flag,
    git_ref,
    integer,
    rest,
    switch,
    text,
)
from bot.clock import ManualClock
from bot.context import Runtime
from bot.errors import UserError
from bot.metrics import Metrics
from bot.registry import Command, normalize_key

RT = cast(Runtime, SimpleNamespace(prefix="?"))


async def _noop(ctx: Any) -> None:
    return None


def _is_matcher(word: str, rt: Runtime) -> str:
    if "=" not in word:
        raise ValueError(f"`{word}` is not a matcher")
    return word


HOST = arg("host", text)
ACTION = arg("action", choice("switch", "boot"), default="switch", label="switch|boot")
REF = flag("--ref", git_ref, metavar="REF")
FORCE = switch("--force")
DEPLOY = Command("deploy", _noop, "Deploy hosts.", (HOST, ACTION, REF, FORCE))

MATCHERS = args("matchers", _is_matcher)
FOR = arg("duration", duration)
COMMENT = rest("comment")
SILENCE = Command("silence", _noop, "Silence alerts.", (MATCHERS, FOR, COMMENT))


def test_usage_is_generated_from_declarations_with_the_prefix() -> None:
    assert DEPLOY.usage("?") == "?deploy <host> [switch|boot] [--ref REF] [--force]"
    assert SILENCE.usage("!") == "!silence <matchers…> <duration> [comment…]"


@pytest.mark.parametrize(
    ("words", "host", "action", "ref", "force"),
    [
        (["pluto"], "pluto", "switch", None, False),
        (["pluto", "BOOT"], "pluto", "boot", None, False),
        (["--ref", "main", "pluto"], "pluto", "switch", "main", False),
        (["pluto", "--ref=v1.2", "test", "--force"], None, None, None, None),
        (["pluto", "boot", "--force", "--ref", "r/26.05"], "pluto", "boot", "r/26.05", True),
    ],
)
def test_flags_anywhere_and_defaults(
    words: list[str], host: str | None, action: str | None, ref: str | None, force: bool | None
) -> None:
    if host is None:
        with pytest.raises(UserError, match="test` is not one of switch, boot"):
            DEPLOY.bind(words, RT)
        return
    bound = DEPLOY.bind(words, RT)
    assert bound.values == {"host": host, "action": action, "ref": ref, "force": force}


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        ([], "missing host"),
        (["pluto", "boot", "extra"], "unexpected `extra`"),
        (["pluto", "--ref"], "--ref needs a value"),
        (["pluto", "--ref", "a..b"], "not a valid git ref"),
        (["pluto", "--reef", "main"], "unknown option `--reef`"),
        (["pluto", "--force=yes"], "--force takes no value"),
    ],
)
def test_a_bad_argument_says_what_and_gives_the_usage(words: list[str], problem: str) -> None:
    with pytest.raises(UserError) as caught:
        DEPLOY.bind(words, RT)
    message = str(caught.value)
    assert problem in message
    assert "usage: `?deploy <host> [switch|boot] [--ref REF] [--force]`" in message
    assert "`?help deploy`" in message


def test_greedy_matchers_leave_the_words_later_parameters_need() -> None:
    bound = SILENCE.bind(["alertname=NotUp", "instance=~pluto.*", "2h", "reboot", "now"], RT)
    assert bound.values == {
        "matchers": ["alertname=NotUp", "instance=~pluto.*"],
        "duration": timedelta(hours=2),
        "comment": "reboot now",
    }
    assert "comment" in bound.given
    bound = SILENCE.bind(["alertname=NotUp", "30m"], RT)
    assert bound.values["comment"] == "" and "comment" not in bound.given
    # A required run that refuses its first word says why, rather than "missing".
    with pytest.raises(UserError, match="matchers: `2h` is not a matcher"):
        SILENCE.bind(["2h", "why"], RT)
    with pytest.raises(UserError, match="missing duration"):
        SILENCE.bind(["alertname=NotUp"], RT)
    with pytest.raises(UserError, match="duration: 'soon' is not a duration"):
        SILENCE.bind(["alertname=NotUp", "soon"], RT)


def test_a_double_dash_ends_the_options() -> None:
    note = Command("note", _noop, "Note.", (REF, rest("text", required=True)))
    bound = note.bind(["--ref", "main", "--", "--soon", "is", "not", "an", "option"], RT)
    assert bound.values == {"ref": "main", "text": "--soon is not an option"}
    with pytest.raises(UserError, match="unknown option `--soon`"):
        note.bind(["--soon", "is"], RT)


def test_integer_bounds() -> None:
    count = arg("count", integer(1, 100), default=10)
    cmd = Command("audit", _noop, "Audit.", (count,))
    assert cmd.bind([], RT).values == {"count": 10}
    assert cmd.bind(["20"], RT).values == {"count": 20}
    with pytest.raises(UserError, match="count: `many` is not a whole number"):
        cmd.bind(["many"], RT)
    with pytest.raises(UserError, match="count: must be between 1 and 100, not 0"):
        cmd.bind(["0"], RT)


def test_reaction_keys_compare_without_variation_selectors() -> None:
    assert normalize_key("✅") == normalize_key("✅\ufe0f") == "✅"
    assert normalize_key("☑\ufe0f") == "☑"
    assert normalize_key("🔕") != normalize_key("🔔")


async def test_manual_clock_wakes_sleepers_only_when_their_time_comes() -> None:
    start = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    clock = ManualClock(start)
    woke: list[str] = []

    async def sleeper(name: str, when: datetime) -> None:
        await clock.sleep_until(when)
        woke.append(name)

    tasks = [
        asyncio.create_task(sleeper("midnight", datetime(2026, 12, 1, tzinfo=UTC))),
        asyncio.create_task(sleeper("one", datetime(2026, 12, 1, 1, tzinfo=UTC))),
    ]
    await clock.advance(timedelta(seconds=30))
    assert woke == []
    await clock.set(datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC))
    await asyncio.wait_for(tasks[0], 5)
    assert woke == ["midnight"]
    wake = asyncio.Event()
    early = asyncio.create_task(clock.sleep_until(datetime(2027, 1, 1, tzinfo=UTC), wake))
    wake.set()
    await asyncio.wait_for(early, 5)
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.set(start)
    await clock.advance(timedelta(hours=1))
    await asyncio.wait_for(tasks[1], 5)
    assert woke == ["midnight", "one"]


async def test_supervise_starts_again_from_the_shortest_backoff_after_a_healthy_run() -> None:
    now = [0.0]
    slept: list[float] = []
    runs = iter([0.0, 0.0, 0.0, 120.0, 0.0])  # how long each run lasts, in fake seconds
    done = asyncio.Event()

    async def loop() -> None:
        try:
            now[0] += next(runs)
        except StopIteration:
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("boom")

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    task = asyncio.create_task(
        supervise("x", loop, Metrics(), monotonic=lambda: now[0], sleep=fake_sleep)
    )
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # 1, 2, 4 s after quick crashes; after a two-minute run it starts at 1 s again.
    expected = [1, 2, 4, 1, 2]
    assert len(slept) == len(expected)
    assert all(0.8 * e <= s <= 1.2 * e for s, e in zip(slept, expected, strict=True)), slept
