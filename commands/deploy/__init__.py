"""`!deploy pluto`: NixOS deploys from the room, with locks, confirmation, cancel and history."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ConfigDict, Field, RootModel, field_validator

from bot import messages
from bot.args import arg, args, text
from bot.config import Section
from bot.context import Context, ReactionContext, Runtime, answer_to
from bot.durations import Duration
from bot.errors import UserError
from bot.matrix import IncomingReaction
from bot.messages import escape, human_duration, table
from bot.outbox import ref
from bot.registry import Router
from bot.services.ssh import SshClient, SshSettings, parse_target
from commands.deploy.runner import ACTIONS, DeployRun, HostSpec, Runner, RunnerSpec

log = logging.getLogger(__name__)
router = Router("deploy")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
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
router.migration(
    1,
    """
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        action TEXT NOT NULL,
        ref TEXT,
        revision TEXT,
        requested_by TEXT NOT NULL,
        room_id TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        state TEXT NOT NULL DEFAULT 'running',
        exit_code INTEGER,
        summary TEXT,
        log_excerpt TEXT
    );
    CREATE INDEX deploys_host ON deploys(host, started_at)
    """,
)


@dataclass
class Pending:
    """A deploy of protected hosts waiting for confirmation."""

    confirm_id: str
    hosts: list[HostConfig]
    action: str
    ref: str | None
    requested_by: str
    room_id: str
    prompt_outbox_id: int
    command_event: str


@dataclass
class DeployState:
    """Per-bot deploy state: running deploys by host, pending confirmations, the slot limit.

    Check-then-act: a lock (a host in `running`) or a confirmation (an id leaving `pending`)
    is taken in the same synchronous step as its check, with no await in between, so two
    requests in one sync batch or one event-loop turn cannot both pass the check.
    """

    running: dict[str, DeployRun]
    pending: dict[str, Pending]
    slots: asyncio.Semaphore
    # confirm id → (who confirmed it, its prompt's outbox id), so that a second confirmation
    # (typed or a ✅) is told who was first; the newest 200 are kept.
    confirmed: dict[str, tuple[str, int]] = field(default_factory=dict)


def _state(rt: Runtime) -> DeployState:
    state = rt.extras.get("deploy")
    if not isinstance(state, DeployState):
        state = DeployState({}, {}, asyncio.Semaphore(_deploy_config(rt).max_parallel))
        rt.extras["deploy"] = state
    return state


def _busy_error(state: DeployState, hosts: list[HostConfig]) -> UserError | None:
    """Who holds the lock of the first busy host, as the answer to the request that lost."""
    busy = [h.name for h in hosts if h.name in state.running]
    if not busy:
        return None
    run = state.running[busy[0]]
    since = datetime.fromtimestamp(run.started_wall, UTC)
    return UserError(
        f"{busy[0]} is being deployed by {run.requested_by} since {since:%H:%M} UTC "
        f"({human_duration(run.elapsed())} ago); `!deploy cancel {busy[0]}` stops it."
    )


def _deploy_config(rt: Runtime) -> DeployConfig:
    cfg = rt.config.section("deploy", DeployConfig)
    if cfg is None:
        raise UserError("Deploys are not configured (`deploy:` and `hosts:`).")
    return cfg


def _hosts(rt: Runtime) -> dict[str, HostConfig]:
    inventory = rt.config.section("hosts", Inventory)
    return {h.name: h for h in inventory.root} if inventory is not None else {}


def _spec(h: HostConfig) -> HostSpec:
    return HostSpec(h.name, h.target, h.attr or h.name, h.method, tuple(h.extra_args), h.hive)


def _runner(rt: Runtime) -> Runner:
    cfg = _deploy_config(rt)
    spec = RunnerSpec(
        cfg.runner,
        cfg.checkout,
        cfg.timeout.total_seconds(),
        cfg.progress_interval_s,
        cfg.thread_interval_s,
        cfg.silence_timeout.total_seconds(),
    )
    return Runner(rt, SshClient.from_settings(cfg.ssh), spec)


def parse_request(rt: Runtime, args: list[str]) -> tuple[list[HostConfig], str, str | None]:
    """`pluto,haumea [action] [--ref REF]` → hosts, action, ref; UserError for anything off."""
    inventory = _hosts(rt)
    words = list(args)
    ref_: str | None = None
    if "--ref" in words:
        i = words.index("--ref")
        if i + 1 >= len(words):
            raise UserError("--ref needs a branch, tag or commit, e.g. `--ref main`")
        ref_ = words[i + 1]
        del words[i : i + 2]
        if not _REF.match(ref_) or ".." in ref_:
            raise UserError(f"`{ref_}` is not a valid git ref (letters, digits, . _ / - only)")
    if not words:
        raise UserError("name the host(s) to deploy, e.g. `!deploy pluto`")
    names = [n for n in words[0].split(",") if n]
    action = words[1] if len(words) > 1 else "switch"
    if len(words) > 2:
        raise UserError(
            f"unexpected `{words[2]}`; usage: `!deploy <host>[,<host>…] [action] [--ref REF]`"
        )
    if action not in ACTIONS:
        raise UserError(f"`{action}` is not an action; choose one of {', '.join(ACTIONS)}")
    unknown = [n for n in names if n not in inventory]
    if unknown or not names:
        known = ", ".join(sorted(inventory)) or "none configured"
        raise UserError(f"Unknown host `{', '.join(unknown) or words[0]}`; known hosts: {known}.")
    return [inventory[n] for n in dict.fromkeys(names)], action, ref_


@router.command(
    "deploy",
    params=[
        arg("hosts", text),
        arg("action", text, required=False),
        args("options", text, required=False),
    ],
    role=DEPLOY_ROLE,
)
async def deploy_cmd(ctx: Context) -> None:
    """Deploy hosts: `!deploy pluto[,haumea] [switch|boot|test|dry-activate|build] [--ref REF]`."""
    hosts, action, ref_ = parse_request(ctx.rt, ctx.args)
    state = _state(ctx.rt)
    busy = _busy_error(state, hosts)
    if busy is not None:
        raise busy
    protected = [h.name for h in hosts if h.protected]
    if protected:
        cfg = _deploy_config(ctx.rt)
        confirm_id = secrets.token_hex(2)
        timeout = cfg.confirm_timeout.total_seconds()
        text = (
            f"🔐 {', '.join(protected)} {'is' if len(protected) == 1 else 'are'} protected. "
            f"Confirm `{action}` of {', '.join(h.name for h in hosts)} "
            f"with `!confirm {confirm_id}` "
            f"or a ✅ reaction here within {human_duration(timeout)}."
        )
        prompt = ctx.rt.outbox.post(ctx.room_id, answer_to(ctx.msg, text))
        state.pending[confirm_id] = Pending(
            confirm_id,
            hosts,
            action,
            ref_,
            ctx.sender,
            ctx.room_id,
            prompt,
            ctx.msg.event_id,
        )
        ctx.rt.tasks.spawn(_expire(ctx.rt, confirm_id, timeout), name=f"confirm:{confirm_id}")
        return
    # The locks are taken here, before the first await: a second request that is already
    # waiting in this loop turn sees them.
    start_deploys(ctx.rt, hosts, action, ref_, ctx.sender, ctx.room_id)
    await ctx.react("👀")


async def _expire(rt: Runtime, confirm_id: str, timeout: float) -> None:
    await asyncio.sleep(timeout)
    pending = _state(rt).pending.pop(confirm_id, None)
    if pending is not None:
        text = f"⌛ deploy request {confirm_id} expired without confirmation; nothing was deployed."
        rt.outbox.post(
            pending.room_id, messages.edit(messages.notice(text), ref(pending.prompt_outbox_id))
        )


def _confirm(rt: Runtime, confirm_id: str, user: str, room_id: str) -> str:
    # Synchronous from the check to `del state.pending[...]`: a ✅ and a `!confirm` (or two of
    # either) arriving together confirm once; the others are told who was first.
    state = _state(rt)
    pending = state.pending.get(confirm_id)
    if pending is None or pending.room_id != room_id:
        first = state.confirmed.get(confirm_id)
        if first is not None:
            raise UserError(f"Deploy request {confirm_id} was already confirmed by {first[0]}.")
        raise UserError(f"No deploy request {confirm_id} is waiting (it may have expired).")
    if not rt.permissions.has_role(user, room_id, DEPLOY_ROLE):
        raise UserError(f"Confirming needs the {DEPLOY_ROLE} role.")
    busy = _busy_error(state, pending.hosts)
    if busy is not None:
        raise UserError(f"{busy} Confirm again when it is done.")
    del state.pending[confirm_id]
    state.confirmed[confirm_id] = (user, pending.prompt_outbox_id)
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


@router.command("confirm", params=[arg("id", text)], role=DEPLOY_ROLE)
async def confirm_cmd(ctx: Context) -> None:
    """Confirm a pending deploy of protected hosts."""
    await ctx.reply("✅ " + _confirm(ctx.rt, ctx.args[0], ctx.sender, ctx.room_id))


async def _prompt_reacted_to(rt: Runtime, reaction: IncomingReaction) -> str | None:
    """The confirmation id whose prompt the reaction is on, or None."""
    state = rt.extras.get("deploy")
    if not isinstance(state, DeployState):
        return None
    prompts = {p.confirm_id: p.prompt_outbox_id for p in state.pending.values()}
    prompts.update({cid: prompt for cid, (_, prompt) in state.confirmed.items()})
    for confirm_id, prompt_outbox_id in prompts.items():
        if rt.outbox.event_id(prompt_outbox_id) == reaction.reacts_to:
            return confirm_id
    return None


@router.reaction("confirm", ("✅", "✔", "☑", "👍"), target=_prompt_reacted_to, role=DEPLOY_ROLE)
async def confirm_by_reaction(ctx: ReactionContext, confirm_id: str) -> None:
    """A ✅ on a confirmation prompt confirms it."""
    text = "✅ " + _confirm(ctx.rt, confirm_id, ctx.sender, ctx.room_id)
    ctx.rt.outbox.post(ctx.room_id, messages.notice(text))


def start_deploys(
    rt: Runtime,
    hosts: list[HostConfig],
    action: str,
    ref_: str | None,
    requested_by: str,
    room_id: str,
    confirmed_by: str | None = None,
) -> None:
    """Start one background deploy per host (they queue for the parallelism limit)."""
    state = _state(rt)
    runner = _runner(rt)
    for host in hosts:
        now = time.time()
        cur = rt.store.execute(
            "INSERT INTO deploys(host, action, ref, requested_by, room_id, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (host.name, action, ref_, requested_by, room_id, now),
        )
        deploy_id = int(cur.lastrowid or 0)
        first = messages.notice(f"🚀 deploying {host.name} ({action}) — queued")
        status = rt.outbox.post(room_id, first)
        run = DeployRun(deploy_id, _spec(host), action, ref_, requested_by, room_id, status)
        state.running[host.name] = run
        run.task = rt.tasks.spawn(_deploy(rt, runner, run), name=f"deploy:{host.name}")


async def _deploy(rt: Runtime, runner: Runner, run: DeployRun) -> None:
    state = _state(rt)
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
            rt.store.execute(
                "UPDATE deploys SET ended_at = ?, state = ?, exit_code = ?, summary = ?, "
                "log_excerpt = ? WHERE id = ?",
                (time.time(), st, code, summary, "\n".join(list(run.tail)[-15:]), run.deploy_id),
            )
            await runner.finish(run, st, code, summary)


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@router.command("deploy cancel", params=[arg("host", text)], role=DEPLOY_ROLE)
async def cancel_cmd(ctx: Context) -> None:
    """Stop a running deploy (the remote process ends too)."""
    host = ctx.args[0]
    run = _state(ctx.rt).running.get(host)
    if run is None or run.task is None:
        raise UserError(f"No deploy of {host} is running.")
    run.cancelled_by = ctx.sender
    run.task.cancel()
    await ctx.reply(f"🛑 cancelling the deploy of {host}…")


@router.command("deploy history", params=[arg("host", text, required=False)])
async def history_cmd(ctx: Context) -> None:
    """The last deploys (of one host, or all)."""
    sql = "SELECT * FROM deploys"
    params: tuple[str, ...] = ()
    if ctx.args:
        sql += " WHERE host = ?"
        params = (ctx.args[0],)
    rows = ctx.rt.store.execute(sql + " ORDER BY id DESC LIMIT 10", params).fetchall()
    if not rows:
        await ctx.reply("No deploys recorded yet.")
        return
    data = [
        [
            datetime.fromtimestamp(r["started_at"], UTC).strftime("%m-%d %H:%M"),
            r["host"],
            r["action"],
            (r["ref"] or "") + (f"@{r['revision'][:8]}" if r["revision"] else ""),
            r["requested_by"],
            r["state"],
            human_duration((r["ended_at"] or time.time()) - r["started_at"]),
        ]
        for r in rows
    ]
    text, html = table(["when (UTC)", "host", "action", "ref@rev", "by", "result", "took"], data)
    await ctx.reply(text, html)


@router.command("hosts")
async def hosts_cmd(ctx: Context) -> None:
    """The inventory, with each host's last deploy."""
    inventory = _hosts(ctx.rt)
    if not inventory:
        raise UserError("No hosts are configured (`hosts:`).")
    rows = []
    for h in inventory.values():
        last = ctx.rt.store.execute(
            "SELECT * FROM deploys WHERE host = ? ORDER BY id DESC LIMIT 1", (h.name,)
        ).fetchone()
        seen = "never"
        if last:
            ago = human_duration(time.time() - last["started_at"])
            seen = f"{last['state']} {ago} ago by {last['requested_by']}"
        rows.append([h.name, h.target, h.method, "yes" if h.protected else "", seen])
    text, html = table(["host", "target", "method", "protected", "last deploy"], rows)
    await ctx.reply(text, html)


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


@router.command("status", params=[arg("host", text)])
async def status_cmd(ctx: Context) -> None:
    """Ask a host for its NixOS version, system generation, uptime and failed units."""
    host = _hosts(ctx.rt).get(ctx.args[0])
    if host is None:
        known = ", ".join(sorted(_hosts(ctx.rt))) or "none configured"
        raise UserError(f"Unknown host `{ctx.args[0]}`; known hosts: {known}.")
    cfg = _deploy_config(ctx.rt)
    result = await SshClient.from_settings(cfg.ssh).run(
        parse_target(host.target), STATUS_SCRIPT, 30
    )
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


@router.service
async def announce_interrupted(rt: Runtime) -> None:
    """At start: deploys a restart cut off are marked interrupted and announced once."""
    # Only rows from before this start: a deploy begun since is not interrupted.
    rows = rt.store.execute(
        "SELECT * FROM deploys WHERE state = 'running' AND started_at < ?", (rt.started_at,)
    ).fetchall()
    for r in rows:
        rt.store.execute(
            "UPDATE deploys SET state = 'interrupted', ended_at = ?, summary = ? WHERE id = ?",
            (time.time(), "interrupted by a bot restart", r["id"]),
        )
        started = datetime.fromtimestamp(r["started_at"], UTC)
        rt.post(
            r["room_id"],
            f"⚠️ the deploy of {r['host']} ({r['action']}) requested by {r['requested_by']} at "
            f"{started:%Y-%m-%d %H:%M} UTC was interrupted by a bot restart; "
            "its outcome is unknown. "
            f"Check with `!status {r['host']}` and deploy again if needed.",
        )
    await asyncio.Event().wait()
