"""Config mistakes in `backups.checks`, each a load-time error naming the file and the key,
and the order of heartbeat signals (found by trying the backup kinds as a new user would; the
end-to-end breaks are in tests/test_backups_break_e2e.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.cli import load_registry
from bot.config import ConfigError, parse_config
from commands.backups import heartbeat
from commands.backups.db import HeartbeatRow
from commands.backups.result import Verdicts

HB = {"name": "borg", "kind": "heartbeat", "token": "t" * 16, "max_age": "1d"}
PROM = {"name": "rsyncnet", "kind": "prometheus", "url": "http://p:9090", "query": "up"}


def problems(checks: list[dict[str, Any]]) -> str:
    registry = load_registry()
    raw = {
        "matrix": {
            "homeserver": "http://127.0.0.1:1",
            "user_id": "@bot:x",
            "rooms": ["!r:x"],
            "access_token": "t",
        },
        "backups": {"checks": checks},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(
            raw, "cfg.yaml", registry.sections, {j.name: j.params for j in registry.jobs.values()}
        )
    return "\n".join(err.value.problems)


@pytest.mark.parametrize(
    ("checks", "said"),
    [
        # Two checks of one name would share their stored state, announcements and URL.
        (
            [HB, {**PROM, "name": "borg", "max_age": "1h"}],
            "cfg.yaml: backups.checks: checks[1].name: 'borg' is already the name of checks[0]",
        ),
        # A key of another kind silently did nothing (grace is the heartbeat's).
        (
            [{**PROM, "max_age": "1h", "grace": "2h"}],
            "cfg.yaml: backups.checks[0]: a prometheus check does not use grace (heartbeat); "
            "its keys: labels, query, url, value_is, what",
        ),
        (
            [{**HB, "pools": ["tank"], "labels": ["a"]}],
            "a heartbeat check does not use labels (prometheus), pools (zpool)",
        ),
        (
            [
                {
                    "name": "z",
                    "kind": "zpool",
                    "host": "root@h",
                    "max_scrub_age": "35d",
                    "grace": "1h",
                }
            ],
            "cfg.yaml: backups.checks[0]: a zpool check does not use grace (heartbeat)",
        ),
        # A limit of nothing makes the check bad forever.
        ([{**HB, "max_age": "0s"}], "cfg.yaml: backups.checks[0]: max_age: must be longer than 0"),
        ([{**HB, "max_run": "0m"}], "cfg.yaml: backups.checks[0]: max_run: must be longer than 0"),
        # URLs that name no host; an empty event name ("no  for 26 h").
        ([{**PROM, "max_age": "1h", "url": "http://"}], "a prometheus check needs url"),
        ([{**PROM, "max_age": "1h", "url": "http://a b:9090"}], "a prometheus check needs url"),
        ([{**PROM, "max_age": "1h", "what": " "}], "what: names the event a value stands for"),
        # A heartbeat at /heartbeat/.. is one no client can reach (URLs drop the dot steps).
        ([{**HB, "name": ".."}], "name: '..' is no name"),
    ],
)
def test_backup_check_mistakes_fail_at_load(checks: list[dict[str, Any]], said: str) -> None:
    assert said in problems(checks)


def test_heartbeat_signals_count_in_the_order_they_arrive() -> None:
    # A failure told at the same instant as the success before it (a coarse or test clock),
    # or with a clock stepped back, was judged older than the success: OK instead of ERROR.
    now = datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC)
    day = Verdicts("borg", timedelta(days=1), "1d", now)
    for fail_at in (now, now - timedelta(minutes=3)):
        row = heartbeat.record(HeartbeatRow("borg"), "success", now, None)
        row = heartbeat.record(row, "fail", fail_at, "borg: lock timeout")
        failed = heartbeat.judge(row, timedelta(0), None, day)
        assert failed.state == "ERROR" and "borg: lock timeout" in failed.detail
        # …and a success after that failure closes it again.
        row = heartbeat.record(row, "success", fail_at, None)
        assert heartbeat.judge(row, timedelta(0), None, day).state == "OK"
