"""One deploy of one host: SSH to the runner, stream the output, keep the room posted.

Everything the user typed has been checked against the inventory before it gets here, and
every word that reaches the remote shell goes through shlex.quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot import messages
from bot.context import Runtime
from bot.errors import RemoteError
from bot.messages import escape, human_duration
from bot.outbox import ref
from bot.services.ssh import SshClient, parse_target

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

ACTIONS = ("switch", "boot", "test", "dry-activate", "build")
MAX_LOG_BYTES = 20 * 2**20  # keep head and tail beyond this
MAX_CHUNK_CHARS = 12_000
MAX_LINE_CHARS = 400
PHASES = (
    (
        re.compile(r"building the system configuration|building '/nix/store|these \d+ derivations"),
        "building",
    ),
    (re.compile(r"copying (path|\d+ paths)|copying closure"), "copying"),
    (
        re.compile(r"activating the configuration|switching to system configuration|Activating"),
        "activating",
    ),
    (re.compile(r"updating GRUB|installing bootloader|Installing bootloader"), "bootloader"),
    (
        re.compile(r"(stopping|restarting|starting) the following units"),
        "restarting units",
    ),
)


@dataclass(frozen=True)
class HostSpec:
    """What the runner needs to know about a host."""

    name: str
    target: str
    attr: str
    method: str
    extra_args: tuple[str, ...]
    hive: str


@dataclass(frozen=True)
class RunnerSpec:
    """Where deploys run: an SSH target with the infra checkout."""

    target: str
    checkout: str
    timeout_s: float
    progress_interval_s: float
    thread_interval_s: float


def deploy_command(host: HostSpec, action: str, checkout: str) -> str:
    """The shell command run on the runner; every part is quoted."""
    q = shlex.quote
    extra = " ".join(q(a) for a in host.extra_args)
    if host.method == "colmena":
        workdir = f"{checkout.rstrip('/')}/{host.hive}".rstrip("/")
        cmd = f"cd {q(workdir)} && colmena apply {q(action)} --on {q(host.name)}"
    else:
        cmd = (
            f"cd {q(checkout)} && nixos-rebuild {q(action)} --flake {q('.#' + host.attr)} "
            f"--target-host {q(host.target)} --use-substitutes"
        )
    return f"{cmd} {extra}".strip() + " 2>&1"


def checkout_command(checkout: str, ref_: str | None) -> str:
    """Update the checkout to ref (when given) and print the revision."""
    q = shlex.quote
    if ref_:
        return (
            f"cd {q(checkout)} && git fetch --quiet origin && "
            f"git checkout --quiet --detach {q(ref_)} && git rev-parse HEAD"
        )
    return f"cd {q(checkout)} && git rev-parse HEAD"


@dataclass
class DeployRun:
    """State of one running deploy; `cancel()` stops it and the remote process."""

    deploy_id: int
    host: HostSpec
    action: str
    ref: str | None
    requested_by: str
    room_id: str
    status_outbox_id: int
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    phase: str = "starting"
    revision: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=15))
    log_head: list[str] = field(default_factory=list)
    log_bytes: int = 0
    dropped: int = 0
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20000))
    pending_thread: list[str] = field(default_factory=list)
    thread_skipped: int = 0
    task: asyncio.Task[None] | None = None
    cancelled_by: str | None = None

    def add_line(self, line: str) -> None:
        """Record one output line (bounded memory however long the log)."""
        self.tail.append(line[:MAX_LINE_CHARS])
        for pattern, phase in PHASES:
            if pattern.search(line):
                self.phase = phase
                break
        if self.log_bytes < MAX_LOG_BYTES:
            self.log_head.append(line)
            self.log_bytes += len(line) + 1
        else:
            if len(self.log_tail) == self.log_tail.maxlen:
                self.dropped += 1
            self.log_tail.append(line)
        if len(self.pending_thread) < 400:
            self.pending_thread.append(line[:MAX_LINE_CHARS])
        else:
            self.thread_skipped += 1

    def full_log(self) -> str:
        """The whole output (middle elided if it exceeded the cap)."""
        parts = self.log_head
        if self.log_tail:
            note = f"… {self.dropped} lines not kept …" if self.dropped else ""
            parts = (
                [*self.log_head, note, *self.log_tail] if note else [*self.log_head, *self.log_tail]
            )
        return "\n".join(parts) + "\n"

    def elapsed(self) -> float:
        """Seconds since the deploy started."""
        return time.monotonic() - self.started

    def headline(self) -> str:
        """'deploying pluto (switch) at abc1234'."""
        at = f" at {self.revision[:12]}" if self.revision else ""
        return f"deploying {self.host.name} ({self.action}){at}"


def _status_content(run: DeployRun, final: str | None = None) -> messages.Content:
    tail = list(run.tail)[-5:] if final is None else list(run.tail)[-15:]
    head = final or f"🚀 {run.headline()} — {run.phase}, {human_duration(run.elapsed())}"
    by = f"requested by {run.requested_by}"
    text = "\n".join([head, by, *tail])
    code = escape("\n".join(tail))
    html = f"<b>{escape(head)}</b><br>{escape(by)}" + (
        f"<pre><code>{code}</code></pre>" if tail else ""
    )
    return messages.notice(text, html)


class Runner:
    """Executes deploys on the runner host and reports into the room."""

    def __init__(self, rt: Runtime, ssh: SshClient, spec: RunnerSpec) -> None:
        self.rt = rt
        self.ssh = ssh
        self.spec = spec

    def _edit_status(self, run: DeployRun, final: str | None = None) -> None:
        content = messages.edit(_status_content(run, final), ref(run.status_outbox_id))
        # Only the newest progress edit matters if the homeserver is slow.
        self.rt.outbox.post(run.room_id, content, coalesce_key=f"deploy:status:{run.deploy_id}")

    def _flush_thread(self, run: DeployRun) -> None:
        if not run.pending_thread and not run.thread_skipped:
            return
        # An event must stay well under Matrix's 64 KiB, HTML copy included.
        kept: list[str] = []
        size = 0
        for line in run.pending_thread:
            if size + len(line) > MAX_CHUNK_CHARS:
                break
            kept.append(line)
            size += len(line) + 1
        skipped = len(run.pending_thread) - len(kept) + run.thread_skipped
        run.thread_skipped = 0
        if skipped:
            kept.append(f"… {skipped} more lines (the full log follows at the end)")
        chunk = "\n".join(kept)
        run.pending_thread.clear()
        content = messages.notice(chunk, f"<pre><code>{escape(chunk)}</code></pre>")
        self.rt.outbox.post(run.room_id, messages.in_thread(content, ref(run.status_outbox_id)))

    async def execute(self, run: DeployRun) -> tuple[str, int | None, str]:
        """Run the deploy; returns (state, exit code, summary). Never raises but CancelledError."""
        import asyncssh

        target = parse_target(self.spec.target)
        reporter = asyncio.get_running_loop().create_task(self._report(run))
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                async with self.ssh.connect(target) as conn:
                    run.phase = "updating checkout" if run.ref else "reading revision"
                    rev = await conn.run(checkout_command(self.spec.checkout, run.ref), check=False)
                    out = str(rev.stdout or "").strip()
                    if rev.exit_status != 0:
                        err = (str(rev.stderr or "") or out).strip().splitlines()[-1:] or ["?"]
                        if run.ref:
                            return (
                                "failed",
                                rev.exit_status,
                                f"could not check out {run.ref}: {err[0]}",
                            )
                        out = ""
                    run.revision = out.splitlines()[-1] if out else ""
                    self.rt.store.execute(
                        "UPDATE deploys SET revision = ? WHERE id = ?",
                        (run.revision, run.deploy_id),
                    )
                    run.phase = "running"
                    command = deploy_command(run.host, run.action, self.spec.checkout)
                    log.info("deploy %d: %s", run.deploy_id, command)
                    code = await self._stream(conn, command, run)
            if code == 0:
                return "ok", 0, "done"
            return "failed", code, f"exit code {code}"
        except TimeoutError:
            return (
                "timeout",
                None,
                f"stopped after the {human_duration(self.spec.timeout_s)} timeout",
            )
        except RemoteError as exc:
            return "failed", None, str(exc)
        except (asyncssh.Error, OSError) as exc:
            return "failed", None, f"SSH connection to the runner lost: {exc or type(exc).__name__}"
        finally:
            reporter.cancel()

    async def _stream(
        self, conn: asyncssh.SSHClientConnection, command: str, run: DeployRun
    ) -> int:
        # A pty makes the remote command receive SIGHUP when we go away (cancel, timeout).
        proc = await conn.create_process(command, term_type="dumb", encoding=None)
        buffer = b""
        try:
            while True:
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    run.add_line(raw.decode("utf-8", "replace").rstrip("\r"))
            if buffer:
                run.add_line(buffer.decode("utf-8", "replace").rstrip("\r"))
            await proc.wait()
        except BaseException:
            with contextlib.suppress(Exception):
                proc.send_signal("TERM")
            proc.close()
            raise
        if proc.exit_status is None and proc.exit_signal is None:
            raise RemoteError("SSH connection to the runner lost before the deploy finished")
        return proc.exit_status if proc.exit_status is not None else -1

    async def _report(self, run: DeployRun) -> None:
        last_edit = last_thread = 0.0
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - last_edit >= self.spec.progress_interval_s:
                self._edit_status(run)
                last_edit = now
            if now - last_thread >= self.spec.thread_interval_s and run.pending_thread:
                self._flush_thread(run)
                last_thread = now

    async def finish(self, run: DeployRun, state: str, code: int | None, summary: str) -> None:
        """Final status edit, last output to the thread, and the full log as a file."""
        self._flush_thread(run)
        icon = {"ok": "✅", "cancelled": "🛑", "timeout": "⏱️"}.get(state, "❌")
        code_text = f", exit {code}" if code is not None else ""
        word = {"ok": "deployed", "cancelled": "cancelled", "timeout": "timed out"}.get(
            state, "failed"
        )
        final = (
            f"{icon} {run.host.name} ({run.action}) {word} after {human_duration(run.elapsed())}"
            f"{code_text}{' at ' + run.revision[:12] if run.revision else ''} — {summary}"
        )
        self._edit_status(run, final)
        data = run.full_log().encode()
        try:
            mxc = await self.rt.transport.upload(
                data, "text/plain", f"deploy-{run.host.name}-{run.deploy_id}.log"
            )
        except RemoteError as exc:
            log.warning("could not upload the log of deploy %d: %s", run.deploy_id, exc)
            return
        content = messages.media(
            mxc, f"deploy-{run.host.name}-{run.deploy_id}.log", len(data), "text/plain"
        )
        self.rt.outbox.post(run.room_id, messages.in_thread(content, ref(run.status_outbox_id)))
