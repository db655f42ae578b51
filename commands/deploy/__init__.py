"""`deploy pluto`: NixOS deploys from the room, with locks, confirmation, cancel and history.

State (running deploys, pending confirmations, the SSH client) lives under the `DEPLOY` key,
created by the lifespan; the `deploys` table belongs to `commands.deploy.db`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ConfigDict, Field, RootModel, field_validator

from bot import messages
from bot.args import arg, choice_label, flag, git_ref
from bot.config import Section
from bot.context import Context, ReactionContext, Runtime, answer_to
from bot.durations import Duration
from bot.errors import UserError
from bot.matrix import IncomingReaction
from bot.messages import escape, human_duration, table
from bot.outbox import ref
from bot.registry import Router, StateKey
from bot.services.ssh import SshClient, SshSettings, parse_target
from commands.deploy import db
from commands.deploy.runner import ACTIONS, DeployRun, HostSpec, Runner, RunnerSpec

log = logging.getLogger(__name__)
router = Router("deploy")
DEPLOY_ROLE = "deploy"


class HostConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    target: str
    attr: str | None = None
    method: Literal["nixos-rebuild", "colmena"] = "nixos-rebuild"
    protected: bool = False
    extra_args: list[str] = Field(default_factory=list)
    # colmena: the hive's directory inside the checkout (e.g. build/ or non-critical-infra/).
    hive: str = ""

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        parse_target(value)
        return value


class DeployConfig(Section):
    runner: str = "root@localhost"
    checkout: str
    ssh: SshSettings = SshSettings()
    timeout: Duration = timedelta(minutes=30)
    # A run that prints nothing for this long is stopped (not while it activates).
    silence_timeout: Duration = timedelta(minutes=10)
    max_parallel: int = Field(default=2, ge=1, le=32)
    confirm_timeout: Duration = timedelta(minutes=5)
    progress_interval_s: float = Field(default=3, gt=0)
    thread_interval_s: float = Field(default=5, gt=0)

    @field_validator("runner")
    @classmethod
    def _runner(cls, value: str) -> str:
        parse_target(value)
        return value


class Inventory(RootModel[list[HostConfig]]):
    """The `hosts:` list; names are unique."""

    model_config = ConfigDict(frozen=True)

    @field_validator("root")
    @classmethod
    def _unique(cls, hosts: list[HostConfig]) -> list[HostConfig]:
        names = [h.name for h in hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"host names must be unique: {', '.join(dupes)}")
        return hosts


router.section("hosts", Inventory)
router.section("deploy", DeployConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@dataclass
class Pending:
    """A deploy of protected hosts waiting for confirmation until `expires_at`."""

    confirm_id: str
    hosts: list[HostConfig]
    action: str
    ref: str | None
    requested_by: str
    room_id: str
    prompt_outbox_id: int
    command_event: str
    expires_at: datetime


@dataclass
class DeployState:
    """Per-bot deploy state: running deploys by host, pending confirmations, the slot limit,
    and the SSH client every deploy and `status` goes through (None when not configured).

    Check-then-act: a lock (a host in `running`) or a confirmation (an id leaving `pending`)
    is taken in the same synchronous step as its check, with no await in between, so two
    requests in one sync batch or one event-loop turn cannot both pass the check.
    """

    config: DeployConfig | None
    ssh: SshClient | None
    runner: Runner | None
    slots: asyncio.Semaphore
    running: dict[str, DeployRun] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # confirm id → (who confirmed it, its prompt's outbox id), so that a second confirmation
    # (typed or a ✅) is told who was first; the newest 200 are kept.
    confirmed: dict[str, tuple[str, int]] = field(default_factory=dict)

    def configured(self) -> tuple[DeployConfig, SshClient, Runner]:
        """The config, SSH client and runner; UserError when deploys are not configured."""
        if self.config is None or self.ssh is None or self.runner is None:
            raise UserError("Deploys are not configured (`deploy:` and `hosts:`).")
        return self.config, self.ssh, self.runner

    async def close(self) -> None:
        """End running deploys (their remote process with them) and close SSH connections.

        A deploy ended here keeps its row 'running': the next start reports it interrupted.
        """
        tasks = [run.task for run in self.running.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a runner that does not answer must not hold the shutdown up.
            await asyncio.wait(tasks, timeout=10)
        if self.ssh is not None:
            await self.ssh.close()


DEPLOY = StateKey("deploy", DeployState)


@router.lifespan(DEPLOY)
@asynccontextmanager
async def deploy_state(rt: Runtime) -> AsyncIterator[DeployState]:
    """Create the deploy state and report deploys a restart cut off; end them all at shutdown."""
    cfg = rt.config.section("deploy", DeployConfig)
    ssh = SshClient.from_settings(cfg.ssh) if cfg is not None else None
    runner = Runner(rt, ssh, _runner_spec(cfg)) if cfg is not None and ssh is not None else None
    state = DeployState(cfg, ssh, runner, asyncio.Semaphore(cfg.max_parallel if cfg else 1))
    announce_interrupted(rt)
    try:
        yield state
    finally:
        await state.close()


def announce_interrupted(rt: Runtime) -> None:
    """Deploys still 'running' from before this start are marked interrupted and announced.

    Runs in the lifespan, before any command of this run is handled, so every such row was
    cut off by the previous run's end (a restart or a crash).
    """
    rows = db.interrupt_running(rt.store, rt.clock.time(), "interrupted by a bot restart")
    for r in rows:
        started = datetime.fromtimestamp(r.started_at, UTC)
        rt.post(
            r.room_id,
            f"⚠️ the deploy of {r.host} ({r.action}) requested by {r.requested_by} at "
            f"{started:%Y-%m-%d %H:%M} UTC was interrupted by a bot restart; "
            "its outcome is unknown. "
            f"Check with `{rt.prefix}status {r.host}` and deploy again if needed.",
        )


def _busy_error(rt: Runtime, hosts: list[HostConfig]) -> UserError | None:
    """Who holds the lock of the first busy host, as the answer to the request that lost."""
    running = rt[DEPLOY].running
    busy = [h.name for h in hosts if h.name in running]
    if not busy:
        return None
    run = running[busy[0]]
    since = datetime.fromtimestamp(run.started_wall, UTC)
    ago = human_duration(max(0.0, rt.clock.time() - run.started_wall))
    return UserError(
        f"{busy[0]} is being deployed by {run.requested_by} since {since:%H:%M} UTC "
        f"({ago} ago); `{rt.prefix}deploy cancel {busy[0]}` stops it."
    )


def _hosts(rt: Runtime) -> dict[str, HostConfig]:
    inventory = rt.config.section("hosts", Inventory)
    return {h.name: h for h in inventory.root} if inventory is not None else {}


def _known(inventory: dict[str, HostConfig]) -> str:
    if not inventory:
        return "no hosts are configured (`hosts:`)"
    return f"known hosts: {', '.join(sorted(inventory))}"


def _spec(h: HostConfig) -> HostSpec:
    return HostSpec(h.name, h.target, h.attr or h.name, h.method, tuple(h.extra_args), h.hive)


def _runner_spec(cfg: DeployConfig) -> RunnerSpec:
    return RunnerSpec(
        cfg.runner,
        cfg.checkout,
        cfg.timeout.total_seconds(),
        cfg.progress_interval_s,
        cfg.thread_interval_s,
        cfg.silence_timeout.total_seconds(),
    )


# --- arguments --------------------------------------------------------------------------


def host_list(word: str, rt: Runtime) -> list[HostConfig]:
    """`pluto` or `pluto,haumea` → the inventory's hosts (each once, in order).

    Raises UserError naming the unknown hosts and the known ones.
    """
    inventory = _hosts(rt)
    names = [n for n in word.split(",") if n]
    unknown = [n for n in names if n not in inventory]
    if unknown or not names:
        raise UserError(f"Unknown host `{', '.join(unknown) or word}`; {_known(inventory)}.")
    return [inventory[n] for n in dict.fromkeys(names)]


def known_host(word: str, rt: Runtime) -> HostConfig:
    """One host of the inventory; UserError naming the known ones otherwise."""
    inventory = _hosts(rt)
    host = inventory.get(word)
    if host is None:
        raise UserError(f"Unknown host `{word}`; {_known(inventory)}.")
    return host


def host_with_history(word: str, rt: Runtime) -> str:
    """A host of the inventory, or one that was deployed before (since removed)."""
    if word in _hosts(rt) or db.has_history(rt.store, word):
        return word
    raise UserError(f"No deploys of `{word}` are recorded; {_known(_hosts(rt))}.")


def action(word: str, rt: Runtime) -> str:
    """One of ACTIONS (switch, boot, test, dry-activate, build)."""
    if word.lower() not in ACTIONS:
        raise UserError(f"`{word}` is not an action; choose one of {', '.join(ACTIONS)}")
    return word.lower()


_CONFIRM_ID = re.compile(r"^[0-9a-f]{4}$")


def confirm_id(word: str, rt: Runtime) -> str:
    """The 4 hex digits a confirmation prompt shows."""
    if not _CONFIRM_ID.match(word.lower()):
        raise UserError(f"`{word}` is not a confirmation id (4 hex digits, as in the prompt)")
    return word.lower()


HOSTS = arg("hosts", host_list, label="host[,host…]")
ACTION = arg("action", action, default="switch", label=choice_label(ACTIONS))
REF = flag("--ref", git_ref, metavar="REF")
HOST = arg("host", known_host)
HISTORY_HOST = arg("host", host_with_history, required=False)
CONFIRM_ID = arg("id", confirm_id)


# --- commands ---------------------------------------------------------------------------


@router.command("deploy", params=[HOSTS, ACTION, REF], role=DEPLOY_ROLE)
async def deploy_cmd(ctx: Context) -> None:
    """Deploy hosts (several at once: `pluto,haumea`) from the infra checkout, at a git ref."""
    rt = ctx.rt
    hosts, action_, ref_ = ctx[HOSTS], ctx[ACTION], ctx[REF]
    state = rt[DEPLOY]
    cfg, _, _ = state.configured()
    busy = _busy_error(rt, hosts)
    if busy is not None:
        raise busy
    protected = [h.name for h in hosts if h.protected]
    if protected:
        cid = secrets.token_hex(2)
        while cid in state.pending or cid in state.confirmed:
            cid = secrets.token_hex(2)
        timeout = cfg.confirm_timeout
        text = (
            f"🔐 {', '.join(protected)} {'is' if len(protected) == 1 else 'are'} protected. "
            f"Confirm `{action_}` of {', '.join(h.name for h in hosts)} "
            f"with `{rt.prefix}confirm {cid}` "
            f"or a ✅ reaction here within {human_duration(timeout.total_seconds())}."
        )
        prompt = rt.outbox.post(ctx.room_id, answer_to(ctx.msg, text))
        expires_at = rt.clock.now() + timeout
        state.pending[cid] = Pending(
            cid,
            hosts,
            action_,
            ref_,
            ctx.sender,
            ctx.room_id,
            prompt,
            ctx.msg.event_id,
            expires_at,
        )
        rt.tasks.spawn(_expire(rt, cid, expires_at), name=f"confirm:{cid}")
        return
    # The locks are taken here, before the first await: a second request that is already
    # waiting in this loop turn sees them.
    start_deploys(rt, hosts, action_, ref_, ctx.sender, ctx.room_id)
    await ctx.react("👀")


async def _expire(rt: Runtime, cid: str, expires_at: datetime) -> None:
    await rt.clock.sleep_until(expires_at)
    pending = rt[DEPLOY].pending.pop(cid, None)
    if pending is not None:
        text = f"⌛ deploy request {cid} expired without confirmation; nothing was deployed."
        rt.outbox.post(
            pending.room_id, messages.edit(messages.notice(text), ref(pending.prompt_outbox_id))
        )


def _confirm(rt: Runtime, cid: str, user: str, room_id: str) -> str:
    """Start a pending deploy; the caller's guard has checked the `confirm` role already."""
    # Synchronous from the check to `del state.pending[...]`: a ✅ and a typed confirm (or two of
    # either) arriving together confirm once; the others are told who was first.
    state = rt[DEPLOY]
    pending = state.pending.get(cid)
    if pending is None or pending.room_id != room_id:
        first = state.confirmed.get(cid)
        if first is not None:
            raise UserError(f"Deploy request {cid} was already confirmed by {first[0]}.")
        raise UserError(f"No deploy request {cid} is waiting (it may have expired).")
    if rt.clock.now() >= pending.expires_at:
        # Its expiry is due but has not run yet: expired all the same.
        raise UserError(f"No deploy request {cid} is waiting (it may have expired).")
    busy = _busy_error(rt, pending.hosts)
    if busy is not None:
        raise UserError(f"{busy} Confirm again when it is done.")
    del state.pending[cid]
    state.confirmed[cid] = (user, pending.prompt_outbox_id)
    while len(state.confirmed) > 200:
        del state.confirmed[next(iter(state.confirmed))]
    rt.outbox.post(room_id, messages.reaction(pending.command_event, "👀"), "m.reaction")
    start_deploys(
        rt,
        pending.hosts,
        pending.action,
        pending.ref,
        pending.requested_by,
        room_id,
        confirmed_by=user,
    )
    return f"confirmed by {user}; deploying {', '.join(h.name for h in pending.hosts)}"


@router.command("confirm", params=[CONFIRM_ID], role=DEPLOY_ROLE)
async def confirm_cmd(ctx: Context) -> None:
    """Confirm a pending deploy of protected hosts."""
    await ctx.reply("✅ " + _confirm(ctx.rt, ctx[CONFIRM_ID], ctx.sender, ctx.room_id))


async def _prompt_reacted_to(rt: Runtime, reaction: IncomingReaction) -> str | None:
    """The confirmation id whose prompt the reaction is on, or None."""
    state = rt[DEPLOY]
    prompts = {p.confirm_id: p.prompt_outbox_id for p in state.pending.values()}
    prompts.update({cid: prompt for cid, (_, prompt) in state.confirmed.items()})
    for cid, prompt_outbox_id in prompts.items():
        if rt.outbox.event_id(prompt_outbox_id) == reaction.reacts_to:
            return cid
    return None


@router.reaction("confirm", ("✅", "✔", "☑", "👍"), target=_prompt_reacted_to, role=DEPLOY_ROLE)
async def confirm_by_reaction(ctx: ReactionContext, cid: str) -> None:
    """A ✅ on a confirmation prompt confirms it."""
    text = "✅ " + _confirm(ctx.rt, cid, ctx.sender, ctx.room_id)
    ctx.rt.outbox.post(ctx.room_id, messages.notice(text))


def start_deploys(
    rt: Runtime,
    hosts: list[HostConfig],
    action_: str,
    ref_: str | None,
    requested_by: str,
    room_id: str,
    confirmed_by: str | None = None,
) -> None:
    """Start one background deploy per host (they queue for the parallelism limit)."""
    state = rt[DEPLOY]
    _, _, runner = state.configured()
    for host in hosts:
        now = rt.clock.time()
        deploy_id = db.start_deploy(rt.store, host.name, action_, ref_, requested_by, room_id, now)
        first = messages.notice(f"🚀 deploying {host.name} ({action_}) — queued")
        status = rt.outbox.post(room_id, first)
        run = DeployRun(deploy_id, _spec(host), action_, ref_, requested_by, room_id, status, now)
        state.running[host.name] = run
        run.task = rt.tasks.spawn(_deploy(rt, runner, run), name=f"deploy:{host.name}")


async def _deploy(rt: Runtime, runner: Runner, run: DeployRun) -> None:
    state = rt[DEPLOY]
    outcome: tuple[str, int | None, str] = ("failed", None, "did not start")
    try:
        async with state.slots:
            run.started = time.monotonic()
            outcome = await runner.execute(run)
    except asyncio.CancelledError:
        outcome = ("cancelled", None, f"cancelled by {run.cancelled_by or 'shutdown'}")
        if run.cancelled_by is None:
            raise  # the bot is stopping: the row stays 'running' and is marked interrupted at start
    finally:
        if run.cancelled_by is not None or not _stopping():
            state.running.pop(run.host.name, None)
            st, code, summary = outcome
            db.finish_deploy(
                rt.store,
                run.deploy_id,
                ended_at=rt.clock.time(),
                state=st,
                exit_code=code,
                summary=summary,
                log_excerpt="\n".join(list(run.tail)[-15:]),
            )
            await runner.finish(run, st, code, summary)


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@router.command("deploy cancel", params=[HOST], role=DEPLOY_ROLE)
async def cancel_cmd(ctx: Context) -> None:
    """Stop a running deploy (the remote process ends too)."""
    host = ctx[HOST].name
    run = ctx.rt[DEPLOY].running.get(host)
    if run is None or run.task is None:
        raise UserError(f"No deploy of {host} is running.")
    run.cancelled_by = ctx.sender
    run.task.cancel()
    await ctx.reply(f"🛑 cancelling the deploy of {host}…")


@router.command("deploy history", params=[HISTORY_HOST])
async def history_cmd(ctx: Context) -> None:
    """The last deploys (of one host, or all)."""
    rows = db.history(ctx.rt.store, ctx[HISTORY_HOST])
    if not rows:
        await ctx.reply("No deploys recorded yet.")
        return
    now = ctx.rt.clock.time()
    data = [
        [
            datetime.fromtimestamp(r.started_at, UTC).strftime("%m-%d %H:%M"),
            r.host,
            r.action,
            (r.ref or "") + (f"@{r.revision[:8]}" if r.revision else ""),
            r.requested_by,
            r.state,
            human_duration(max(0.0, (r.ended_at or now) - r.started_at)),
        ]
        for r in rows
    ]
    text_, html = table(["when (UTC)", "host", "action", "ref@rev", "by", "result", "took"], data)
    await ctx.reply(text_, html)


@router.command("hosts")
async def hosts_cmd(ctx: Context) -> None:
    """The inventory, with each host's last deploy."""
    inventory = _hosts(ctx.rt)
    if not inventory:
        raise UserError("No hosts are configured (`hosts:`).")
    now = ctx.rt.clock.time()
    rows = []
    for h in inventory.values():
        last = db.last_deploy(ctx.rt.store, h.name)
        seen = "never"
        if last is not None:
            ago = human_duration(max(0.0, now - last.started_at))
            seen = f"{last.state} {ago} ago by {last.requested_by}"
        rows.append([h.name, h.target, h.method, "yes" if h.protected else "", seen])
    text_, html = table(["host", "target", "method", "protected", "last deploy"], rows)
    await ctx.reply(text_, html)


# What each part prints (the fakes in tests/test_deploy_e2e.py copy these):
# - `nixos-version`: "@version@ (@codeName@)", e.g. "24.05.20241125.1925c60 (Uakari)"
#   (nixpkgs nixos/modules/installer/tools/nixos-version.sh).
# - `readlink /nix/var/nix/profiles/system`: the generation link's name, relative,
#   e.g. "system-142-link" (Nix src/libstore/profiles.cc, switchLink makes the target
#   relative when it is in the profile's directory).
# - `systemctl --failed --no-legend --plain`: one line per failed unit, columns UNIT LOAD
#   ACTIVE SUB DESCRIPTION (systemd src/systemctl/systemctl-list-units.c); without --plain
#   (older systemctl ignoring it, or a wrapper) each line starts with "●" or "*".
STATUS_SCRIPT = (
    "echo '== version'; nixos-version 2>&1; "
    "echo '== generation'; readlink /nix/var/nix/profiles/system 2>&1; "
    "echo '== uptime'; uptime 2>&1; "
    "echo '== failed'; systemctl --failed --no-legend --plain --no-pager 2>&1; true"
)


_GENERATION = re.compile(r"(?:^|/)system-(\d+)-link$")
_UNIT = re.compile(
    r"^[A-Za-z0-9:_.\\@-]+\.(?:service|socket|mount|automount|swap|target|path|timer|slice|scope|device)$"
)


def failed_unit_names(lines: list[str]) -> list[str]:
    """Unit names from `systemctl --failed --no-legend [--plain]` lines ("●" tolerated)."""
    names = []
    for line in lines:
        for word in line.split()[:2]:
            if _UNIT.match(word):
                names.append(word)
                break
    return names


@router.command("status", params=[HOST])
async def status_cmd(ctx: Context) -> None:
    """Ask a host for its NixOS version, system generation, uptime and failed units."""
    host = ctx[HOST]
    _, ssh, _ = ctx.rt[DEPLOY].configured()
    result = await ssh.run(parse_target(host.target), STATUS_SCRIPT, 30)
    sections: dict[str, list[str]] = {}
    current = ""
    for line in result.stdout.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            sections[current] = []
        elif current:
            sections[current].append(line.strip())
    failed = failed_unit_names(sections.get("failed", []))
    link = " ".join(sections.get("generation", []))
    gen = _GENERATION.search(link)
    system = f"generation {gen.group(1)} ({link})" if gen else link or "?"
    lines = [
        f"{host.name} ({host.target})",
        f"NixOS: {' '.join(sections.get('version', [])) or '?'}",
        f"system: {system}",
        f"uptime: {' '.join(sections.get('uptime', [])) or '?'}",
        f"failed units: {', '.join(failed) if failed else 'none'}",
    ]
    await ctx.reply("\n".join(lines), "<br>".join(escape(x) for x in lines))
