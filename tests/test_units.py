"""Pure logic: argument splitting, addressing, cron, durations, permissions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.args import arg, text
from bot.claims import Busy, Claims
from bot.config import PermissionsConfig, RoleConfig
from bot.cron import CronError, CronSchedule
from bot.dispatch import split_args
from bot.errors import UserError
from bot.messages import CUT_NOTE, MAX_CONTENT_BYTES, edit, fit, human_duration, notice
from bot.permissions import Permissions
from bot.registry import Command, Registry, Router


async def _noop(ctx: Any) -> None:
    return None


def test_split_args_quotes_and_errors() -> None:
    assert split_args("deploy 'pluto haumea' --ref \"main\"") == [
        "deploy",
        "pluto haumea",
        "--ref",
        "main",
    ]
    with pytest.raises(UserError, match="No closing quotation"):
        split_args('deploy "pluto')


def test_cron_next_and_prev_in_utc() -> None:
    cron = CronSchedule("0 9 * * 1")
    moment = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
    assert cron.next_after(moment) == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert cron.prev_before(moment) == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert CronSchedule("*/5 * * * * *").next_after(moment).second == 5
    for bad in ("* * *", "61 * * * *", "hello world x y z"):
        with pytest.raises(CronError):
            CronSchedule(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250 ms"), (5, "5 s"), (65, "1 min 5 s"), (3600, "1 h"), (273605, "3 d 4 h")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_registry_finds_two_word_commands_and_rejects_clashes() -> None:
    router = Router("x")
    router.command("jobs")(_noop)
    router.command("jobs run", params=[arg("name", text)])(_noop)
    reg = Registry([router])
    found = reg.find(["jobs", "run", "tick"])
    assert found is not None and found[0].name == "jobs run" and found[1] == ["tick"]
    found = reg.find(["JOBS"])
    assert found is not None and found[0].name == "jobs"
    with pytest.raises(ValueError, match="registered twice"):
        Registry([router, router])


def test_permissions_users_power_levels_and_admin() -> None:
    cfg = PermissionsConfig(
        roles={
            "admin": RoleConfig(users=["@alice:x"]),
            "operator": RoleConfig(users=["@bob:x"], min_power_level=50),
        },
        commands={"jobs run": "admin"},
    )
    levels = {"@carol:x": 50}
    perms = Permissions(cfg, lambda room, user: levels.get(user, 0))
    op = Command("deploy", _noop, "", role="operator")
    assert perms.may_run("@bob:x", "!r", op)
    assert perms.may_run("@carol:x", "!r", op)  # by power level
    assert perms.may_run("@alice:x", "!r", op)  # admin may run everything
    assert not perms.may_run("@mallory:x", "!r", op)
    overridden = Command("jobs run", _noop, "", role="operator")
    assert perms.required_role(overridden) == "admin"
    assert not perms.may_run("@bob:x", "!r", overridden)


def test_edit_content_shape() -> None:
    content = edit(notice("new <b>text</b>"), "$abc")
    assert content["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$abc"}
    assert content["m.new_content"]["body"] == "new <b>text</b>"
    assert "&lt;b&gt;" in content["m.new_content"]["formatted_body"]
    assert content["body"].startswith("* ")


def _event_bytes(content: dict[str, Any]) -> int:
    return len(json.dumps(content, ensure_ascii=False).encode())


def test_content_too_large_for_one_event_is_cut_to_fit() -> None:
    small = notice("hello", "<b>hello</b>")
    assert fit(small) is small
    text = "".join(f'line {i} "quoted" ⚠️ host{i}\n' for i in range(6000))  # ~170 KB
    big = fit(notice(text, "<p>" + text + "</p>"))
    assert _event_bytes(big) <= MAX_CONTENT_BYTES
    assert "formatted_body" not in big and "format" not in big
    assert big["body"].startswith("line 0 ") and big["body"].endswith(CUT_NOTE)
    assert len(big["body"]) > MAX_CONTENT_BYTES // 4, "cut to fit, not to nothing"
    changed = fit(edit(notice(text), "$original"))
    assert _event_bytes(changed) <= MAX_CONTENT_BYTES
    assert changed["m.new_content"]["body"].endswith(CUT_NOTE)
    assert changed["m.relates_to"]["event_id"] == "$original"


def test_claims_one_winner_and_the_loser_learns_who() -> None:
    now = [1000.0]
    claims = Claims(clock=lambda: now[0])
    assert claims.try_claim("deploy:pluto", "@alice:x", "the deploy of pluto") is None
    held = claims.try_claim("deploy:pluto", "@bob:x", "the deploy of pluto")
    assert held is not None and held.holder == "@alice:x" and held.since == 1000.0
    now[0] = 1075.0
    with pytest.raises(
        Busy, match="The deploy of pluto is already running: started by @alice:x 1 min 15 s ago"
    ):
        with claims.hold("deploy:pluto", "@bob:x", "the deploy of pluto"):
            pass
    claims.release("deploy:pluto")
    with claims.hold("deploy:pluto", "@bob:x", "the deploy of pluto") as mine:
        assert mine.holder == "@bob:x" and claims.holder("deploy:pluto") == mine
    assert claims.holder("deploy:pluto") is None, "released when the block ends"
