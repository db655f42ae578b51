"""The typed registry through which features plug in: commands, jobs, config, routes, tables."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel

from bot.args import ArgError, Bound, Param, bind, usage_line
from bot.errors import UserError
from bot.store import Migration

if TYPE_CHECKING:
    from bot.config import Config, ScheduleConfig
    from bot.context import Context, JobContext, ReactionContext, Runtime
    from bot.matrix import IncomingReaction

T = TypeVar("T")

Handler = Callable[["Context"], Awaitable[None]]
JobFunc = Callable[["JobContext"], Awaitable[str | None]]
HttpHandler = Callable[["Runtime", web.Request], Awaitable[web.StreamResponse]]
Service = Callable[["Runtime"], Awaitable[None]]
ScheduleProvider = Callable[["Config"], list["ScheduleConfig"]]

ANYONE = "anyone"


@dataclass(frozen=True)
class Command:
    """A chat command: its name (may be two words, e.g. 'jobs run'), handler and rules."""

    name: str
    handler: Handler
    help: str
    params: tuple[Param[Any], ...] = ()
    role: str = ANYONE
    aliases: tuple[str, ...] = ()
    group: str = ""
    # For a command whose role depends on its arguments (deploy: the hosts' group), one line
    # saying who may run it, shown by `help <command>` in place of the declared role.
    who: Callable[[Runtime], str] | None = None
    # With `who`: whether a user (in a room) could run it for any argument at all, so that
    # `help` does not offer it to someone every use of it would refuse.
    offered: Callable[[Runtime, str, str], bool] | None = None

    def usage(self, prefix: str) -> str:
        """The usage line, e.g. `!jobs run <name>`."""
        return usage_line(prefix, self.name, self.params)

    def help_text(self, prefix: str) -> str:
        """The help line as shown: commands quoted in it with the default `!` get `prefix`."""
        return with_prefix(self.help, prefix)

    def bind(self, words: Sequence[str], rt: Runtime) -> Bound:
        """Convert the arguments; raises UserError with what is wrong and the usage line."""
        try:
            return bind(self.params, words, rt)
        except ArgError as exc:
            raise UserError(
                f"{exc} — usage: `{self.usage(rt.prefix)}` ({self.help_text(rt.prefix)}). "
                f"`{rt.prefix}help {self.name}` says more."
            ) from None


@dataclass(frozen=True)
class Reaction(Generic[T]):
    """A reaction that acts like a command: ✅ confirms, 🔕 silences.

    `target` says what the reacted-to event is to this feature (a pending deploy, an alert
    group) or None when the reaction is not for it; only then is the sender's role checked
    (as for the command `name`, so `permissions.commands` overrides both), the run audited
    and counted, and `handler` called.
    """

    name: str
    keys: frozenset[str]
    target: Callable[[Runtime, IncomingReaction], Awaitable[T | None]]
    handler: Callable[[ReactionContext, T], Awaitable[None]]
    role: str = ANYONE
    help: str = ""


class StateKey(Generic[T]):
    """A typed key for a feature's state on the runtime, in the manner of aiohttp's AppKey.

    `rt[KEY]` is typed `T` for mypy and raises KeyError if the feature's lifespan did not run.
    """

    __slots__ = ("name", "type")

    def __init__(self, name: str, t: type[T]) -> None:
        self.name = name
        self.type = t

    def __repr__(self) -> str:
        return f"<StateKey {self.name}: {self.type.__name__}>"


Lifespan = Callable[["Runtime"], AbstractAsyncContextManager[T]]


@dataclass(frozen=True)
class StateSpec(Generic[T]):
    """A feature's state and the async context manager that creates and closes it."""

    key: StateKey[T]
    lifespan: Lifespan[T]


@dataclass(frozen=True)
class JobType:
    """A kind of scheduled job that `schedules:` entries can name."""

    name: str
    func: JobFunc
    help: str
    params: type[BaseModel] | None = None  # validates `params:` at config load


@dataclass(frozen=True)
class HttpRoute:
    """A route that a feature adds to the bot's HTTP server."""

    method: str
    path: str
    handler: HttpHandler


@dataclass
class Router:
    """One per feature module: what it contributes, declared next to the code."""

    name: str
    commands: list[Command] = field(default_factory=list)
    jobs: list[JobType] = field(default_factory=list)
    sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    routes: list[HttpRoute] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    schedule_providers: list[ScheduleProvider] = field(default_factory=list)
    reactions: list[Reaction[Any]] = field(default_factory=list)
    states: list[StateSpec[Any]] = field(default_factory=list)
    leading: list[Service] = field(default_factory=list)

    def command(
        self,
        name: str,
        *,
        params: Iterable[Param[Any]] = (),
        role: str = ANYONE,
        aliases: Iterable[str] = (),
        help: str | None = None,
        who: Callable[[Runtime], str] | None = None,
        offered: Callable[[Runtime, str, str], bool] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a command; the handler's docstring first line is its help by default.

        `who(rt)` describes who may run it when the handler decides that (see Command.who);
        `offered(rt, user_id, room_id)` says whether `help` lists it for that user.
        """

        def deco(func: Handler) -> Handler:
            text = help or first_line(func.__doc__)
            self.commands.append(
                Command(
                    name, func, text, tuple(params), role, tuple(aliases), self.name, who, offered
                )
            )
            return func

        return deco

    def job(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        help: str = "",
    ) -> Callable[[JobFunc], JobFunc]:
        """Register a job type for `schedules:`, with an optional model for its params."""

        def deco(func: JobFunc) -> JobFunc:
            text = help or first_line(func.__doc__)
            self.jobs.append(JobType(name, func, text, params))
            return func

        return deco

    def section(self, key: str, model: type[BaseModel]) -> None:
        """Declare this feature's top-level config section."""
        self.sections[key] = model

    def route(self, method: str, path: str) -> Callable[[HttpHandler], HttpHandler]:
        """Add an HTTP route to the bot's server; its body is read with `bot.http.read_body`."""

        def deco(func: HttpHandler) -> HttpHandler:
            self.routes.append(HttpRoute(method, path, func))
            return func

        return deco

    def migration(self, version: int, sql: str) -> None:
        """Add a schema step for this feature's own tables."""
        self.migrations.append(Migration(self.name, version, sql))

    def schedules(self, func: ScheduleProvider) -> ScheduleProvider:
        """Schedules a feature adds from its own config (e.g. an hourly check); shown in !jobs."""
        self.schedule_providers.append(func)
        return func

    def reaction(
        self,
        name: str,
        keys: Iterable[str],
        *,
        target: Callable[[Runtime, IncomingReaction], Awaitable[T | None]],
        role: str = ANYONE,
        help: str | None = None,
    ) -> Callable[
        [Callable[[ReactionContext, T], Awaitable[None]]],
        Callable[[ReactionContext, T], Awaitable[None]],
    ]:
        """Register a reaction that acts like the command `name` (same role and override).

        `keys` are emoji; they match with or without the variation selector U+FE0F.
        """

        def deco(
            func: Callable[[ReactionContext, T], Awaitable[None]],
        ) -> Callable[[ReactionContext, T], Awaitable[None]]:
            text = help or first_line(func.__doc__)
            normal = frozenset(normalize_key(k) for k in keys)
            self.reactions.append(Reaction(name, normal, target, func, role, text))
            return func

        return deco

    def lifespan(self, key: StateKey[T]) -> Callable[[Lifespan[T]], Lifespan[T]]:
        """Declare the async context manager that creates `rt[key]` at start and closes it.

        Lifespans are entered in router order after the core is up (store, outbox, HTTP
        server not yet listening) and left in reverse order at shutdown; one-shot start-up
        work belongs here, before the `yield`.
        """

        def deco(func: Lifespan[T]) -> Lifespan[T]:
            self.states.append(StateSpec(key, func))
            return func

        return deco

    def service(self, func: Service) -> Service:
        """A long-running coroutine run while this instance leads (bot.leader), cancelled
        when it stops leading and at shutdown; with one instance, from start to shutdown."""
        self.services.append(func)
        return func

    def on_lead(self, func: Service) -> Service:
        """A coroutine run each time this instance becomes the leader, before it syncs
        (with one instance: once at start). For what only the leader may do once per
        takeover, e.g. announcing work the previous leader (or run) left unfinished."""
        self.leading.append(func)
        return func


class Registry:
    """All routers combined, with name clashes rejected at start."""

    def __init__(self, routers: Sequence[Router]) -> None:
        self.routers = list(routers)
        self.commands: dict[str, Command] = {}
        self.jobs: dict[str, JobType] = {}
        self.sections: dict[str, type[BaseModel]] = {}
        for router in routers:
            for cmd in router.commands:
                for key in (cmd.name, *cmd.aliases):
                    if key in self.commands:
                        raise ValueError(f"command {key!r} registered twice")
                    self.commands[key] = cmd
            for job in router.jobs:
                if job.name in self.jobs:
                    raise ValueError(f"job type {job.name!r} registered twice")
                self.jobs[job.name] = job
            for key, model in router.sections.items():
                if key in self.sections:
                    raise ValueError(f"config section {key!r} registered twice")
                self.sections[key] = model

    def unique_commands(self) -> list[Command]:
        """Each command once (aliases folded), in registration order."""
        seen: dict[str, Command] = {}
        for cmd in self.commands.values():
            seen.setdefault(cmd.name, cmd)
        return list(seen.values())

    @property
    def migrations(self) -> list[Migration]:
        """Every feature's schema steps."""
        return [m for r in self.routers for m in r.migrations]

    @property
    def routes(self) -> list[HttpRoute]:
        """Every feature's HTTP routes."""
        return [r for router in self.routers for r in router.routes]

    def feature_schedules(self, config: Config) -> list[ScheduleConfig]:
        """Schedules that features derive from their config sections."""
        return [s for r in self.routers for p in r.schedule_providers for s in p(config)]

    def reactions_for(self, key: str) -> list[Reaction[Any]]:
        """The reactions registered for an emoji (compared after normalisation)."""
        normal = normalize_key(key)
        return [x for r in self.routers for x in r.reactions if normal in x.keys]

    @property
    def states(self) -> list[StateSpec[Any]]:
        """Every feature's state lifespans, in router order."""
        return [s for r in self.routers for s in r.states]

    @property
    def services(self) -> list[Service]:
        """Every feature's long-running services."""
        return [s for r in self.routers for s in r.services]

    @property
    def lead_hooks(self) -> list[Service]:
        """Every feature's `on_lead` coroutines, in router order."""
        return [s for r in self.routers for s in r.leading]

    def find(self, tokens: Sequence[str]) -> tuple[Command, list[str]] | None:
        """The command named by the longest leading run of tokens, and the remaining args."""
        for n in (2, 1):
            if len(tokens) >= n:
                cmd = self.commands.get(" ".join(tokens[:n]).lower())
                if cmd is not None:
                    return cmd, list(tokens[n:])
        return None


# Variation selectors (U+FE0E/U+FE0F) and the skin-tone modifiers U+1F3FB..U+1F3FF (Unicode
# TR51 §2.4): a client with a default skin tone sends "👍🏽" for the 👍 a feature declared.
_KEY_MODIFIERS = re.compile("[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]")


def normalize_key(key: str) -> str:
    """A reaction key without variation selectors or skin tones ("👍🏽" is "👍")."""
    return _KEY_MODIFIERS.sub("", key).strip()


# A command quoted in a help text: a backtick, the default prefix, a word.
_QUOTED_COMMAND = re.compile(r"(?<=`)!(?=[a-z])")


def with_prefix(help_text: str, prefix: str) -> str:
    """`help_text` with each quoted command (`` `!silence …` ``) written with `prefix`.

    Help texts (docstrings) write commands with the default prefix, as the README does; the
    room sees the prefix its config sets.
    """
    return _QUOTED_COMMAND.sub(lambda _: prefix, help_text)


def first_line(doc: str | None) -> str:
    """The first line of a docstring, or ''."""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
