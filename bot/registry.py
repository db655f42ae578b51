"""The typed registry through which features plug in: commands, jobs, config, routes, tables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from bot.errors import UserError
from bot.store import Migration

if TYPE_CHECKING:
    from bot.config import Config, ScheduleConfig
    from bot.context import Context, JobContext, Runtime
    from bot.matrix import IncomingReaction

Handler = Callable[["Context"], Awaitable[None]]
JobFunc = Callable[["JobContext"], Awaitable[str | None]]
HttpHandler = Callable[["Runtime", web.Request], Awaitable[web.StreamResponse]]
Service = Callable[["Runtime"], Awaitable[None]]
ReactionHandler = Callable[["Runtime", "IncomingReaction"], Coroutine[Any, Any, None]]
ScheduleProvider = Callable[["Config"], list["ScheduleConfig"]]

ANYONE = "anyone"


@dataclass(frozen=True)
class Param:
    """One positional argument of a command."""

    name: str
    required: bool = True
    choices: tuple[str, ...] = ()
    rest: bool = False  # takes every remaining argument

    def usage(self) -> str:
        """How the parameter appears in a usage line."""
        label = "|".join(self.choices) if self.choices else self.name
        label += "…" if self.rest else ""
        return f"<{label}>" if self.required else f"[{label}]"


@dataclass(frozen=True)
class Command:
    """A chat command: its name (may be two words, e.g. 'jobs run'), handler and rules."""

    name: str
    handler: Handler
    help: str
    params: tuple[Param, ...] = ()
    role: str = ANYONE
    aliases: tuple[str, ...] = ()
    group: str = ""

    def usage(self, prefix: str) -> str:
        """The usage line, e.g. `!jobs run <name>`."""
        return " ".join([f"{prefix}{self.name}", *(p.usage() for p in self.params)])

    def bind(self, args: Sequence[str], prefix: str) -> list[str]:
        """Check the argument count and choices; raises UserError with the usage line."""
        required = sum(1 for p in self.params if p.required)
        takes_rest = any(p.rest for p in self.params)
        if len(args) < required or (not takes_rest and len(args) > len(self.params)):
            raise UserError(f"usage: `{self.usage(prefix)}` — {self.help}")
        for param, value in zip(self.params, args, strict=False):
            if param.choices and not param.rest and value not in param.choices:
                raise UserError(
                    f"{param.name} must be one of {', '.join(param.choices)}, not {value!r}"
                )
        return list(args)


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
    reaction_handlers: list[ReactionHandler] = field(default_factory=list)

    def command(
        self,
        name: str,
        *,
        params: Iterable[Param] = (),
        role: str = ANYONE,
        aliases: Iterable[str] = (),
        help: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a command; the handler's docstring first line is its help by default."""

        def deco(func: Handler) -> Handler:
            text = help or first_line(func.__doc__)
            self.commands.append(
                Command(name, func, text, tuple(params), role, tuple(aliases), self.name)
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

    def reaction(self, func: ReactionHandler) -> ReactionHandler:
        """Called for every reaction in a served room (e.g. ✅ to confirm)."""
        self.reaction_handlers.append(func)
        return func

    def service(self, func: Service) -> Service:
        """A long-running coroutine started with the bot and cancelled at shutdown."""
        self.services.append(func)
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

    @property
    def reaction_handlers(self) -> list[ReactionHandler]:
        """Every feature's reaction handlers."""
        return [h for r in self.routers for h in r.reaction_handlers]

    @property
    def services(self) -> list[Service]:
        """Every feature's long-running services."""
        return [s for r in self.routers for s in r.services]

    def find(self, tokens: Sequence[str]) -> tuple[Command, list[str]] | None:
        """The command named by the longest leading run of tokens, and the remaining args."""
        for n in (2, 1):
            if len(tokens) >= n:
                cmd = self.commands.get(" ".join(tokens[:n]).lower())
                if cmd is not None:
                    return cmd, list(tokens[n:])
        return None


def first_line(doc: str | None) -> str:
    """The first line of a docstring, or ''."""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
