"""Converters for the costs commands' declared arguments: a period, an AWS service, a region.

Each is `(word, rt) -> value` and raises ValueError or UserError with what is wrong; the
dispatcher adds the usage line (see `bot.args`). "Today" is the UTC day of the runtime's clock.
"""

from __future__ import annotations

from datetime import date

from bot.context import Runtime
from commands.costs import checks
from commands.costs.dates import Window, parse_period, utc_day
from commands.costs.report import service_name

PERIOD_LABEL = "week|month|YYYY-MM-DD..YYYY-MM-DD"


def today(rt: Runtime) -> date:
    """The UTC day of the runtime's clock (Cost Explorer's days are UTC days)."""
    return utc_day(rt.clock.now())


def period(word: str, rt: Runtime) -> Window:
    """`week` (last 7 days), `month` (last 30 days) or `YYYY-MM-DD..YYYY-MM-DD` (end exclusive).

    Raises UserError as `commands.costs.dates.parse_period` does.
    """
    return parse_period(word, today(rt))


def aws_service(word: str, rt: Runtime) -> str:
    """A Cost Explorer SERVICE value from an alias (S3, EC2, RDS…) or its full name.

    Raises ValueError for an empty word or another option where the name should be.
    """
    name = word.strip()
    if not name or name.startswith("-"):
        raise ValueError('needs a service name, e.g. S3, EC2 or "Amazon CloudFront"')
    return service_name(name)


def aws_region(word: str, rt: Runtime) -> str:
    """An AWS region name such as eu-west-1 (lower-cased); ValueError for anything else."""
    return checks.region(word)
