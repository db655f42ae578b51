"""Running commands on hosts over SSH (asyncssh), with verified host keys and timeouts.

Every failure becomes a RemoteError that names the host and says what went wrong, fit to be
shown in the room; an unknown or changed host key is an error, never a prompt.

Commands run without a terminal and with their stdin closed, so a remote prompt (sudo's
password prompt, a host key question) fails at once instead of waiting for an answer that
never comes. Without a terminal there is no SIGHUP when we go away, so every command runs
under `guarded()`: a small POSIX sh wrapper that ends the command's process group when the
SSH channel closes. Measured against OpenSSH 9.2 (Debian 12): closing a channel gives the
session's stdin EOF, but a command without a terminal keeps running; and sshd refuses
the SSH `signal` request for a root login ("session signalling requires privilege
separation", session.c session_signal_req), while it honours it for other users (killpg of
the session). So ending a command sends `signal TERM` (where sshd honours it) AND closes
the channel (which the wrapper turns into a TERM of the whole process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from bot.config import Section
from bot.errors import RemoteError

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_.-]+)@)?(?P<host>[A-Za-z0-9_.-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?$"
)


class SshSettings(Section):
    """How the bot connects: host keys are checked against known_hosts, never learned."""

    known_hosts: Path | None = None
    client_keys: list[Path] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=15, gt=0)


@dataclass(frozen=True)
class Target:
    """user@host[:port]."""

    user: str
    host: str
    port: int

    def __str__(self) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user}@{self.host}{port}"


def parse_target(text: str, default_user: str = "root") -> Target:
    """Parse `user@host[:port]`; raises ValueError for anything else."""
    m = _TARGET.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not user@host[:port]")
    return Target(m["user"] or default_user, m["host"].strip("[]"), int(m["port"] or 22))


@dataclass(frozen=True)
class Result:
    """A finished remote command."""

    exit_status: int
    stdout: str
    stderr: str


class SshClient:
    """Connects with the configured known_hosts and keys; one connection per call.

    Every connection it opens is closed (and waited for) when its `connect` block ends;
    `close()` ends those still open, for the owner's shutdown.
    """

    @classmethod
    def from_settings(cls, settings: SshSettings) -> SshClient:
        """A client configured from an `ssh:` config block."""
        return cls(settings.known_hosts, settings.client_keys, settings.connect_timeout_s)

    def __init__(
        self,
        known_hosts: Path | None,
        client_keys: Sequence[Path] = (),
        connect_timeout_s: float = 15,
    ) -> None:
        self.known_hosts = known_hosts
        self.client_keys = [str(k) for k in client_keys]
        self.connect_timeout_s = connect_timeout_s
        self._open: set[asyncssh.SSHClientConnection] = set()

    @asynccontextmanager
    async def connect(self, target: Target) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """An open connection, or RemoteError saying why there is none."""
        import asyncssh  # imported on first use: it pulls in much of `cryptography`

        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    known_hosts=str(self.known_hosts) if self.known_hosts else (),
                    client_keys=self.client_keys or None,
                    agent_path=None,
                    config=[],
                    connect_timeout=self.connect_timeout_s,
                ),
                self.connect_timeout_s + 5,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise RemoteError(
                f"host key of {target} is not the one in known_hosts ({exc.reason}); "
                "refusing to connect"
            ) from None
        except asyncssh.PermissionDenied:
            raise RemoteError(f"{target} refused our SSH key") from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            )
            raise RemoteError(f"cannot reach {target} over SSH: {reason}") from None
        self._open.add(conn)
        try:
            yield conn
        finally:
            self._open.discard(conn)
            await _closed(conn)

    async def close(self) -> None:
        """Close every connection still open and wait until they are closed."""
        conns, self._open = list(self._open), set()
        await asyncio.gather(*(_closed(c) for c in conns))

    async def run(self, target: Target, command: str, timeout_s: float) -> Result:
        """Run a command (already quoted by the caller) and collect its output.

        Raises RemoteError when the host cannot be reached or the command outlives
        `timeout_s` seconds; a timed-out command is ended on the host, not abandoned.
        """
        import asyncssh

        async with self.connect(target) as conn:
            try:
                async with asyncio.timeout(timeout_s):
                    return await run_on(conn, command)
            except TimeoutError:
                raise RemoteError(
                    f"`{command.split()[0]}` on {target} timed out after {timeout_s:.0f} s "
                    "and was stopped there"
                ) from None
            except (OSError, asyncssh.Error) as exc:
                raise RemoteError(f"SSH to {target} failed: {exc}") from None


# The wrapper every remote command runs under ($1 is the command). The channel's stdin is
# kept as fd 3 for a watcher that waits for its EOF (the channel closed: cancel, timeout,
# lost connection) and then TERMs the session's process group; the command itself gets
# /dev/null as stdin. The watcher is stopped when the command ends on its own.
_GUARD = (
    'exec 3<&0 </dev/null; sh -c "$1" 3<&- & c=$!; '
    "(while read -r _; do :; done; kill -TERM 0) <&3 >/dev/null 2>&1 & w=$!; "
    "exec 3<&-; wait $c; s=$?; kill $w 2>/dev/null; exit $s"
)


def guarded(command: str) -> str:
    """`command` (a POSIX shell command line) wrapped to end when its SSH channel closes."""
    return f"sh -c {shlex.quote(_GUARD)} sh {shlex.quote(command)}"


def end_remote(proc: asyncssh.SSHClientProcess[bytes]) -> None:
    """Stop a remote command started with `guarded()`: TERM it and close its channel."""
    with contextlib.suppress(Exception):
        proc.send_signal("TERM")
    proc.close()


@asynccontextmanager
async def remote_process(
    conn: asyncssh.SSHClientConnection, command: str, merge_stderr: bool = False
) -> AsyncIterator[asyncssh.SSHClientProcess[bytes]]:
    """A guarded remote process (bytes, no terminal) that is ended if the block is left early.

    With `merge_stderr` its stderr arrives in stdout, as one stream. Leaving the block by an
    exception or a cancellation before the process exited ends it on the host.
    """
    import asyncssh

    proc = await conn.create_process(
        guarded(command),
        encoding=None,
        stderr=asyncssh.STDOUT if merge_stderr else asyncssh.PIPE,
    )
    try:
        yield proc
    except BaseException:
        end_remote(proc)
        raise


async def _closed(conn: asyncssh.SSHClientConnection) -> None:
    """Close a connection and wait (bounded) for its transport to be gone."""
    conn.close()
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(conn.wait_closed(), 5)


async def run_on(conn: asyncssh.SSHClientConnection, command: str) -> Result:
    """Run a command on an open connection and collect its output (ended if cancelled)."""
    async with remote_process(conn, command) as proc:
        stdout, stderr = await proc.communicate()
    return Result(
        exit_status=proc.exit_status if proc.exit_status is not None else -1,
        stdout=_text(stdout),
        stderr=_text(stderr),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")
