"""The running bot: owns every resource and every long-lived task, and tears them down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from bot.backoff import Backoff
from bot.clock import Clock, SystemClock
from bot.config import Config
from bot.context import Runtime
from bot.dispatch import Dispatcher
from bot.health import Health
from bot.http import start_http
from bot.leader import make_leadership
from bot.matrix import Transport
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.permissions import Permissions
from bot.registry import Registry
from bot.store import open_store
from bot.tasks import TaskOwner

log = logging.getLogger(__name__)


# A loop that ran this long before failing was healthy: its next failure starts the backoff anew.
HEALTHY_RUN_S = 60.0


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    metrics: Metrics,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run a long-lived loop forever: an unexpected crash is logged and the loop restarted.

    Restarts back off from 1 s to 60 s; a run that lasted `HEALTHY_RUN_S` resets the backoff.
    """
    backoff = Backoff(1.0, 60.0)
    while True:
        started = monotonic()
        try:
            await loop()
            log.warning("%s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting it", name)
            metrics.errors.labels(name).inc()
        if monotonic() - started >= HEALTHY_RUN_S:
            backoff.reset()
        await sleep(backoff.next())


class Bot:
    """One bot instance; `run()` serves until the task running it is cancelled."""

    def __init__(self, config: Config, registry: Registry, clock: Clock | None = None) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock or SystemClock()
        self.ready = asyncio.Event()
        # Set while this instance leads (after its horizon moved: see Transport.resume).
        self.leading = asyncio.Event()
        self.runtime: Runtime | None = None

    async def run(self) -> None:
        """Connect, then sync, deliver and schedule until cancelled; always cleans up."""
        core = self.config.core
        async with AsyncExitStack() as stack:
            store = await open_store(core.state, self.registry.migrations)
            stack.push_async_callback(store.close)
            metrics, health = Metrics(), Health(self.clock)
            transport = Transport(core.matrix, store, metrics, health)
            stack.push_async_callback(transport.close)
            tasks = TaskOwner()
            stack.push_async_callback(tasks.shutdown)
            rt = Runtime(
                config=self.config,
                registry=self.registry,
                store=store,
                transport=transport,
                outbox=Outbox(store, transport, metrics, self.clock),
                tasks=tasks,
                metrics=metrics,
                health=health,
                permissions=Permissions(core.permissions, transport.power_level),
                clock=self.clock,
            )
            self.runtime = rt
            leadership = make_leadership(core.state, metrics, on_notify=rt.outbox.wake)
            health.lease = leadership.state
            for spec in self.registry.states:
                rt.states[spec.key] = await stack.enter_async_context(spec.lifespan(rt))
                stack.callback(rt.states.pop, spec.key, None)
            # Handlers still running use the features' state: they end before it is closed.
            stack.push_async_callback(tasks.shutdown)
            if core.http.enabled:
                runner = await start_http(rt)
                stack.push_async_callback(runner.cleanup)
            # Both roles log in and join: a standby resolves room aliases for the webhooks it
            # accepts, and its /healthz shows whether it could reach the homeserver.
            await transport.connect()
            dispatcher = Dispatcher(rt)
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                "sync": lambda: transport.sync_forever(dispatcher.on_events),
                "outbox": rt.outbox.run,
                "scheduler": rt.scheduler.run,
            }
            for service in self.registry.services:
                loops[f"service:{getattr(service, '__qualname__', service)}"] = (
                    lambda s=service: s(rt)  # type: ignore[misc]
                )

            async def lead() -> None:
                """Everything only the leader does; cancelled when it steps down."""
                transport.resume()
                self.leading.set()
                try:
                    for hook in self.registry.lead_hooks:
                        await hook(rt)
                    async with asyncio.TaskGroup() as group:
                        for name, loop in loops.items():
                            group.create_task(supervise(name, loop, metrics), name=name)
                finally:
                    self.leading.clear()
                    # Handlers, job runs and deploys it started stop with its leadership.
                    await tasks.shutdown()

            async with asyncio.TaskGroup() as group:
                group.create_task(
                    supervise("leadership", lambda: leadership.run(lead), metrics),
                    name="leadership",
                )
                self.ready.set()
                log.info(
                    "infrabot ready as %s in %d room(s), %s",
                    core.matrix.user_id,
                    len(transport.served_rooms),
                    leadership.state.reason,
                )
