"""What every benchmark sets up: a loopback Synapse with a room, and infrabot as a process."""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.synapse import Account, LocalSynapse, free_port


@dataclass
class BenchRoom:
    """A running Synapse, a room, a person in it and the accounts that were asked for."""

    work: Path
    hs: LocalSynapse
    room: str
    person: Account
    accounts: dict[str, Account]


@contextlib.contextmanager
def bench_room(prefix: str, others: list[str]) -> Iterator[BenchRoom]:
    """Start Synapse; register `person` and `others`; they all join one room."""
    work = Path(tempfile.mkdtemp(prefix=f"infrabot-{prefix}-"))
    hs = LocalSynapse(work / "synapse")
    hs.prepare()
    hs.start()
    try:
        person = hs.register(f"{prefix}-user", f"{prefix}-user-pw")
        accounts = {name: hs.register(f"{prefix}-{name}", f"{prefix}-{name}-pw") for name in others}
        room = hs.create_room(person, name=prefix, invite=[a.user_id for a in accounts.values()])
        for account in accounts.values():
            hs.join(account, room)
        yield BenchRoom(work, hs, room, person, accounts)
    finally:
        hs.stop()


def bot_config(bench: BenchRoom, bot: Account, port: int, **sections: Any) -> Path:
    """Write a config for the bot in the bench room; returns its path."""
    config = {
        "matrix": {
            "homeserver": bench.hs.url,
            "user_id": bot.user_id,
            "access_token": bot.access_token,
            "rooms": [bench.room],
        },
        "http": {"host": "127.0.0.1", "port": port},
        "state": {"data_dir": str(bench.work / f"state-{port}")},
        **sections,
    }
    path = bench.work / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_bot(config: Path, port: int, quiet: bool = True) -> subprocess.Popen[bytes]:
    """Run `python -m bot run` and wait until /healthz says 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL if quiet else None,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # A benchmark that fails half-way must not leave its bot running.
    atexit.register(stop_bot, proc)
    wait_healthy(port, proc)
    return proc


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Poll /healthz until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("bot exited")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.01)
    raise RuntimeError("bot never became healthy")


def stop_bot(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM and wait (nothing if it has already exited)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = [
    "BenchRoom",
    "bench_room",
    "bot_config",
    "cpu_seconds",
    "free_port",
    "pct",
    "start_bot",
    "stop_bot",
]
