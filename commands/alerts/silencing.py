"""What a silence from chat matches, and what Alertmanager says it stored.

Pure functions; the handlers in `commands.alerts` do the HTTP calls.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from commands.alerts.matchers import Matcher
from commands.alerts.payload import Notification

if TYPE_CHECKING:
    from bot.context import Runtime

# Alertmanager's silence ids are UUIDs (api/v2/openapi.yaml, 0.25: `silenceID` is
# `format: uuid`); chat may give a prefix of one.
_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
# RE2 (Alertmanager's regex engine) takes a backslash before any punctuation as a literal.
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")
# More combinations than this are not checked for an exact cover.
_MAX_COMBINATIONS = 10_000

MatcherKey = tuple[tuple[str, str, bool, bool], ...]


def could_be_silence_id(text: str) -> bool:
    """Whether `text` is a UUID or a prefix of one (lower or upper case hex)."""
    if not 0 < len(text) <= len(_UUID_SHAPE):
        return False
    for char, shape in zip(text.lower(), _UUID_SHAPE, strict=False):
        if shape == "-":
            if char != "-":
                return False
        elif char not in "0123456789abcdef":
            return False
    return True


def silence_id(word: str, rt: Runtime) -> str:
    """A silence id or a prefix of one, lower-cased; anything else is refused before any
    call (the id goes into Alertmanager's URL path)."""
    if not could_be_silence_id(word):
        raise ValueError(
            f"`{word[:80]}` cannot be a silence id: Alertmanager's ids are UUIDs "
            f"(like 3f2a9c1e-…); `{rt.prefix}silences` lists the active ones"
        )
    return word.lower()


def _literal(value: str) -> str:
    return _RE2_SPECIAL.sub(r"\\\1", value)


def group_matchers(n: Notification) -> list[Matcher] | str:
    """Matchers that match the group's alerts only, or why there are none (a sentence).

    A group with group labels is those labels (what Alertmanager grouped it by). A group
    without (`group_by: []`: every alert of the route in one group) would be silenced far
    wider by its common labels alone (`job="node"`), so its alerts are named: the common labels,
    plus for each label that differs `name=~"v1|v2"` (`""` for an alert without it). That is
    exact only when every combination of those values is one of the group's alerts; otherwise,
    or when Alertmanager left alerts out (truncatedAlerts), the answer is a refusal.
    """
    if n.groupLabels:
        return [Matcher(name, "=", value) for name, value in sorted(n.groupLabels.items())]
    if n.truncatedAlerts:
        return (
            "the group has no group labels (Alertmanager's group_by is empty) and "
            f"{n.truncatedAlerts} of its alerts were left out of the notification, so they "
            "cannot all be named"
        )
    sets = {tuple(sorted(a.labels.items())) for a in n.alerts}
    # The labels all of them share (Alertmanager's commonLabels, taken from the alerts).
    common = dict(next(iter(sets)))
    for labels in sets:
        common = {k: v for k, v in common.items() if dict(labels).get(k) == v}
    varying = sorted({k for labels in sets for k, _ in labels} - common.keys())
    matchers = [Matcher(name, "=", value) for name, value in sorted(common.items())]
    if not varying:
        return matchers or "the group's alerts have no labels to match on"
    values = {k: sorted({dict(labels).get(k, "") for labels in sets}) for k in varying}
    combos = {tuple(dict(labels).get(k, "") for k in varying) for labels in sets}
    total = math.prod(len(v) for v in values.values())
    if total > _MAX_COMBINATIONS or total != len(combos):
        return (
            "the group has no group labels (Alertmanager's group_by is empty) and its alerts "
            f"differ in {', '.join(varying)} at once, so no matchers cover exactly them"
        )
    for name in varying:
        matchers.append(Matcher(name, "=~", "|".join(_literal(v) for v in values[name])))
    return matchers


def encode_plan(plan: list[Matcher] | str) -> str:
    """A plan as stored with the group (JSON)."""
    if isinstance(plan, str):
        return json.dumps({"refused": plan})
    return json.dumps({"matchers": [[m.name, m.op, m.value] for m in plan]})


def decode_plan(stored: str | None, legacy_labels: str) -> list[Matcher] | str:
    """A stored plan; rows from before plans were stored match on their labels."""
    if stored:
        data = json.loads(stored)
        if "refused" in data:
            return str(data["refused"])
        return [Matcher(str(a), str(b), str(c)) for a, b, c in data["matchers"]]
    labels: dict[str, str] = json.loads(legacy_labels)
    if not labels:
        return "the group has no labels to match on"
    return [Matcher(name, "=", value) for name, value in sorted(labels.items())]


def key_of(matchers: list[Matcher]) -> MatcherKey:
    """Matchers in a comparable form, as Alertmanager's API v2 expresses them."""
    return tuple(
        sorted(
            (m.name, m.value, bool(m.api()["isRegex"]), bool(m.api()["isEqual"])) for m in matchers
        )
    )


def stored_key(silence: dict[str, Any]) -> MatcherKey:
    """A silence's matchers (API v2 `matchers`) in the same form as `key_of`."""
    return tuple(
        sorted(
            (
                str(m.get("name")),
                str(m.get("value")),
                bool(m.get("isRegex", False)),
                bool(m.get("isEqual", True)),
            )
            for m in silence.get("matchers", [])
        )
    )


def stored_matchers(silence: dict[str, Any]) -> list[Matcher]:
    """A silence's matchers as Matcher values (to show them as Alertmanager stored them)."""
    out = []
    for name, value, is_regex, is_equal in stored_key(silence):
        op = ("=~" if is_equal else "!~") if is_regex else ("=" if is_equal else "!=")
        out.append(Matcher(name, op, value))
    return out
