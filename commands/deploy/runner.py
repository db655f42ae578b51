"""One deploy of one host: SSH to the runner, stream the output, keep the room posted.

Everything the user typed has been checked against the inventory before it gets here, and
every word that reaches the remote shell goes through shlex.quote.

The deploy runs without a terminal and with stdin closed (bot.services.ssh.guarded), so a
prompt fails at once; cancel, timeout and a run silent for `silence_timeout` end it on the
runner. The texts recognised below are the tools' own:
- nixos-rebuild: nixpkgs pkgs/os-specific/linux/nixos-rebuild/nixos-rebuild.sh (commit
  00409d13, 24.05): `log "building the system configuration..."`, and after a failed
  switch-to-configuration `log "warning: error(s) occurred while switching to the new
  configuration"` with exit 1.
- Nix (libstore/store-api.cc, libutil/logging.cc SimpleLogger, 2.18): activities print as
  "copying 12 paths...", "copying path '/nix/store/…' to 'ssh://…'...", "building '…drv'...".
- switch-to-configuration-ng: nixpkgs pkgs/by-name/sw/switch-to-configuration-ng/src/src/
  main.rs (commit 17358245): "activating the configuration...", "stopping/restarting/
  starting the following units: a, b", "Failed to run activate script" (exit 2), and
  "warning: the following units failed: a, b" followed by `systemctl status` and exit 4 —
  the new generation is active by then.
- colmena (zhaofengli/colmena src/job.rs, src/progress/plain.rs, src/error.rs, 0.4):
  without a terminal every line is "{node:>width} | {text}": "Building pluto", "Pushing
  system closure", "Activating system profile", "Activation successful", and a failed
  activation "Activation failed: Child process exited with error code: 4".
- sudo 1.9 without a terminal: "sudo: a terminal is required to read the password; …" and
  with -n "sudo: a password is required" (older: "no tty present and no askpass program").
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
from bot.services.ssh import SshClient, end_remote, parse_target, remote_process, run_on
from bot.store import StoreUnavailable
from commands.deploy import db

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

ACTIONS = ("switch", "boot", "test", "dry-activate", "build")
MAX_LOG_BYTES = 20 * 2**20  # keep head and tail beyond this
MAX_CHUNK_CHARS = 12_000
MAX_LINE_CHARS = 400
MAX_PENDING_BYTES = 1 << 20  # an unfinished line longer than this is passed on
PHASES = (
    (re.compile(r"\| Evaluating "), "evaluating"),
    (
        re.compile(
            r"building the system configuration|building '/nix/store|"
            r"these \d+ derivations|this derivation will be built|\| Building "
        ),
        "building",
    ),
    (re.compile(r"copying (path|\d+ paths)|\| Pushing system closure"), "copying"),
    (
        re.compile(r"activating the configuration|\| Activating system profile"),
        "activating",
    ),
    (re.compile(r"updating GRUB|installing bootloader|Installing bootloader"), "bootloader"),
    (
        re.compile(r"(stopping|restarting|starting) the following units"),
        "restarting units",
    ),
)
# Phases in which a long silence is normal (a unit taking minutes to stop or start, a
# bootloader being written): only the overall timeout applies there.
QUIET_PHASES = frozenset({"activating", "bootloader", "restarting units"})
_FAILED_UNITS = re.compile(r"warning: the following units failed: (.+?)\s*$")
_ACTIVATE_BROKEN = re.compile(
    r"Failed to run activate script|Activation script snippet '[^']*' failed"
)
_COLMENA_EXIT_4 = re.compile(r"Activation failed: Child process exited with error code: 4\b")
_REBUILD_SWITCH_ERRORS = "warning: error(s) occurred while switching to the new configuration"
_SUDO_PROMPT = re.compile(
    r"sudo: a terminal is required to read the password|sudo: a password is required|"
    r"sudo: no tty present and no askpass program specified"
)
# colmena's per-goal success line (src/nix/deployment/goal.rs success_str, 0.4); "test" is
# "Activation successful (test)".
COLMENA_SUCCESS = (
    "Configuration built",
    "Activation successful",
    "Will be activated next boot",
    "Dry activation successful",
)
# A colmena plain-output line: "{node:>width} | {text}" (src/progress/plain.rs).
_NODE_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*) \| (.*)$")
_VERDICT = re.compile(
    "|".join(
        (
            _FAILED_UNITS.pattern,
            _ACTIVATE_BROKEN.pattern,
            _COLMENA_EXIT_4.pattern,
            r"Activation failed: ",
            re.escape(_REBUILD_SWITCH_ERRORS),
            r"\| (?:" + "|".join(COLMENA_SUCCESS) + ")",
        )
    )
)
SUDO_HINT = (
    "💡 sudo on the runner wants a password, and a deploy has no terminal to type it in: "
    "give the deploy user passwordless sudo (NOPASSWD), or deploy as root."
)


def silence_exceeded(phase: str, silent_for_s: float, limit_s: float) -> bool:
    """Whether a run that printed nothing for `silent_for_s` seconds should be stopped.

    Activation, bootloader and unit restarts may be quiet for long: never there.
    """
    return phase not in QUIET_PHASES and silent_for_s >= limit_s


def failed_units(lines: list[str]) -> list[str]:
    """Units named by switch-to-configuration's "warning: the following units failed: …"."""
    found: list[str] = []
    for line in lines:
        m = _FAILED_UNITS.search(line)
        if m:
            found.extend(u.strip() for u in m.group(1).split(",") if u.strip())
    return list(dict.fromkeys(found))


def classify(host: str, action: str, code: int, lines: list[str]) -> tuple[str, str]:
    """(state, summary) of a finished deploy command from its exit code and output.

    A switch whose only fault is failed units (switch-to-configuration's exit 4, seen as
    colmena's "error code: 4" or nixos-rebuild's "error(s) occurred while switching") is
    'units_failed': the new generation is active. Otherwise 0 is 'ok', anything else
    'failed'.
    """
    units = failed_units(lines)
    broken = any(_ACTIVATE_BROKEN.search(x) for x in lines)
    if units and action in ("switch", "test") and not broken:
        switch_exit_4 = any(_COLMENA_EXIT_4.search(x) for x in lines) or any(
            _REBUILD_SWITCH_ERRORS in x for x in lines
        )
        if code == 0 or switch_exit_4:
            word = "switched" if action == "switch" else "activated the configuration (test)"
            n = len(units)
            return (
                "units_failed",
                f"{host} {word}; the new generation is active, but {n} "
                f"unit{'' if n == 1 else 's'} failed: {', '.join(units)}",
            )
    if code == 0:
        return "ok", "done"
    return "failed", f"exit code {code}"


def node_outcomes(
    nodes: tuple[str, ...], action: str, code: int, lines: list[str]
) -> dict[str, tuple[str, str]]:
    """(state, summary) of each node of one `colmena apply --on a,b` that exited with `code`.

    colmena exits non-zero when any node failed, so each node is judged by its own lines:
    its goal's success line is 'ok'; failed units only (switch-to-configuration's exit 4)
    'units_failed'; otherwise 'failed' with its last "Activation failed: …" line, or, with
    no line saying how it ended, "colmena stopped before <node> finished".
    """
    texts: dict[str, list[str]] = {n: [] for n in nodes}
    for line in lines:
        m = _NODE_LINE.match(line)
        if m and m.group(1) in texts:
            texts[m.group(1)].append(m.group(2))
    out: dict[str, tuple[str, str]] = {}
    for node, own in texts.items():
        if code == 0 or any(t.startswith(COLMENA_SUCCESS) for t in own):
            out[node] = ("ok", "done")
            continue
        state, summary = classify(node, action, code, own)
        if state == "failed":
            failed = [t for t in own if t.startswith("Activation failed: ")]
            summary = failed[-1] if failed else f"colmena stopped before {node} finished"
        out[node] = (state, summary)
    return out


def overall(states: list[str]) -> str:
    """The state of a run of several hosts: the worst of theirs."""
    for state in ("failed", "timeout", "silent", "cancelled", "units_failed"):
        if state in states:
            return state
    return "ok"


@dataclass(frozen=True)
class HostSpec:
    """What the runner needs to know about a host; for colmena, `name` may be several
    nodes of one hive ("caliban,umbriel": one `colmena apply --on caliban,umbriel`)."""

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
    silence_timeout_s: float = 600


def deploy_command(host: HostSpec, action: str, checkout: str) -> str:
    """The shell command run on the runner; every part is quoted."""
    q = shlex.quote
    extra = " ".join(q(a) for a in host.extra_args)
    # The group's directory: the colmena hive, or where the flake is.
    workdir = f"{checkout.rstrip('/')}/{host.hive}".rstrip("/") if host.hive else checkout
    if host.method == "colmena":
        cmd = f"cd {q(workdir)} && colmena apply {q(action)} --on {q(host.name)}"
    else:
        cmd = (
            f"cd {q(workdir)} && nixos-rebuild {q(action)} --flake {q('.#' + host.attr)} "
            f"--target-host {q(host.target)} --use-substitutes"
        )
    return f"{cmd} {extra}".strip()


def checkout_command(checkout: str, ref_: str | None) -> str:
    """Update the checkout to ref (when given) and print the revision."""
    q = shlex.quote
    if ref_:
        return (
            f"cd {q(checkout)} && git fetch --quiet origin && "
            f"git checkout --quiet --detach {q(ref_)} && git rev-parse HEAD"
        )
    return f"cd {q(checkout)} && git rev-parse HEAD"


def _as_shown(raw: bytes) -> str:
    """A line as a terminal leaves it: a `\\r` (progress bars) returns to the line's start,
    so the text after the last one that has any is what stays on screen."""
    shown = next((seg for seg in reversed(raw.split(b"\r")) if seg), b"")
    return shown.decode("utf-8", "replace")


class OutputLines:
    """Splits a command's output bytes into lines as a terminal would show them.

    `feed` returns the lines completed by a chunk; `partial` is the unfinished last line (a
    prompt, a progress bar); `close` returns it at the end. Memory is bounded: only the
    text after the last `\\r` of the unfinished line is kept, and an unfinished line longer
    than MAX_PENDING_BYTES is passed on as a line of its own.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines that `chunk` completes (str, without line ends)."""
        *complete, pending = (self._pending + chunk).split(b"\n")
        lines = [_as_shown(raw) for raw in complete]
        # Progress redrawn with \r but never ended with \n must not grow without bound.
        self._pending = b"\r".join(pending.rsplit(b"\r", 2)[-2:])
        if len(self._pending) > MAX_PENDING_BYTES:
            lines.append(_as_shown(self._pending))
            self._pending = b""
        return lines

    def partial(self) -> str:
        """The unfinished last line as shown, at most MAX_LINE_CHARS characters."""
        return _as_shown(self._pending)[-MAX_LINE_CHARS:]

    def close(self) -> str:
        """The unfinished last line at the end of the output ('' when there is none)."""
        last, self._pending = _as_shown(self._pending), b""
        return last


@dataclass
class DeployRun:
    """State of one running deploy; `cancel()` stops it and the remote process."""

    deploy_id: int  # the first host's; `deploy_ids` has each host's row
    host: HostSpec
    action: str
    ref: str | None
    requested_by: str
    room_id: str
    status_outbox_id: int
    started_wall: float  # Unix seconds, from the runtime's clock
    started: float = field(default_factory=time.monotonic)  # for measuring only
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
    # The last line while it has no newline yet (a prompt such as "[sudo] password for x: ").
    partial: str = ""
    last_output: float = field(default_factory=time.monotonic)
    sudo_prompt: bool = False
    # Lines that decide the outcome (see classify), wherever they are in a long log.
    verdict_lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    # node → its `deploys` row; one entry unless colmena deploys several nodes at once.
    deploy_ids: dict[str, int] = field(default_factory=dict)
    # One line per host in the final status when several were deployed.
    results: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The hosts this run deploys."""
        return tuple(self.deploy_ids) or (self.host.name,)

    def add_line(self, line: str) -> None:
        """Record one output line (bounded memory however long the log)."""
        self.tail.append(line[:MAX_LINE_CHARS])
        if _VERDICT.search(line):
            self.verdict_lines.append(line)
        if _SUDO_PROMPT.search(line):
            self.sudo_prompt = True
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
    if run.partial.strip():
        tail = [*tail[-4:], run.partial] if final is None else [*tail, run.partial]
    head = final or f"🚀 {run.headline()} — {run.phase}, {human_duration(run.elapsed())}"
    by = f"requested by {run.requested_by}"
    hint = [SUDO_HINT] if final is not None and run.sudo_prompt else []
    if final is not None:
        hint = [*run.results, *hint]
    text = "\n".join([head, *hint, by, *tail])
    code = escape("\n".join(tail))
    html = (
        f"<b>{escape(head)}</b><br>"
        + "".join(f"{escape(h)}<br>" for h in hint)
        + escape(by)
        + (f"<pre><code>{code}</code></pre>" if tail else "")
    )
    return messages.notice(text, html)


class Runner:
    """Executes deploys on the runner host and reports into the room."""

    def __init__(self, rt: Runtime, ssh: SshClient, spec: RunnerSpec) -> None:
        self.rt = rt
        self.ssh = ssh
        self.spec = spec

    async def _edit_status(self, run: DeployRun, final: str | None = None) -> None:
        content = messages.edit(_status_content(run, final), ref(run.status_outbox_id))
        # Only the newest progress edit matters if the homeserver is slow.
        await self.rt.outbox.post(
            run.room_id, content, coalesce_key=f"deploy:status:{run.deploy_id}"
        )

    async def _flush_thread(self, run: DeployRun) -> None:
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
        await self.rt.outbox.post(
            run.room_id, messages.in_thread(content, ref(run.status_outbox_id))
        )

    async def execute(self, run: DeployRun) -> tuple[str, int | None, str]:
        """Run the deploy; returns (state, exit code, summary). Never raises but CancelledError."""
        import asyncssh

        target = parse_target(self.spec.target)
        reporter = asyncio.get_running_loop().create_task(self._report(run))
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                async with self.ssh.connect(target) as conn:
                    run.phase = "updating checkout" if run.ref else "reading revision"
                    rev = await run_on(conn, checkout_command(self.spec.checkout, run.ref))
                    out = rev.stdout.strip()
                    if rev.exit_status != 0:
                        err = (rev.stderr or out).strip().splitlines()[-1:] or ["?"]
                        if run.ref:
                            return (
                                "failed",
                                rev.exit_status,
                                f"could not check out {run.ref}: {err[0]}",
                            )
                        out = ""
                    run.revision = out.splitlines()[-1] if out else ""
                    for deploy_id in run.deploy_ids.values() or [run.deploy_id]:
                        await db.set_revision(self.rt.store, deploy_id, run.revision)
                    run.phase = "running"
                    command = deploy_command(run.host, run.action, self.spec.checkout)
                    log.info("deploy %d: %s", run.deploy_id, command)
                    code = await self._stream(conn, command, run)
            if code is None:
                return (
                    "silent",
                    None,
                    f"stopped after {human_duration(self.spec.silence_timeout_s)} without output "
                    f"while {run.phase}",
                )
            state, summary = classify(run.host.name, run.action, code, list(run.verdict_lines))
            return state, code, summary
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
    ) -> int | None:
        """The command's exit code, or None when it was stopped for its silence."""
        async with remote_process(conn, command, merge_stderr=True) as proc:
            run.last_output = time.monotonic()
            reader = asyncio.get_running_loop().create_task(self._read(proc, run))
            watch = asyncio.get_running_loop().create_task(self._watch_silence(run))
            try:
                done, _ = await asyncio.wait({reader, watch}, return_when="FIRST_COMPLETED")
            finally:
                watch.cancel()
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            if reader not in done:
                end_remote(proc)
                return None
            reader.result()
            await proc.wait_closed()
        if proc.exit_status is None and proc.exit_signal is None:
            raise RemoteError("SSH connection to the runner lost before the deploy finished")
        return proc.exit_status if proc.exit_status is not None else -1

    @staticmethod
    async def _read(proc: asyncssh.SSHClientProcess[bytes], run: DeployRun) -> None:
        lines = OutputLines()
        while chunk := await proc.stdout.read(65536):
            run.last_output = time.monotonic()
            for line in lines.feed(chunk):
                run.add_line(line)
            run.partial = lines.partial()
        last = lines.close()
        if last:
            run.add_line(last)
        run.partial = ""

    async def _watch_silence(self, run: DeployRun) -> None:
        limit = self.spec.silence_timeout_s
        while True:
            silent_for = time.monotonic() - run.last_output
            if silence_exceeded(run.phase, silent_for, limit):
                return
            # Wake when the limit would be reached; in a quiet phase, check now and then
            # whether it has ended.
            wait = 1.0 if run.phase in QUIET_PHASES else min(limit - silent_for, 1.0)
            await asyncio.sleep(max(0.05, wait))

    async def _report(self, run: DeployRun) -> None:
        last_edit = last_thread = 0.0
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            try:
                if now - last_edit >= self.spec.progress_interval_s:
                    await self._edit_status(run)
                    last_edit = now
                if now - last_thread >= self.spec.thread_interval_s and run.pending_thread:
                    await self._flush_thread(run)
                    last_thread = now
            except StoreUnavailable as exc:
                # Progress waits (the output is kept in the run); the deploy itself goes on.
                log.warning("deploy %d: cannot queue progress: %s", run.deploy_id, exc)

    async def finish(self, run: DeployRun, state: str, code: int | None, summary: str) -> None:
        """Final status edit, last output to the thread, and the full log as a file."""
        if run.partial:
            # A prompt the command was left waiting at belongs to the record too.
            run.add_line(run.partial)
            run.partial = ""
        await self._flush_thread(run)
        code_text = f", exit {code}" if code is not None else ""
        at = f" at {run.revision[:12]}" if run.revision else ""
        if state == "units_failed":
            final = (
                f"⚠️ {summary} — {run.action} after {human_duration(run.elapsed())}{code_text}{at}"
            )
        else:
            icon = {"ok": "✅", "cancelled": "🛑", "timeout": "⏱️", "silent": "⏱️"}.get(state, "❌")
            word = {
                "ok": "deployed",
                "cancelled": "cancelled",
                "timeout": "timed out",
                "silent": "stopped",
            }.get(state, "failed")
            final = (
                f"{icon} {run.host.name} ({run.action}) {word} after "
                f"{human_duration(run.elapsed())}{code_text}{at} — {summary}"
            )
        await self._edit_status(run, final)
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
        await self.rt.outbox.post(
            run.room_id, messages.in_thread(content, ref(run.status_outbox_id))
        )
