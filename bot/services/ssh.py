"""Running commands on hosts over SSH (asyncssh), with verified host keys and timeouts.

Every failure becomes a RemoteError that names the host and says what went wrong, fit to be
shown in the room; an unknown or changed host key is an error, never a prompt.
"""

from __future__ import annotations

import asyncio
import logging
import re
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
    """Connects with the configured known_hosts and keys; one connection per call."""

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
        try:
            yield conn
        finally:
            conn.close()

    async def run(self, target: Target, command: str, timeout_s: float) -> Result:
        """Run a command (already quoted by the caller) and collect its output."""
        import asyncssh

        async with self.connect(target) as conn:
            try:
                proc = await asyncio.wait_for(conn.run(command, check=False), timeout_s)
            except TimeoutError:
                raise RemoteError(
                    f"`{command.split()[0]}` on {target} timed out after {timeout_s:.0f} s"
                ) from None
            except (OSError, asyncssh.Error) as exc:
                raise RemoteError(f"SSH to {target} failed: {exc}") from None
        return Result(
            exit_status=proc.exit_status if proc.exit_status is not None else -1,
            stdout=_text(proc.stdout),
            stderr=_text(proc.stderr),
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")
