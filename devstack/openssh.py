"""A real OpenSSH sshd on a loopback port, for what only the real server shows.

Debian's `openssh-server` (OpenSSH 9.2 on Debian 12) started as PARTS.md describes: its own
host key, authorized_keys, pid file, `UsePAM no`, `StrictModes no`, and `SetEnv` putting the
fake tools of `bin_dir` first on the PATH. The interface matches LocalSshServer (the
in-process asyncssh server), so a test can use either.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import asyncssh

from devstack.synapse import free_port

SSHD = "/usr/sbin/sshd"


class OpenSshServer:
    """sshd -D on 127.0.0.1; writes known_hosts and a client key for the bot to use."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = self.workdir / "bin"
        self.known_hosts = self.workdir / "known_hosts"
        self.client_key = self.workdir / "client_key"
        self.log_path = self.workdir / "sshd.log"
        self.env = dict(env or {})
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """The SSH target string for the bot's config."""
        return f"root@127.0.0.1:{self.port}"

    def script(self, name: str, body: str) -> Path:
        """Install an executable script (a fake tool) under bin/."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        path = self.bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    async def start(self, timeout: float = 30) -> None:
        """Write keys and config, start sshd and return once it accepts connections.

        Raises RuntimeError when sshd is not installed (scripts/bootstrap.sh installs
        `openssh-server`), exits, or does not listen within `timeout` seconds.
        """
        self._proc = await asyncio.to_thread(self._launch)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._proc.poll() is not None:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"sshd exited with {self._proc.returncode}:\n{log[-2000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"sshd did not listen on {self.port} within {timeout:.0f} s")
            await asyncio.sleep(0.05)

    def _launch(self) -> subprocess.Popen[bytes]:
        if shutil.which(SSHD) is None:
            raise RuntimeError(f"{SSHD} is missing: run scripts/bootstrap.sh (openssh-server)")
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "host_key"
        if not host_key.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
            client = asyncssh.generate_private_key("ssh-ed25519")
            client.write_private_key(str(self.client_key))
            client.write_public_key(str(self.workdir / "authorized_keys"))
        host_key.chmod(0o600)
        self.client_key.chmod(0o600)
        self.port = free_port()
        path = f"{self.bin_dir}:/usr/bin:/bin"
        setenv = " ".join(f"{k}={v}" for k, v in {"PATH": path, **self.env}.items())
        config = self.workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            f"SetEnv {setenv}\n"
        )
        public = asyncssh.read_private_key(str(host_key)).export_public_key().decode().strip()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public}\n")
        # The privilege separation directory sshd insists on (Debian's unit creates it).
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        return subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(self.log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        """Stop listening (SIGTERM, then SIGKILL after 10 s); sessions end with their clients."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
