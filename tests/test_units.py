"""Pure logic: argument splitting, addressing, cron, durations, permissions; the store's
migrations and the core's table modules on a fresh SQLite file."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot import audit, job_runs
from bot.args import arg, text
from bot.claims import Busy, Claims
from bot.config import PermissionsConfig, RoleConfig
from bot.cron import CronError, CronSchedule
from bot.dispatch import split_args
from bot.errors import UserError
from bot.messages import CUT_NOTE, MAX_CONTENT_BYTES, edit, fit, human_duration, notice
from bot.permissions import Permissions
from bot.registry import Command, Registry, Router, with_prefix
from bot.store import Migration, SqliteStore, Store, split_statements


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


async def test_migrations_split_where_sqlite_sees_a_statement_end(tmp_path: Path) -> None:
    script = """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a; b');
        -- a comment; with a semicolon
        INSERT INTO notes(body) VALUES ('x;y');
        CREATE TRIGGER "notes;upper" AFTER INSERT ON notes WHEN new.body = 'z' BEGIN
            UPDATE notes SET body = body || ';' WHERE id = new.id;
        END;
        INSERT INTO notes DEFAULT VALUES;
        INSERT INTO notes(body) VALUES ('z')
    """
    statements = split_statements(script)
    assert len(statements) == 5
    assert statements[1].endswith("VALUES ('x;y');")
    assert statements[2].startswith('CREATE TRIGGER "notes;upper"') and statements[2].endswith(
        "END;"
    )
    store = SqliteStore(tmp_path / "s.sqlite3", [Migration("notes", 1, script)])
    try:
        rows = await store.execute("SELECT body FROM notes ORDER BY id")
        assert [r["body"] for r in rows] == ["x;y", "a; b", "z;"]
    finally:
        await store.close()


async def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = Migration("broken", 1, "CREATE TABLE half (x TEXT); INSERT INTO nowhere VALUES (1);")
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        SqliteStore(tmp_path / "s.sqlite3", [bad])
    store = SqliteStore(tmp_path / "s.sqlite3")
    try:
        tables = {r["name"] for r in await store.execute("SELECT name FROM sqlite_master")}
        assert "half" not in tables and "kv" in tables
        rows = await store.execute("SELECT component FROM schema_version")
        assert {r["component"] for r in rows} == {"core"}
    finally:
        await store.close()


async def test_kv_delete_prefix_takes_the_prefix_literally(any_store: Store) -> None:
    store = any_store
    for key in ("matrix.session:hs:@bot", "matrix.session:hs:@old", "matrix_session:x"):
        await store.put(key, "v")
    await store.put("matrix.sync_token", "s1")
    assert await store.delete_prefix("matrix.session:") == 2
    assert await store.get("matrix.session:hs:@bot") is None
    assert await store.get("matrix_session:x") == "v", "'_' is no wildcard"
    assert await store.delete_prefix("matrix%") == 0, "'%' is no wildcard"
    assert await store.get("matrix.sync_token") == "s1"


async def test_audit_and_job_runs_records(any_store: Store) -> None:
    store = any_store
    first = await audit.start(
        store,
        sender="@a:x",
        room_id="!r:x",
        event_id="$1",
        command="jobs run",
        args=["tick"],
        now=100.0,
    )
    await audit.start(
        store, sender="@b:x", room_id="!r:x", event_id="$2", command="ping", args=[], now=101.0
    )
    await audit.end(store, first, "ok", None, now=102.5)
    newest, oldest = await audit.recent(store, 2)
    assert (newest.command, newest.outcome, newest.ended_at) == ("ping", "running", None)
    assert (oldest.args, oldest.outcome, oldest.started_at, oldest.ended_at) == (
        ("tick",),
        "ok",
        100.0,
        102.5,
    )
    assert [r.event_id for r in await audit.of_command(store, "jobs run")] == ["$1"]

    assert await job_runs.last_scheduled(store, "tick") is None
    run = await job_runs.start(store, "tick", scheduled_for=60.0, trigger="schedule", now=61.0)
    await job_runs.start(store, "tick", scheduled_for=200.0, trigger="manual", now=200.0)
    assert await job_runs.last_scheduled(store, "tick") == 60.0, "a manual run moves no schedule"
    await job_runs.end(store, run, "error", "x" * 600, now=62.0)
    assert await job_runs.interrupt_running(store, now=300.0) == 1
    latest = await job_runs.latest(store, "tick")
    assert latest is not None and (latest.trigger, latest.outcome) == ("manual", "interrupted")
    runs = await job_runs.of_job(store, "tick")
    assert len(runs[0].detail or "") == 500 and runs[1].ended_at == 300.0


# Each core table and the one module that may run SQL on it (migrations aside).
OWNERS = {
    "kv": "bot/store.py",
    "audit": "bot/audit.py",
    "job_runs": "bot/job_runs.py",
    "outbox": "bot/outbox_db.py",
}


def test_each_core_table_is_read_and_written_by_its_owner_only() -> None:
    root = Path(__file__).resolve().parent.parent
    sql = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+(\w+)\b", re.IGNORECASE)
    for path in sorted([*root.glob("bot/**/*.py"), *root.glob("commands/**/*.py")]):
        rel = path.relative_to(root).as_posix()
        source = path.read_text()
        if rel == "bot/store.py":
            source = source.split("class Store(", 1)[1]  # the migrations create every table
        for table in sql.findall(source):
            owner = OWNERS.get(table)
            assert owner in (None, rel), f"{rel} runs SQL on {table}, owned by {owner}"


def test_help_texts_name_commands_with_the_configured_prefix() -> None:
    text = "Silence alerts, e.g. `!silence alertname=NotUp 2h`; see `!silences`! Or `!` alone."
    assert with_prefix(text, "?") == (
        "Silence alerts, e.g. `?silence alertname=NotUp 2h`; see `?silences`! Or `!` alone."
    )
    cmd = Command("silence", _noop, text)
    assert cmd.help_text("!") == text
