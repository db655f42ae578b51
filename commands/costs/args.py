"""`!costs` arguments: a period and an optional `--service`, every mistake told with the usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from bot.errors import UserError
from commands.costs.dates import Window, parse_period
from commands.costs.report import service_name

USAGE = "{prefix}costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service S3]"


@dataclass(frozen=True)
class CostsRequest:
    """What `!costs …` asks for: the window and, for a breakdown by usage type, a service."""

    window: Window
    service: str | None


def parse_costs_args(args: list[str], today: date, prefix: str = "!") -> CostsRequest:
    """Parse `!costs` arguments (already split like a shell). Raises UserError that ends with
    the usage line for anything it cannot read."""
    usage = f"usage: `{USAGE.format(prefix=prefix)}`"
    positional: list[str] = []
    service: str | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--service" or arg.startswith("--service="):
            value = arg.partition("=")[2] if "=" in arg else (rest.pop(0) if rest else "")
            if not value.strip() or value.startswith("--"):
                raise UserError(f"--service needs a name, e.g. `--service S3`; {usage}")
            if service is not None:
                raise UserError(f"one --service at a time; {usage}")
            service = service_name(value.strip())
        elif arg.startswith("--"):
            raise UserError(f"unknown option `{arg}`; {usage}")
        else:
            positional.append(arg)
    if len(positional) > 1:
        raise UserError(f"unexpected `{positional[1]}`; {usage}")
    try:
        window = parse_period(positional[0] if positional else None, today)
    except UserError as exc:
        raise UserError(f"{exc}; {usage}") from None
    return CostsRequest(window, service)
