"""Alertmanager label matchers and durations as typed in chat."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from bot import durations
from bot.args import ArgError, Param
from bot.errors import UserError

if TYPE_CHECKING:
    from bot.context import Runtime

_MATCHER = re.compile(
    r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(.*?))\s*$'
)
MAX_SILENCE = timedelta(days=90)


@dataclass(frozen=True)
class Matcher:
    """One label matcher, as Alertmanager's API v2 takes it."""

    name: str
    op: str
    value: str

    def api(self) -> dict[str, object]:
        """The matcher in a silence body."""
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.op in ("=~", "!~"),
            "isEqual": self.op in ("=", "=~"),
        }

    def filter(self) -> str:
        """The matcher as a `filter=` query value."""
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'

    def __str__(self) -> str:
        return self.filter()


def looks_like_matcher(arg: str) -> bool:
    """Whether a chat argument is meant as matchers (has an operator)."""
    return bool(re.search(r"[=~]", arg))


def parse_matchers(text: str) -> list[Matcher]:
    """`a=b,c=~"d.*"` or `{a="b"}` → matchers; raises UserError saying what is wrong."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    parts = [p for p in _split_commas(body) if p.strip()]
    if not parts:
        raise UserError(
            'give at least one matcher, e.g. `alertname=NotUp` or `instance=~"pluto.*"`'
        )
    out = []
    for part in parts:
        m = _MATCHER.match(part)
        if m is None:
            raise UserError(
                f"`{part}` is not a matcher; write name=value, name!=value, name=~regex or "
                "name!~regex"
            )
        name, op, quoted, bare = m.groups()
        value = quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted is not None else bare
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise UserError(f"`{value}` is not a valid regular expression: {exc}") from None
        out.append(Matcher(name, op, value))
    return out


def _split_commas(text: str) -> list[str]:
    parts, current, quoted, escaped = [], "", False, False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            current += ch
            escaped = True
        elif ch == '"':
            current += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def parse_duration(text: str) -> timedelta:
    """`2h`, `1h30m`, `3d`, `1w` → timedelta; raises UserError for anything else."""
    try:
        delta = durations.parse_duration(text)
    except ValueError:
        raise UserError(
            f"`{text}` is not a duration; write e.g. 30m, 2h, 1h30m, 3d or 1w"
        ) from None
    if delta < timedelta(minutes=1):
        raise UserError("a silence must last at least 1 minute")
    if delta > MAX_SILENCE:
        raise UserError("a silence may last at most 90 days")
    return delta


# --- converters for declared arguments (bot.args) ------------------------------------------


def matcher_run(name: str, *, required: bool) -> Param[list[Matcher]]:
    """A run of words, each one matcher or several separated by commas → one flat list.

    Usage `<name…>`; a word that is not a matcher ends the run (e.g. the duration after it).
    Quotes are taken off by the command line's shell-like splitting: `instance=~"a.*"` and
    `instance=~a.*` are the same.
    """

    def convert(words: Sequence[str], rt: Runtime) -> list[Matcher]:
        out: list[Matcher] = []
        for word in words:
            if not looks_like_matcher(word):
                raise ArgError(
                    f"{name}: `{word[:80]}` is not a matcher; write name=value, name!=value, "
                    "name=~regex or name!~regex"
                )
            try:
                out += parse_matchers(word)
            except UserError as exc:
                raise ArgError(f"{name}: {exc}") from None
        return out

    return Param(name, name, convert, required, greedy=True, default=[])


def silence_length(word: str, rt: Runtime) -> timedelta:
    """How long a silence lasts: 1 minute to 90 days (`2h`, `1h30m`, `3d`)."""
    if looks_like_matcher(word):
        # A matcher where the duration goes: the run of matchers ended at it, so say why.
        try:
            parse_matchers(word)
        except UserError as exc:
            raise ArgError(f"matchers: {exc}") from None
        raise ArgError(f"say how long after the matchers, e.g. 2h, 30m or 1d, not `{word[:80]}`")
    return parse_duration(word)
