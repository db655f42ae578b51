"""Declared command arguments: typed parameters with converters, flags, and usage lines.

A command lists its parameters; the dispatcher turns the words after the command name into
converted values before the handler runs, and answers a bad argument from one place with what
was wrong and the usage line. Handlers read values with `ctx[PARAM]`, typed by mypy.

    HOSTS = arg("hosts", host_list)              # <hosts>       one word → converter's type
    ACTION = arg("action", choice(*ACTIONS), default="switch")   # [switch|boot|…]
    MATCHERS = args("matchers", matcher)         # <matchers…>   one or more words → list
    COMMENT = rest("comment")                    # [comment…]    the remaining words as text
    REF = flag("--ref", git_ref, metavar="REF")  # [--ref REF]   anywhere in the command

After `--`, every word is positional text, even one that starts with `--`.

A converter takes the word and the runtime (for lookups such as the inventory) and returns the
value, or raises ValueError / UserError with a reason a person can act on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bot.durations import parse_duration
from bot.errors import UserError

if TYPE_CHECKING:
    from bot.context import Runtime

T = TypeVar("T")
E = TypeVar("E")

Converter = Callable[[str, "Runtime"], T]


class ArgError(UserError):
    """One argument is wrong; the dispatcher adds the usage line."""


@dataclass(frozen=True, eq=False)
class Param(Generic[T]):
    """One declared parameter; build it with `arg`, `args`, `rest`, `flag` or `switch`."""

    name: str
    label: str  # as shown in the usage line, without brackets
    convert: Callable[[Sequence[str], Runtime], T]
    required: bool = True
    greedy: bool = False  # takes a run of words (args, rest)
    flag: str | None = None  # "--ref": given by name, anywhere
    takes_value: bool = True  # False for a switch
    default: Any = None

    def usage(self) -> str:
        """How the parameter appears in a usage line."""
        if self.flag is not None:
            inner = f"{self.flag} {self.label}" if self.takes_value else self.flag
            return f"<{inner}>" if self.required else f"[{inner}]"
        label = self.label + ("…" if self.greedy else "")
        return f"<{label}>" if self.required else f"[{label}]"


def _one(name: str, convert: Converter[T]) -> Callable[[Sequence[str], Runtime], T]:
    def take(words: Sequence[str], rt: Runtime) -> T:
        return _converted(name, words[0], convert, rt)

    return take


def _converted(name: str, word: str, convert: Converter[T], rt: Runtime) -> T:
    try:
        return convert(word, rt)
    except ArgError:
        raise
    except (ValueError, UserError) as exc:
        raise ArgError(f"{name}: {exc}") from None


def arg(
    name: str,
    convert: Converter[T],
    *,
    required: bool | None = None,
    default: T | None = None,
    label: str | None = None,
) -> Param[T]:
    """A positional parameter of one word; optional when it has a default or `required=False`."""
    needed = default is None if required is None else required
    return Param(name, label or name, _one(name, convert), needed, default=default)


def args(
    name: str, convert: Converter[E], *, required: bool = True, label: str | None = None
) -> Param[list[E]]:
    """A run of words each converted; stops at the first word the converter refuses."""

    def take(words: Sequence[str], rt: Runtime) -> list[E]:
        return [_converted(name, w, convert, rt) for w in words]

    return Param(name, label or name, take, required, greedy=True, default=[])


def rest(name: str, *, required: bool = False) -> Param[str]:
    """Every remaining word, as one text (a comment, a message)."""

    def take(words: Sequence[str], rt: Runtime) -> str:
        return " ".join(words)

    return Param(name, name, take, required, greedy=True, default="")


def flag(option: str, convert: Converter[T], *, metavar: str, default: T | None = None) -> Param[T]:
    """An option with a value, `--ref REF`, given anywhere in the command."""
    name = option.lstrip("-")
    return Param(name, metavar, _one(option, convert), False, flag=option, default=default)


def switch(option: str) -> Param[bool]:
    """An option without a value, `--all`; True when given."""

    def take(words: Sequence[str], rt: Runtime) -> bool:
        return True

    return Param(option.lstrip("-"), "", take, False, flag=option, takes_value=False, default=False)


@dataclass
class Bound:
    """The converted values of one command run, keyed by parameter."""

    values: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)


def bind(params: Sequence[Param[Any]], words: Sequence[str], rt: Runtime) -> Bound:
    """Convert `words` against `params`; raises ArgError saying what is wrong."""
    out = Bound()
    flags = {p.flag: p for p in params if p.flag is not None}
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        option, eq, inline = word.partition("=")
        if flags and word == "--":
            # As in a shell: what follows is text even where it starts with `--`.
            positional.extend(words[i + 1 :])
            break
        # A command that declares no options takes `--words` as ordinary words.
        if flags and word.startswith("--") and len(word) > 2:
            param = flags.get(option)
            if param is None:
                known = ", ".join(sorted(flags)) or "none"
                raise ArgError(f"unknown option `{option}` (options: {known})")
            if param.name in out.given:
                # The second value would silently replace the first: say so instead.
                raise ArgError(f"{option} given twice; give it once")
            if param.takes_value:
                if eq and inline:
                    value = inline
                elif eq:
                    raise ArgError(f"{option}= has no value ({param.label})")
                elif i + 1 < len(words):
                    i += 1
                    value = words[i]
                else:
                    raise ArgError(f"{option} needs a value ({param.label})")
                out.values[param.name] = param.convert([value], rt)
            else:
                if eq:
                    raise ArgError(f"{option} takes no value")
                out.values[param.name] = param.convert([], rt)
            out.given.add(param.name)
        else:
            positional.append(word)
        i += 1
    slots = [p for p in params if p.flag is None]
    for n, param in enumerate(slots):
        if param.greedy:
            # A greedy parameter leaves the words the later ones need.
            after = slots[n + 1 :]
            keep = sum(1 for p in after if p.required and not p.greedy)
            if any(p.greedy for p in after):
                taken = _greedy_prefix(param, positional[: len(positional) - keep], rt)
                if taken == 0 and param.required and positional:
                    # A required run takes at least one word; if it refuses it, why is the
                    # answer, rather than "missing" (then the later ones say what is missing).
                    param.convert(positional[:1], rt)
                    taken = 1
            else:
                taken = len(positional) - keep
            chunk, positional = positional[:taken], positional[taken:]
            if not chunk:
                if param.required:
                    raise ArgError(f"missing {param.name}")
                continue
            out.values[param.name] = param.convert(chunk, rt)
            out.given.add(param.name)
            continue
        if not positional:
            if param.required:
                raise ArgError(f"missing {param.name}")
            continue
        out.values[param.name] = param.convert(positional[:1], rt)
        out.given.add(param.name)
        positional = positional[1:]
    if positional:
        raise ArgError(f"unexpected `{positional[0]}`")
    for param in params:
        out.values.setdefault(param.name, param.default)
    return out


def _greedy_prefix(param: Param[Any], words: Sequence[str], rt: Runtime) -> int:
    """How many leading words the greedy parameter accepts, one by one."""
    n = 0
    while n < len(words):
        try:
            param.convert(words[n : n + 1], rt)
        except UserError:
            break
        n += 1
    return n


# --- converters ---------------------------------------------------------------------------


def text(word: str, rt: Runtime) -> str:
    """The word as it is."""
    return word


def integer(low: int, high: int) -> Converter[int]:
    """A whole number in [low, high]."""

    def convert(word: str, rt: Runtime) -> int:
        try:
            value = int(word)
        except ValueError:
            raise ValueError(f"`{word}` is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value

    return convert


def choice(*options: str) -> Converter[str]:
    """One of the given words (case-insensitive)."""

    def convert(word: str, rt: Runtime) -> str:
        if word.lower() not in options:
            raise ValueError(f"`{word}` is not one of {', '.join(options)}")
        return word.lower()

    return convert


def duration(word: str, rt: Runtime) -> timedelta:
    """`30m`, `2h`, `1h30m`, `3d`, `1w`."""
    return parse_duration(word)


_GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def git_ref(word: str, rt: Runtime) -> str:
    """A branch, tag or commit: letters, digits, `. _ / -`, no `..`."""
    if not _GIT_REF.match(word) or ".." in word or word.endswith((".lock", "/")):
        raise ValueError(f"`{word}` is not a valid git ref (letters, digits, . _ / - only)")
    return word


def usage_line(prefix: str, name: str, params: Sequence[Param[Any]]) -> str:
    """`!deploy <hosts> [switch|boot|…] [--ref REF]`."""
    positional = [p.usage() for p in params if p.flag is None]
    options = [p.usage() for p in params if p.flag is not None]
    return " ".join([f"{prefix}{name}", *positional, *options])


def choice_label(options: Sequence[str]) -> str:
    """`switch|boot|test` for a usage line."""
    return "|".join(options)
