"""Starting and stopping the local servers the demo and the tests run."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from pathlib import Path


def start_server(
    name: str,
    cmd: list[str],
    log_path: Path,
    ready_url: str,
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process logging to log_path; return once ready_url answers."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(ready_url, timeout=2):  # noqa: S310 - loopback URL
                return proc
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"{name} did not answer on {ready_url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
