"""What handlers and jobs receive: the bot's shared resources and a per-call context."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from bot import messages
from bot.args import Bound, Param
from bot.claims import Claims
from bot.clock import Clock, SystemClock
from bot.config import Config, ScheduleConfig
from bot.errors import BotError
from bot.health import Health
from bot.matrix import IncomingMessage, IncomingReaction, Transport
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.permissions import Permissions
from bot.registry import Command, Registry, StateKey
from bot.store import Store
from bot.tasks import TaskOwner

if TYPE_CHECKING:
    from bot.scheduler import Scheduler

T = TypeVar("T")

log = logging.getLogger(__name__)

# The command message the current task is handling (set by the dispatcher in each command's
# own task), so core services such as the scheduler can tell who asked and when.
CURRENT_MESSAGE: ContextVar[IncomingMessage | None] = ContextVar("current_message", default=None)


def error_ref() -> str:
    """A short reference shown to the user and written to the log next to the traceback."""
    return secrets.token_hex(3)


@dataclass
class Runtime:
    """The resources one running bot owns; features reach everything through it."""

    config: Config
    registry: Registry
    store: Store
    transport: Transport
    outbox: Outbox
    tasks: TaskOwner
    metrics: Metrics
    health: Health
    permissions: Permissions
    # On the real clock, not `clock`: the scheduler compares a claim's start with the
    # homeserver's timestamp of a request (see bot.matrix.Transport on why).
    claims: Claims = field(default_factory=Claims)
    clock: Clock = field(default_factory=SystemClock)
    started_at: float = field(init=False)  # Unix seconds, from `clock`
    http_port: int | None = None
    scheduler: Scheduler = field(init=False)
    # Each feature's state, created by its lifespan; read through typed keys (`rt[KEY]`).
    states: dict[StateKey[Any], Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        from bot.scheduler import Scheduler  # the scheduler runs jobs with this runtime

        self.started_at = self.clock.time()
        self.scheduler = Scheduler(self)

    def __getitem__(self, key: StateKey[T]) -> T:
        """A feature's state; KeyError if its lifespan has not run (or has ended)."""
        try:
            value: T = self.states[key]
        except KeyError:
            raise KeyError(
                f"no state {key.name!r}: its feature's lifespan is not running"
            ) from None
        return value

    @property
    def prefix(self) -> str:
        """The command prefix, e.g. '!'."""
        return self.config.core.commands.prefix

    def default_room(self) -> str:
        """The first configured room's id, where unsolicited messages go by default."""
        return self.transport.resolve_room(self.config.core.matrix.rooms[0])

    async def post(self, room_id: str, text: str, html: str | None = None) -> int:
        """Queue a notice for a room through the durable outbox."""
        return await self.outbox.post(room_id, messages.notice(text, html))


def answer_to(msg: IncomingMessage, text: str, html: str | None = None) -> messages.Content:
    """A notice replying to msg, inside msg's thread when it was sent in one."""
    content = messages.notice(text, html)
    if msg.thread_root:
        return messages.in_thread(content, msg.thread_root, msg.event_id)
    return messages.as_reply(content, msg.event_id)


@dataclass
class Context:
    """One command invocation: who, where, what, and how to answer."""

    rt: Runtime
    msg: IncomingMessage
    command: Command
    args: list[str]
    bound: Bound = field(default_factory=Bound)
    # What the audit row records beside an 'ok' outcome (e.g. who a confirmation was for).
    audit_note: str | None = None

    def __getitem__(self, param: Param[T]) -> T:
        """The converted value of a declared parameter (its default when not given)."""
        value: T = self.bound.values[param.name]
        return value

    def given(self, param: Param[Any]) -> bool:
        """Whether the user gave the parameter (rather than its default applying)."""
        return param.name in self.bound.given

    @property
    def sender(self) -> str:
        """The Matrix user id that sent the command."""
        return self.msg.sender

    @property
    def room_id(self) -> str:
        """The room the command came from."""
        return self.msg.room_id

    async def reply(self, text: str, html: str | None = None) -> str:
        """Answer the command (in its thread if it was sent in one); returns the event id."""
        return await self.rt.outbox.send(self.room_id, answer_to(self.msg, text, html))

    async def thread(self, text: str, html: str | None = None) -> str:
        """Post into the thread under the command message."""
        root = self.msg.thread_root or self.msg.event_id
        content = messages.in_thread(messages.notice(text, html), root)
        return await self.rt.outbox.send(self.room_id, content)

    async def react(self, key: str) -> str:
        """React to the command message with an emoji."""
        content = messages.reaction(self.msg.event_id, key)
        return await self.rt.outbox.send(self.room_id, content, "m.reaction")

    async def edit(self, event_id: str, text: str, html: str | None = None) -> str:
        """Replace the content of a message the bot sent earlier."""
        content = messages.edit(messages.notice(text, html), event_id)
        return await self.rt.outbox.send(self.room_id, content)

    async def upload(
        self, data: bytes, filename: str, content_type: str, *, thread: bool = True
    ) -> str:
        """Upload a file or image and post it (in the command's thread by default)."""
        mxc = await self.rt.transport.upload(data, content_type, filename)
        content = messages.media(mxc, filename, len(data), content_type)
        if thread:
            content = messages.in_thread(content, self.msg.thread_root or self.msg.event_id)
        return await self.rt.outbox.send(self.room_id, content)

    def has_role(self, role: str) -> bool:
        """Whether the sender holds `role` in this room."""
        return self.rt.permissions.has_role(self.sender, self.room_id, role)

    def spawn(self, work: Coroutine[Any, Any, str | None], what: str) -> None:
        """Run work in the background; its result text, or its failure, goes to the thread."""
        self.rt.tasks.spawn(self._background(work, what), name=f"bg:{what}")

    async def _background(self, work: Coroutine[Any, Any, str | None], what: str) -> None:
        try:
            result = await work
        except BotError as exc:
            await self.thread(f"❌ {what} failed: {exc}")
        except Exception:
            ref = error_ref()
            log.exception("background work %r failed (ref %s)", what, ref)
            await self.thread(
                f"❌ {what} failed unexpectedly (ref {ref}; details in the bot's log)"
            )
        else:
            if result:
                await self.thread(result)


@dataclass
class ReactionContext:
    """One reaction that acts like a command; answers go into the reacted-to event's thread."""

    rt: Runtime
    reaction: IncomingReaction
    # What the audit row records beside an 'ok' outcome.
    audit_note: str | None = None

    @property
    def sender(self) -> str:
        """The Matrix user id that reacted."""
        return self.reaction.sender

    @property
    def room_id(self) -> str:
        """The room of the reaction."""
        return self.reaction.room_id

    async def answer(self, text: str, html: str | None = None) -> int:
        """Queue an answer in the thread of the message reacted to; returns the outbox id."""
        content = messages.in_thread(messages.notice(text, html), self.reaction.reacts_to)
        return await self.rt.outbox.post(self.room_id, content)


@dataclass
class JobContext:
    """One run of a scheduled job."""

    rt: Runtime
    schedule: ScheduleConfig
    room_id: str
    scheduled_for: float
    trigger: str  # "schedule", "missed", "manual"

    @property
    def params(self) -> dict[str, Any]:
        """The job's `params:` from config."""
        return self.schedule.params

    async def post(self, text: str, html: str | None = None) -> str:
        """Post a notice into the job's room; returns the event id once delivered."""
        return await self.rt.outbox.send(self.room_id, messages.notice(text, html))

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload a file or image into the job's room."""
        mxc = await self.rt.transport.upload(data, content_type, filename)
        content = messages.media(mxc, filename, len(data), content_type)
        return await self.rt.outbox.send(self.room_id, content)
