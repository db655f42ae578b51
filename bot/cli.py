"""`infrabot run | check-config` (also `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import SecretStr

from bot.app import Bot
from bot.config import Config, ConfigError, load_config
from bot.logs import setup_logging
from bot.registry import Registry
from bot.store import StoreRefused

log = logging.getLogger(__name__)


def load_registry() -> Registry:
    """The registry of every feature listed in `commands.ROUTERS`."""
    from commands import ROUTERS  # the one place bot/ meets the feature list

    return Registry(ROUTERS)


def load(path: str, registry: Registry) -> Config:
    """Load and validate the config against the registry's sections and job types."""
    return load_config(path, registry.sections, {j.name: j.params for j in registry.jobs.values()})


def secret_values(config: Config) -> list[str]:
    """Every secret in the config, so the log filter can mask them."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif hasattr(value, "model_fields"):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(config.core)
    for section in config.features.values():
        walk(section)
    return found


async def serve(bot: Bot) -> None:
    """Run the bot until SIGINT/SIGTERM, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await bot.run()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `infrabot` console script."""
    parser = argparse.ArgumentParser(prog="infrabot", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="run the bot")
    run_p.add_argument("--config", "-c", required=True)
    check_p = sub.add_parser("check-config", help="validate a config file and exit")
    check_p.add_argument("--config", "-c", required=True)
    args = parser.parse_args(argv)

    registry = load_registry()
    try:
        config = load(args.config, registry)
    except ConfigError as exc:
        print(f"{len(exc.problems)} problem(s) in the configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.cmd == "check-config":
        print(f"{args.config}: OK")
        return 0
    setup_logging(config.core.logging.level, secret_values(config), config.core.logging.loggers)
    try:
        asyncio.run(serve(Bot(config, registry)))
    except StoreRefused as exc:
        log.error("cannot start (%s): %s", args.config, exc)
        return 1
    return 0
