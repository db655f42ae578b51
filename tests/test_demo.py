"""The README's quick start: `scripts/demo.sh --check` brings everything up and gets answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--dir", str(tmp_path / "demo"), "--check"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the bot answered !ping with: pong" in result.stdout
    assert "alert reached the room: ⚠️ FIRING (1) · WARNING · DemoCheck" in result.stdout
    table = result.stdout.split("!backups answered:", 1)[1]
    assert "pluto-zfs" in table and "✅ OK" in table and "⚠️ STALE" in table
    assert "rsyncnet-zrepl (rsyncnet): newest replication of job rsyncnet is 3 d old" in table
    assert "demo check: ✅ pluto (switch) deployed after" in result.stdout
    assert "demo check: AWS costs, last 7 days" in result.stdout
    # Third-party loggers stay quiet: the demo's own answers are not buried (94 asyncssh lines).
    assert "asyncssh" not in result.stderr, result.stderr[-3000:]
    assert "password   :" in result.stderr and "homeserver : http://127.0.0.1:" in result.stderr
