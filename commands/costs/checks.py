"""Checks of single `aws:` config values, shared by its sections' validators.

Each takes the value and returns it (normalised) or raises ValueError with what is wrong, which
the config loader reports as 'file: key: message' at load time rather than at the first use.
"""

from __future__ import annotations

import re

from bot.cron import CronError, CronSchedule

# Region names as AWS spells them: us-east-1, eu-central-2, ap-southeast-3, us-gov-west-1.
REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
# A Matrix user id (spec, "User Identifiers"): @localpart:server.
_USER_ID = re.compile(r"^@[^:\s]+:\S+$")


def region(value: str) -> str:
    """An AWS region name such as eu-west-1 (lower-cased)."""
    name = value.strip().lower()
    if not REGION.match(name):
        raise ValueError(f"`{value}` is not an AWS region name (e.g. eu-west-1)")
    return name


def cron(value: str) -> str:
    """A cron expression the scheduler accepts (5 fields, or 6 with seconds first)."""
    try:
        CronSchedule(value)
    except CronError as exc:
        raise ValueError(f"`{value}`: {exc}") from None
    return value


def user_id(value: str) -> str:
    """A Matrix user id to mention, e.g. @alice:example.org."""
    if not _USER_ID.match(value):
        raise ValueError(f"`{value}` is not a Matrix user id (e.g. @alice:example.org)")
    return value
