"""A real SSH server (asyncssh, in-process) whose commands run with fake tools first on PATH.

Tests and the demo put scripts named `zfs`, `zrepl`, `nixos-rebuild`, `colmena`, `systemctl`
into `bin_dir`; a client connecting with the generated key runs them as it would on a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import asyncssh


class LocalSshServer:
    """Listens on 127.0.0.1; writes known_hosts and a client key for the bot to use."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = self.workdir / "bin"
        self.known_hosts = self.workdir / "known_hosts"
        self.client_key = self.workdir / "client_key"
        self.port = port
        self._server: asyncssh.SSHAcceptor | None = None
        self._connections: list[asyncssh.SSHServerConnection] = []

    async def start(self) -> None:
        """Generate keys (once) and start listening on a free port."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        host_key_path = self.workdir / "host_key"
        if not host_key_path.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key_path))
            client = asyncssh.generate_private_key("ssh-ed25519")
            client.write_private_key(str(self.client_key))
            client.write_public_key(str(self.workdir / "client_key.pub"))
        host_key = asyncssh.read_private_key(str(host_key_path))
        self._server = await asyncssh.listen(
            "127.0.0.1",
            self.port,
            server_host_keys=[host_key],
            authorized_client_keys=str(self.workdir / "client_key.pub"),
            process_factory=self._run,
            encoding=None,
            allow_scp=False,
            acceptor=self._connections.append,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {host_key.export_public_key().decode().strip()}\n"
        )

    @property
    def target(self) -> str:
        """The SSH target string for the bot's config."""
        return f"root@127.0.0.1:{self.port}"

    def drop_connections(self) -> None:
        """Cut every open connection, as a network failure would."""
        for conn in self._connections:
            conn.abort()
        self._connections.clear()

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def script(self, name: str, body: str) -> Path:
        """Install an executable script (a fake tool) under bin/."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        path = self.bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    async def _run(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        # Behaves as OpenSSH does for a command without a terminal (session.c
        # do_exec_no_pty): its own session, the channel's data as stdin, EOF on stdin when
        # the channel closes, and no signal when the client goes away. A `signal` request
        # is honoured (killpg), as OpenSSH does for a non-root login.
        env = {**os.environ, "PATH": f"{self.bin_dir}:/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_shell(
            process.command or "true",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )

        async def pump(
            reader: asyncio.StreamReader | None, writer: asyncssh.SSHWriter[bytes]
        ) -> None:
            assert reader is not None
            while chunk := await reader.read(65536):
                with contextlib.suppress(OSError, asyncssh.Error):
                    writer.write(chunk)

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                while True:
                    try:
                        data = await process.stdin.read(65536)
                    except asyncssh.SignalReceived as exc:
                        with contextlib.suppress(KeyError, OSError):
                            os.killpg(proc.pid, signal.Signals[f"SIG{exc.signal}"])
                        continue
                    except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                        continue
                    if not data:
                        break
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (OSError, asyncssh.Error):
                pass
            finally:
                proc.stdin.close()

        feeder = asyncio.get_running_loop().create_task(feed())
        try:
            await asyncio.gather(
                pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr)
            )
            status = await proc.wait()
        except BaseException:
            # The client went away: its stdin is closed above, as sshd closes it; what runs
            # under `guarded()` ends itself. Anything else still running after 10 s is
            # killed so that a test never leaves a process behind.
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, OSError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 10)
            if proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                # Reaped here, so its pipes close on this loop rather than being collected
                # after the loop is gone (an "Event loop is closed" error in a later test).
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, OSError):
                    await asyncio.wait_for(proc.communicate(), 5)
            raise
        feeder.cancel()
        with contextlib.suppress(OSError, asyncssh.Error):
            process.exit(status if status >= 0 else 128 - status)
