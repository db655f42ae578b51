"""Config validation: every problem is named by file and key, secrets come from files or env."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import load, load_registry, secret_values
from bot.config import ConfigError, parse_config
from bot.durations import format_duration
from bot.logs import SecretMask
from commands.deploy.inventory import Inventory

ROOT = Path(__file__).resolve().parent.parent


def example_config(tmp_path: Path) -> Path:
    """config.example.yaml with its agenix secret files created under tmp_path."""
    text = (ROOT / "config.example.yaml").read_text()
    for secret in set(re.findall(r"/run/agenix/[\w.-]+", text)):
        target = tmp_path / Path(secret).name
        target.write_text("secret-token-value\n")
        text = text.replace(secret, str(target))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _raw(**matrix: Any) -> dict[str, Any]:
    base = {"homeserver": "http://127.0.0.1:1", "user_id": "@bot:x", "rooms": ["!r:x"]}
    base.update(matrix)
    return {"matrix": base}


def _parse(raw: dict[str, Any]) -> Any:
    registry = load_registry()
    return parse_config(
        raw, "cfg.yaml", registry.sections, {j.name: j.params for j in registry.jobs.values()}
    )


def test_example_config_is_valid(tmp_path: Path) -> None:
    path = example_config(tmp_path)
    config = load(str(path), load_registry())
    assert config.core.matrix.access_token is not None
    assert config.core.matrix.access_token.get_secret_value() == "secret-token-value"
    assert config.core.schedules[0].job == "message"
    # The team's two colmena hives as host groups.
    inventory = config.section("hosts", Inventory)
    assert inventory is not None
    groups = {g.name: g for g in inventory.resolved()}
    assert [h.name for h in groups["critical"].hosts] == ["pluto", "mimas", "haumea", "titan"]
    assert (groups["critical"].role, groups["critical"].four_eyes) == ("deploy-critical", True)
    assert (groups["non-critical"].dir, groups["non-critical"].role) == (
        "non-critical-infra",
        "deploy",
    )


def test_every_problem_is_listed_with_file_and_key() -> None:
    raw = _raw(access_token="t", rooms=["general"], sync_timeout_s=-1)
    raw["http"] = {"port": 99999}
    raw["bogus"] = {}
    raw["schedules"] = [
        {"name": "a", "cron": "not cron", "job": "message", "params": {"text": "x"}},
        {"name": "b", "cron": "0 9 * * 1", "job": "nope"},
        {"name": "c", "cron": "0 9 * * 1", "job": "message", "params": {}},
    ]
    with pytest.raises(ConfigError) as err:
        _parse(raw)
    problems = "\n".join(err.value.problems)
    assert "cfg.yaml: matrix.sync_timeout_s: Input should be greater than 0" in problems
    assert "cfg.yaml: http.port:" in problems
    assert "cfg.yaml: bogus: unknown section" in problems
    assert "cfg.yaml: schedules[0].cron:" in problems
    assert "cfg.yaml: schedules[1].job: unknown job 'nope'" in problems
    assert "cfg.yaml: schedules[2].params.text: Field required" in problems
    assert "neither a room id" in problems


def test_credentials_required_and_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(_raw())
    assert "set access_token" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        _parse(_raw(access_token="a", access_token_file=str(tmp_path / "t")))
    assert "give only one of access_token, access_token_file" in err.value.problems[0]


def test_secret_from_missing_file_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as err:
        _parse(_raw(access_token_file=str(missing)))
    assert "access_token_file: cannot read secret file" in err.value.problems[0]
    assert str(missing) in err.value.problems[0]


def test_an_empty_secret_is_a_load_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty file (not yet decrypted) or variable used to pass, and the bot then failed at
    start: an empty access token crashed the login, an empty database password was sent."""
    empty = tmp_path / "token"
    empty.write_text("\n")
    monkeypatch.setenv("BOT_EMPTY", " ")
    for matrix, says in [
        ({"access_token_file": str(empty)}, f"access_token_file: the secret file {empty} is empty"),
        ({"password_env": "BOT_EMPTY"}, "password_env: environment variable BOT_EMPTY is empty"),
        ({"access_token": ""}, "access_token: is empty"),
    ]:
        with pytest.raises(ConfigError) as err:
            _parse(_raw(**matrix))
        assert err.value.problems == [f"cfg.yaml: matrix: {says}"]


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_PW", "hunter2hunter2")
    config = _parse(_raw(password_env="BOT_PW"))
    assert config.core.matrix.password.get_secret_value() == "hunter2hunter2"
    assert "hunter2" not in repr(config)
    assert secret_values(config) == ["hunter2hunter2"]
    with pytest.raises(ConfigError) as err:
        _parse(_raw(password_env="NOT_SET_ANYWHERE"))
    assert "NOT_SET_ANYWHERE is not set" in err.value.problems[0]


def test_secret_mask_hides_secrets_in_log_records() -> None:
    import logging

    record = logging.LogRecord("x", logging.INFO, "f", 1, "token is %s", ("abcdef123",), None)
    SecretMask(["abcdef123"]).filter(record)
    assert record.getMessage() == "token is ***"


def test_secret_mask_hides_secrets_in_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    """`log.exception` (the supervisor's "crashed; restarting it") printed the exception's
    text unmasked: an aiohttp error quotes the URL, where nio puts `?access_token=…`."""
    import logging

    from bot.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", ["syt_s3cret_token"])
        try:
            raise RuntimeError(
                "GET https://hs/_matrix/client/v3/sync?access_token=syt_s3cret_token"
            )
        except RuntimeError:
            logging.getLogger("bot.app").exception("sync crashed; restarting it")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "sync crashed" in err and "access_token=***" in err
    assert "syt_s3cret_token" not in err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("matrix:\n  homeserver: ftp://x\n  rooms: []\n")
    result = _cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: matrix.homeserver:" in result.stderr
    assert f"{bad}: matrix.user_id: Field required" in result.stderr
    assert f"{bad}: matrix.rooms:" in result.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("matrix: [unclosed\n")
    result = _cli("check-config", "--config", str(broken))
    assert result.returncode == 2 and "not valid YAML (line" in result.stderr

    result = _cli("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr

    good = tmp_path / "good.yaml"
    good.write_text(
        "matrix:\n  homeserver: http://127.0.0.1:1\n  user_id: '@b:x'\n"
        "  access_token: t\n  rooms: ['!r:x']\n"
    )
    result = _cli("check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr


def test_run_with_bad_config_exits_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("matrix:\n  homeserver: http://127.0.0.1:1\n  user_id: nobody\n")
    result = _cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "matrix.user_id" in result.stderr and "connect" not in result.stderr


def test_durations_in_feature_sections_are_checked_at_load() -> None:
    raw = _raw(access_token="t")
    raw["backups"] = {
        "remind_every": "daily",
        "checks": [{"name": "c", "kind": "postgres_archiving", "dsn": "host=x", "max_age": "1 h"}],
    }
    raw["deploy"] = {"checkout": "/srv/infra", "timeout": "soon", "confirm_timeout": "5m"}
    raw["aws"] = {"snapshot_max_age": "old"}
    with pytest.raises(ConfigError) as err:
        _parse(raw)
    problems = "\n".join(err.value.problems)
    for key in (
        "backups.remind_every",
        "backups.checks[0].max_age",
        "deploy.timeout",
        "aws.snapshot_max_age",
    ):
        assert f"cfg.yaml: {key}: " in problems and "is not a duration" in problems, key


def test_durations_are_parsed_once_at_load() -> None:
    raw = _raw(access_token="t")
    raw["deploy"] = {"checkout": "/srv/infra", "timeout": "1h30m"}
    raw["alertmanager"] = {"url": "http://127.0.0.1:9093", "silence_on_reaction": "45m"}
    config = _parse(raw)
    deploy, alerts = config.features["deploy"], config.features["alertmanager"]
    assert deploy.timeout == timedelta(hours=1, minutes=30)
    assert deploy.confirm_timeout == timedelta(minutes=5)  # the default, typed too
    assert alerts.silence_on_reaction == timedelta(minutes=45)
    assert format_duration(timedelta(days=9, hours=2)) == "1w2d2h"
    assert deploy.model_dump()["timeout"] == "1h30m"


def _hosts_raw(roles: dict[str, Any], **group: Any) -> dict[str, Any]:
    raw = _raw(access_token="t")
    raw["permissions"] = {"roles": roles}
    raw["hosts"] = {
        "critical": {
            "method": "colmena",
            "dir": "build",
            **group,
            "hosts": [
                {"name": "pluto", "target": "root@pluto.nixos.org"},
            ],
        },
    }
    return raw


def test_a_group_role_missing_from_permissions_is_a_config_error(tmp_path: Path) -> None:
    # A typo ("deploy-critcal") would leave pluto to the admin role alone, unnoticed.
    raw = _hosts_raw({"deploy-critical": {"users": ["@bob:x"]}}, role="deploy-critcal")
    with pytest.raises(ConfigError) as err:
        _parse(raw)
    (problem,) = err.value.problems
    assert problem.startswith("cfg.yaml: hosts.critical.role: unknown role 'deploy-critcal'")
    assert "deploy-critical" in problem, "the known roles are listed"
    # The same through `infrabot check-config`, which names the file.
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: hosts.critical.role: unknown role 'deploy-critcal'" in result.stderr
    # Configured roles, the admin role and "anyone" are known.
    for role in ("deploy-critical", "admin", "anyone"):
        _parse(_hosts_raw({"deploy-critical": {"users": ["@bob:x"]}}, role=role))
    # A group without `role:` keeps the default `deploy` role even when it is not configured
    # (only the admin role deploys it then, said in the log at start), as before groups.
    _parse(_hosts_raw({}))
