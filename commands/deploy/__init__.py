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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from pydantic import Field, field_validator

from bot import messages
from bot.args import arg, choice_label, flag, git_ref, text
from bot.config import Section
from bot.context import Context, ReactionContext, Runtime, answer_to
from bot.durations import Duration
from bot.errors import BotError, PermissionDenied, RemoteError, UserError
from bot.matrix import IncomingReaction
from bot.messages import escape, human_duration, table
from bot.outbox import ref
from bot.registry import ANYONE, Router, StateKey
from bot.services.ssh import SshClient, SshSettings, parse_target
from commands.deploy import db
from commands.deploy.fleet import STATUS_SCRIPT, HostStatus, fleet_table, parse_status
from commands.deploy.inventory import Host, Inventory, unknown_roles
from commands.deploy.runner import (
    ACTIONS,
    DeployRun,
    HostSpec,
    Runner,
    RunnerSpec,
    node_outcomes,
    overall,
)

log = logging.getLogger(__name__)
router = Router("deploy")


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


router.section("hosts", Inventory)
router.section("deploy", DeployConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@dataclass
class Pending:
    """A deploy of protected hosts waiting for confirmation until `expires_at`."""

    confirm_id: str
    hosts: list[Host]
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
    inventory = rt.config.section("hosts", Inventory)
    if inventory is not None:
        perms = rt.config.core.permissions
        for problem in unknown_roles(inventory, [*perms.roles, perms.admin_role]):
            log.error("%s: %s; only the admin role can deploy there", rt.config.source, problem)
    try:
        yield state
    finally:
        await state.close()


@router.on_lead
async def announce_interrupted(rt: Runtime) -> None:
    """Deploys still 'running' from before this start are marked interrupted and announced.

    Runs when this instance becomes the leader, before it handles any command, so every such
    row was cut off by the previous leader's end (a restart, a crash or a failover); a standby
    starting beside a running leader leaves that leader's deploys alone.
    """
    cause = "interrupted by a bot restart or failover"
    rows = await db.interrupt_running(rt.store, rt.clock.time(), cause)
    for r in rows:
        started = datetime.fromtimestamp(r.started_at, UTC)
        await rt.post(
            r.room_id,
            f"⚠️ the deploy of {r.host} ({r.action}) requested by {r.requested_by} at "
            f"{started:%Y-%m-%d %H:%M} UTC was {cause}; "
            "its outcome is unknown. "
            f"Check with `{rt.prefix}status {r.host}` and deploy again if needed.",
        )


@router.on_lead
async def announce_dropped_requests(rt: Runtime) -> None:
    """Four-eyes requests that were waiting when the previous run (or leader) ended: the
    waiting lived in its memory, so their prompts are edited to say nothing was deployed and
    how to ask again, rather than inviting a confirmation that no one answers.

    Requests this instance itself still holds (it led before) are left waiting."""
    live = rt[DEPLOY].pending
    for req in await db.requests(rt.store):
        if req.confirm_id in live:
            continue
        await db.drop_request(rt.store, req.confirm_id)
        text = (
            f"⌛ deploy request {req.confirm_id} ({req.hosts}, {req.action}) by "
            f"{req.requested_by} was dropped by a bot restart before anyone confirmed it; "
            f"nothing was deployed. Ask again: `{rt.prefix}deploy {req.hosts} {req.action}`."
        )
        await rt.outbox.post(
            req.room_id, messages.edit(messages.notice(text), ref(req.prompt_outbox_id))
        )


def _busy_error(rt: Runtime, hosts: list[Host]) -> UserError | None:
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


def _missing_roles(rt: Runtime, user: str, room_id: str, hosts: list[Host]) -> str | None:
    """ "the deploy-critical role (pluto, mimas)" for each group role of `hosts` that `user`
    lacks (the admin role holds them all), or None when the user holds every one."""
    missing: dict[str, list[str]] = {}
    for h in hosts:
        if not rt.permissions.has_role(user, room_id, h.role):
            missing.setdefault(h.role, []).append(h.name)
    if not missing:
        return None
    return " and ".join(f"the {role} role ({', '.join(names)})" for role, names in missing.items())


def _check_may_deploy(rt: Runtime, user: str, room_id: str, hosts: list[Host], what: str) -> None:
    """PermissionDenied (audited as 'denied' by the dispatcher) unless `user` holds the role
    of every host's group; the refusal names each role needed and its hosts."""
    missing = _missing_roles(rt, user, room_id, hosts)
    if missing is not None:
        log.warning("refused %s to %s in %s: needs %s", what, user, room_id, missing)
        raise PermissionDenied(
            f"Sorry, {what} needs {missing}, which you do not have; nothing was done. "
            "This refusal is recorded."
        )


def _hosts(rt: Runtime) -> dict[str, Host]:
    inventory = rt.config.section("hosts", Inventory)
    return inventory.hosts() if inventory is not None else {}


def _known(inventory: dict[str, Host]) -> str:
    if not inventory:
        return "no hosts are configured (`hosts:`)"
    return f"known hosts: {', '.join(sorted(inventory))}"


def _spec(h: Host) -> HostSpec:
    return HostSpec(h.name, h.target, h.attr, h.method, h.extra_args, h.dir)


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


def host_list(word: str, rt: Runtime) -> list[Host]:
    """`pluto`, `pluto,haumea` or `@non-critical` (a whole group), mixed as wanted → the
    inventory's hosts (each once, in order).

    Raises UserError naming the unknown hosts or groups and the known ones.
    """
    inventory = rt.config.section("hosts", Inventory)
    groups = {g.name: g for g in inventory.resolved()} if inventory is not None else {}
    hosts = _hosts(rt)
    words = [n for n in word.split(",") if n]
    found: list[Host] = []
    unknown: list[str] = []
    for w in words:
        if w.startswith("@") and w[1:] in groups:
            found.extend(groups[w[1:]].hosts)
        elif w in hosts:
            found.append(hosts[w])
        else:
            unknown.append(w)
    bad_groups = [w for w in unknown if w.startswith("@")]
    if bad_groups:
        raise UserError(
            f"Unknown group `{', '.join(bad_groups)}`; groups: "
            f"{', '.join('@' + g for g in groups) or 'none'}."
        )
    if unknown or not words:
        raise UserError(f"Unknown host `{', '.join(unknown) or word}`; {_known(hosts)}.")
    return list({h.name: h for h in found}.values())


def known_host(word: str, rt: Runtime) -> Host:
    """One host of the inventory; UserError naming the known ones otherwise."""
    inventory = _hosts(rt)
    host = inventory.get(word)
    if host is None:
        raise UserError(f"Unknown host `{word}`; {_known(inventory)}.")
    return host


async def host_with_history(word: str, rt: Runtime) -> str:
    """A host of the inventory, or one that was deployed before (since removed); UserError
    otherwise. Checked by the handler: it reads the store, and converters do not await."""
    if word in _hosts(rt) or await db.has_history(rt.store, word):
        return word
    raise UserError(f"No deploys of `{word}` are recorded; {_known(_hosts(rt))}.")


def action(word: str, rt: Runtime) -> str:
    """One of ACTIONS (switch, boot, test, dry-activate, build).

    A host or group where the action goes (`!deploy pluto caliban`, `!deploy pluto, caliban`)
    is a set written with spaces: UserError saying how to write it, not "not an action"."""
    if word.lower() in ACTIONS:
        return word.lower()
    hosts = _hosts(rt)
    names = [n for n in word.split(",") if n]
    if names and all(n in hosts or n.startswith("@") for n in names):
        raise UserError(
            f"`{word}` is a host or group, not an action: write a set without spaces, "
            f"e.g. `{rt.prefix}deploy pluto,caliban` (then the action: {', '.join(ACTIONS)})"
        )
    raise UserError(f"`{word}` is not an action; choose one of {', '.join(ACTIONS)}")


_CONFIRM_ID = re.compile(r"^[0-9a-f]{4}$")


def confirm_id(word: str, rt: Runtime) -> str:
    """The 4 hex digits a confirmation prompt shows."""
    if not _CONFIRM_ID.match(word.lower()):
        raise UserError(f"`{word}` is not a confirmation id (4 hex digits, as in the prompt)")
    return word.lower()


HOSTS = arg("hosts", host_list, label="host[,host…|@group]")
ACTION = arg("action", action, default="switch", label=choice_label(ACTIONS))
REF = flag("--ref", git_ref, metavar="REF")
HOST = arg("host", known_host)
HISTORY_HOST = arg("host", text, required=False)
CONFIRM_ID = arg("id", confirm_id)


# --- commands ---------------------------------------------------------------------------


# The guard lets everyone through: which role a deploy needs depends on the hosts' groups,
# checked by the handler (a refusal is audited as 'denied' all the same).
@router.command(
    "deploy",
    params=[HOSTS, ACTION, REF],
    role=ANYONE,
    who=lambda rt: who_may_deploy(rt),
    offered=lambda rt, user, room: may_deploy_some_group(rt, user, room),
)
async def deploy_cmd(ctx: Context) -> None:
    """Deploy hosts (`pluto,haumea`, a group `@critical`) from the infra checkout, at a git ref."""
    rt = ctx.rt
    hosts, action_, ref_ = ctx[HOSTS], ctx[ACTION], ctx[REF]
    state = rt[DEPLOY]
    cfg, _, _ = state.configured()
    names = ",".join(h.name for h in hosts)
    _check_may_deploy(rt, ctx.sender, ctx.room_id, hosts, f"`{rt.prefix}deploy {names}`")
    busy = _busy_error(rt, hosts)
    if busy is not None:
        raise busy
    protected = [h.name for h in hosts if h.four_eyes]
    if protected:
        cid = secrets.token_hex(2)
        while cid in state.pending or cid in state.confirmed:
            cid = secrets.token_hex(2)
        timeout = cfg.confirm_timeout
        now = rt.clock.now()
        expires_at = now + timeout
        # The time alone when it is today; with the date when that is another day (a
        # request at 23:58 with 5 min to confirm), so "until" never reads as earlier.
        same_day = expires_at.date() == now.date()
        until = f"{expires_at:{'%H:%M:%S' if same_day else '%Y-%m-%d %H:%M:%S'}}"
        text = (
            f"🔐 {', '.join(protected)} {'is' if len(protected) == 1 else 'are'} protected "
            f"(four-eyes): a second person must confirm `{action_}` of "
            f"{', '.join(h.name for h in hosts)}. Anyone but {ctx.sender} holding "
            f"{_roles_phrase(hosts)} may confirm with `{rt.prefix}confirm {cid}` "
            f"or a ✅ reaction here, until {until} UTC "
            f"(within {human_duration(timeout.total_seconds())})."
        )
        prompt = await rt.outbox.post(ctx.room_id, answer_to(ctx.msg, text))
        ctx.audit_note = f"waiting for a second person: confirmation {cid}"
        # Stored before it can be confirmed: a confirmation's delete never precedes the insert.
        await db.add_request(
            rt.store, db.RequestRow(cid, ctx.room_id, prompt, ctx.sender, names, action_)
        )
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
    await start_deploys(rt, hosts, action_, ref_, ctx.sender, ctx.room_id)
    await ctx.react("👀")


async def _expire(rt: Runtime, cid: str, expires_at: datetime) -> None:
    await rt.clock.sleep_until(expires_at)
    pending = rt[DEPLOY].pending.pop(cid, None)
    if pending is not None:
        await db.drop_request(rt.store, cid)
        text = f"⌛ deploy request {cid} expired without confirmation; nothing was deployed."
        await rt.outbox.post(
            pending.room_id, messages.edit(messages.notice(text), ref(pending.prompt_outbox_id))
        )


def _roles_phrase(hosts: list[Host]) -> str:
    """ "the deploy-critical role" / "the deploy-critical and deploy roles"."""
    roles = list(dict.fromkeys(h.role for h in hosts))
    if len(roles) == 1:
        return f"the {roles[0]} role"
    return f"the {', '.join(roles[:-1])} and {roles[-1]} roles"


async def _confirm(rt: Runtime, cid: str, user: str, room_id: str, asked: str) -> tuple[str, str]:
    """Start a pending deploy confirmed by `user`; (answer, audit note).

    Four-eyes: `user` must not be the requester and must hold the role of every host's
    group (PermissionDenied otherwise, saying why; `asked` names what was refused:
    "`!confirm ab12`" or "✅ from @x"). UserError when nothing is waiting under `cid`.
    """
    # No await from the check to `del state.pending[...]`: a ✅ and a typed confirm (or two of
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
    if user == pending.requested_by:
        log.warning("refused %s to %s: their own deploy request", asked, user)
        raise PermissionDenied(
            f"{asked} refused: you requested this deploy yourself, and four-eyes means a "
            f"different person holding {_roles_phrase(pending.hosts)} confirms it. "
            "This refusal is recorded."
        )
    missing = _missing_roles(rt, user, room_id, pending.hosts)
    if missing is not None:
        log.warning("refused %s to %s: needs %s", asked, user, missing)
        raise PermissionDenied(
            f"{asked} refused: it needs {missing}, which you do not have. This refusal is recorded."
        )
    busy = _busy_error(rt, pending.hosts)
    if busy is not None:
        raise UserError(f"{busy} Confirm again when it is done.")
    del state.pending[cid]
    state.confirmed[cid] = (user, pending.prompt_outbox_id)
    while len(state.confirmed) > 200:
        del state.confirmed[next(iter(state.confirmed))]
    await db.drop_request(rt.store, cid)
    await rt.outbox.post(room_id, messages.reaction(pending.command_event, "👀"), "m.reaction")
    await start_deploys(
        rt,
        pending.hosts,
        pending.action,
        pending.ref,
        pending.requested_by,
        room_id,
        confirmed_by=user,
    )
    names = ", ".join(h.name for h in pending.hosts)
    note = (
        f"deploy {cid} of {names} ({pending.action}) requested by {pending.requested_by}, "
        f"confirmed by {user}"
    )
    return f"confirmed by {user}; deploying {names} (requested by {pending.requested_by})", note


# Guards let everyone through: who may confirm depends on the request (see _confirm).
@router.command(
    "confirm",
    params=[CONFIRM_ID],
    role=ANYONE,
    who=lambda rt: who_may_deploy(rt),
    offered=lambda rt, user, room: may_deploy_some_group(rt, user, room),
)
async def confirm_cmd(ctx: Context) -> None:
    """Confirm a pending deploy of protected hosts (another holder of their group's role)."""
    cid = ctx[CONFIRM_ID]
    answer, ctx.audit_note = await _confirm(
        ctx.rt, cid, ctx.sender, ctx.room_id, f"`{ctx.rt.prefix}confirm {cid}`"
    )
    await ctx.reply("✅ " + answer)


async def _prompt_reacted_to(rt: Runtime, reaction: IncomingReaction) -> str | None:
    """The confirmation id whose prompt the reaction is on, or None."""
    state = rt[DEPLOY]
    prompts = {p.confirm_id: p.prompt_outbox_id for p in state.pending.values()}
    prompts.update({cid: prompt for cid, (_, prompt) in state.confirmed.items()})
    for cid, prompt_outbox_id in prompts.items():
        if await rt.outbox.event_id(prompt_outbox_id) == reaction.reacts_to:
            return cid
    return None


@router.reaction("confirm", ("✅", "✔", "☑", "👍"), target=_prompt_reacted_to, role=ANYONE)
async def confirm_by_reaction(ctx: ReactionContext, cid: str) -> None:
    """A ✅ on a confirmation prompt confirms it (same rules as `confirm`)."""
    asked = f"{ctx.reaction.key} from {ctx.sender}"
    answer, ctx.audit_note = await _confirm(ctx.rt, cid, ctx.sender, ctx.room_id, asked)
    await ctx.rt.outbox.post(ctx.room_id, messages.notice("✅ " + answer))


def batches(hosts: list[Host]) -> list[list[Host]]:
    """The runs a request makes: colmena hosts of one hive together (one `colmena apply --on
    h1,h2`), every other host on its own; in the request's order. Hosts of one hive with
    different `extra_args` run apart: one command line cannot give each its own."""
    out: list[list[Host]] = []
    hives: dict[tuple[str, tuple[str, ...]], list[Host]] = {}
    for host in hosts:
        key = (host.dir, host.extra_args)
        if host.method != "colmena":
            out.append([host])
        elif key in hives:
            hives[key].append(host)
        else:
            hives[key] = [host]
            out.append(hives[key])
    return out


async def start_deploys(
    rt: Runtime,
    hosts: list[Host],
    action_: str,
    ref_: str | None,
    requested_by: str,
    room_id: str,
    confirmed_by: str | None = None,
) -> None:
    """Start one background run per batch (see `batches`); they queue for the parallelism
    limit. Each host gets its own `deploys` row and lock.

    Every lock is taken before the first await, so a second request waiting in the same loop
    turn sees them; if the rows cannot be stored (StoreUnavailable), the locks are freed.
    """
    state = rt[DEPLOY]
    _, _, runner = state.configured()
    now = rt.clock.time()
    runs: list[tuple[list[Host], DeployRun]] = []
    for batch in batches(hosts):
        spec = _spec(batch[0])
        if len(batch) > 1:
            spec = replace(spec, name=",".join(h.name for h in batch))
        # Its ids are filled in below, once stored.
        run = DeployRun(0, spec, action_, ref_, requested_by, room_id, 0, now)
        for h in batch:
            state.running[h.name] = run
        runs.append((batch, run))
    try:
        for batch, run in runs:
            run.deploy_ids = {
                h.name: await db.start_deploy(
                    rt.store, h.name, action_, ref_, requested_by, room_id, now, confirmed_by
                )
                for h in batch
            }
            run.deploy_id = run.deploy_ids[batch[0].name]
            first = messages.notice(f"🚀 deploying {run.host.name} ({action_}) — queued")
            run.status_outbox_id = await rt.outbox.post(room_id, first)
    except BaseException:
        for batch, run in runs:
            if run.task is None:
                for h in batch:
                    state.running.pop(h.name, None)
        raise
    for _, run in runs:
        run.task = rt.tasks.spawn(_deploy(rt, runner, run), name=f"deploy:{run.host.name}")


_ICONS = {"ok": "✅", "units_failed": "⚠️", "cancelled": "🛑", "timeout": "⏱️", "silent": "⏱️"}


def per_host(run: DeployRun, outcome: tuple[str, int | None, str]) -> dict[str, tuple[str, str]]:
    """(state, summary) of each host of a finished run: colmena's own per-node lines when it
    exited with several nodes, else the run's outcome for every host."""
    st, code, summary = outcome
    if len(run.nodes) > 1 and code is not None:
        return node_outcomes(run.nodes, run.action, code, list(run.verdict_lines))
    return dict.fromkeys(run.nodes, (st, summary))


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
            st, code, summary = outcome
            results = per_host(run, outcome)
            for node, (node_state, node_summary) in results.items():
                state.running.pop(node, None)
                await db.finish_deploy(
                    rt.store,
                    run.deploy_ids.get(node, run.deploy_id),
                    ended_at=rt.clock.time(),
                    state=node_state,
                    exit_code=code,
                    summary=node_summary,
                    log_excerpt="\n".join(list(run.tail)[-15:]),
                )
            if len(results) > 1:
                st = overall([r[0] for r in results.values()])
                bad = sum(1 for r in results.values() if r[0] != "ok")
                summary = f"{len(results) - bad} of {len(results)} hosts deployed"
                run.results = [f"{_ICONS.get(s, '❌')} {n}: {m}" for n, (s, m) in results.items()]
            await runner.finish(run, st, code, summary)


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@router.command(
    "deploy cancel",
    params=[HOST],
    role=ANYONE,
    who=lambda rt: who_may_deploy(rt),
    offered=lambda rt, user, room: may_deploy_some_group(rt, user, room),
)
async def cancel_cmd(ctx: Context) -> None:
    """Stop a running deploy (the remote process ends too); needs the role of its group."""
    host = ctx[HOST].name
    what = f"`{ctx.rt.prefix}deploy cancel {host}`"
    _check_may_deploy(ctx.rt, ctx.sender, ctx.room_id, [ctx[HOST]], what)
    run = ctx.rt[DEPLOY].running.get(host)
    if run is None or run.task is None:
        raise UserError(f"No deploy of {host} is running.")
    # One colmena run may deploy hosts of several groups sharing a hive: cancelling it stops
    # them all, so it needs the role of every one of them.
    inventory = _hosts(ctx.rt)
    together = [inventory[n] for n in run.nodes if n in inventory]
    _check_may_deploy(ctx.rt, ctx.sender, ctx.room_id, together, what)
    run.cancelled_by = ctx.sender
    run.task.cancel()
    await ctx.reply(f"🛑 cancelling the deploy of {run.host.name}…")


@router.command("deploy history", params=[HISTORY_HOST])
async def history_cmd(ctx: Context) -> None:
    """The last deploys (of one host, or all)."""
    host = ctx[HISTORY_HOST]
    if host is not None:
        await host_with_history(host, ctx.rt)
    rows = await db.history(ctx.rt.store, host)
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
            r.confirmed_by or "",
            r.state,
            human_duration(max(0.0, (r.ended_at or now) - r.started_at)),
        ]
        for r in rows
    ]
    text_, html = table(
        [
            "when (UTC)",
            "host",
            "action",
            "ref@rev",
            "requested by",
            "confirmed by",
            "result",
            "took",
        ],
        data,
    )
    await ctx.reply(text_, html)


def _where(method: str, dir_: str) -> str:
    return f"{method} in {dir_}/" if dir_ else method


def who_may_deploy(rt: Runtime) -> str:
    """One line: each group, its hosts, method and the role that may deploy it (and the admin
    role, which may deploy every group)."""
    inventory = rt.config.section("hosts", Inventory)
    if inventory is None:
        return "no hosts are configured (`hosts:`)"
    parts = []
    for g in inventory.resolved():
        eyes = ", four-eyes" if g.four_eyes else ""
        hosts = ", ".join(h.name for h in g.hosts)
        parts.append(f"@{g.name} ({hosts}; {_where(g.method, g.dir)}): {g.role}{eyes}")
    admin = rt.config.core.permissions.admin_role
    return f"the hosts' group role: {' · '.join(parts)} (and {admin}: every group)"


def may_deploy_some_group(rt: Runtime, user: str, room_id: str) -> bool:
    """Whether `user` holds the role of at least one group (so `help` offers deploy, confirm
    and cancel to them); False without an inventory."""
    inventory = rt.config.section("hosts", Inventory)
    if inventory is None:
        return False
    roles = {g.role for g in inventory.resolved()}
    return any(rt.permissions.has_role(user, room_id, role) for role in roles)


@router.command("hosts")
async def hosts_cmd(ctx: Context) -> None:
    """The inventory by group (method, role that may deploy it), with each host's last deploy."""
    inventory = ctx.rt.config.section("hosts", Inventory)
    if inventory is None:
        raise UserError("No hosts are configured (`hosts:`).")
    now = ctx.rt.clock.time()
    rows = []
    for g in inventory.resolved():
        for i, h in enumerate(g.hosts):
            last = await db.last_deploy(ctx.rt.store, h.name)
            seen = "never"
            if last is not None:
                ago = human_duration(max(0.0, now - last.started_at))
                seen = f"{last.state} {ago} ago by {last.requested_by}"
            group = f"@{g.name}" if i == 0 else ""
            rows.append(
                [
                    group,
                    h.name,
                    h.target,
                    _where(h.method, h.dir),
                    h.role,
                    "yes" if h.four_eyes else "",
                    seen,
                ]
            )
    headers = ["group", "host", "target", "method", "role", "four-eyes", "last deploy"]
    text_, html = table(headers, rows)
    await ctx.reply(text_, html)


STATUS_CONCURRENCY = 8
STATUS_TIMEOUT_S = 30.0

STATUS_HOSTS = arg("hosts", host_list, required=False, label="host[,host…|@group]")


async def _ask(ssh: SshClient, host: Host, slots: asyncio.Semaphore) -> HostStatus:
    """One host's status; a host that cannot be asked is a status saying why."""
    async with slots:
        try:
            result = await ssh.run(parse_target(host.target), STATUS_SCRIPT, STATUS_TIMEOUT_S)
        except BotError as exc:
            return HostStatus(host.name, error=str(exc))
    return parse_status(host.name, result.stdout)


@router.command("status", params=[STATUS_HOSTS])
async def status_cmd(ctx: Context) -> None:
    """Ask one host for its NixOS version, generation, uptime and failed units; without a host
    (or for `@group`, several) the whole fleet at once, as one table with drift flagged."""
    _, ssh, _ = ctx.rt[DEPLOY].configured()
    hosts = ctx[STATUS_HOSTS] if ctx.given(STATUS_HOSTS) else list(_hosts(ctx.rt).values())
    if not hosts:
        raise UserError("No hosts are configured (`hosts:`).")
    slots = asyncio.Semaphore(STATUS_CONCURRENCY)
    statuses = await asyncio.gather(*(_ask(ssh, h, slots) for h in hosts))
    if len(hosts) == 1 and ctx.given(STATUS_HOSTS):
        status = statuses[0]
        if status.error:
            raise RemoteError(status.error)
        lines = [f"{hosts[0].name} ({hosts[0].target})", *status.detail_lines()]
        await ctx.reply("\n".join(lines), "<br>".join(escape(x) for x in lines))
        return
    text_, html = fleet_table(statuses)
    await ctx.reply(text_, html)
