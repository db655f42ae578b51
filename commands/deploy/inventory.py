"""The deploy inventory (`hosts:`): host groups, each with its method, directory, role and
four-eyes rule; every host belongs to exactly one group.

Two shapes are accepted:
- a mapping of groups, `{critical: {method, dir, role, four_eyes, hosts: [...]}, ...}`;
- a flat list of hosts (the shape before groups): one implicit group, `deploy` role, no
  four-eyes, each host's own method and hive.

A host may override its group's method (`method:`) and directory (`hive:`); `protected: true`
asks four-eyes for that host alone. Errors name the key as written in the file (`hosts[0].name`,
`hosts.critical.hosts[1].target`), not a pydantic union branch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationInfo, field_validator

from bot.config import Section, known_role
from bot.services.ssh import parse_target

Method = Literal["nixos-rebuild", "colmena"]
DEFAULT_ROLE = "deploy"
IMPLICIT_GROUP = "hosts"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# The words after `deploy` that name a command of their own rather than a host.
SUBCOMMANDS = ("cancel", "history")


def _relative_dir(value: str) -> str:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if value.startswith("/") or ".." in parts:
        raise ValueError(f"must be a directory inside the checkout, not {value!r}")
    return "/".join(parts)


class HostConfig(Section):
    name: str = Field(pattern=_NAME)
    target: str
    attr: str | None = None
    # None: the group's method.
    method: Method | None = None
    # Four-eyes for this host even when its group does not ask for it.
    protected: bool = False
    extra_args: list[str] = Field(default_factory=list)
    # The directory inside the checkout (colmena hive, or the flake); "" means the group's.
    hive: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # `!deploy history` and `!deploy cancel` are commands of their own: a host so named
        # could never be deployed (its deploy would show the history instead).
        if value in SUBCOMMANDS:
            raise ValueError(
                f"{value!r} is a word of the deploy command (`deploy {value}`); "
                "rename the host (its target may stay)"
            )
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        parse_target(value)
        return value

    @field_validator("hive")
    @classmethod
    def _hive(cls, value: str) -> str:
        return _relative_dir(value)


class GroupConfig(Section):
    method: Method = "nixos-rebuild"
    # Inside the checkout: the colmena hive (`build`, `non-critical-infra`) or the flake's dir.
    dir: str = ""
    role: str = Field(default=DEFAULT_ROLE, min_length=1)
    # A second person holding `role` must confirm every deploy of this group.
    four_eyes: bool = False
    hosts: list[HostConfig] = Field(min_length=1)

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str) -> str:
        return _relative_dir(value)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str, info: ValidationInfo) -> str:
        return known_role(value, info)


def _unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"host names must be unique: {', '.join(dupes)}")


class _FlatHosts(RootModel[list[HostConfig]]):
    @field_validator("root")
    @classmethod
    def _unique(cls, hosts: list[HostConfig]) -> list[HostConfig]:
        _unique([h.name for h in hosts])
        return hosts


class _Groups(RootModel[dict[str, GroupConfig]]):
    @field_validator("root")
    @classmethod
    def _names(cls, groups: dict[str, GroupConfig]) -> dict[str, GroupConfig]:
        bad = [g for g in groups if not re.match(_NAME, g)]
        if bad:
            raise ValueError(f"group names are letters, digits, '_.-': {', '.join(bad)}")
        if not groups:
            raise ValueError("at least one group of hosts is needed")
        _unique([h.name for g in groups.values() for h in g.hosts])
        return groups


@dataclass(frozen=True)
class Host:
    """One host as deploys see it: its own settings with its group's filled in."""

    name: str
    target: str
    attr: str
    method: Method
    dir: str
    extra_args: tuple[str, ...]
    group: str
    role: str
    four_eyes: bool


@dataclass(frozen=True)
class Group:
    """A group of hosts sharing a method, a directory, a role and a four-eyes rule."""

    name: str
    method: Method
    dir: str
    role: str
    four_eyes: bool
    hosts: tuple[Host, ...]


class Inventory(BaseModel):
    """The `hosts:` section: groups by name (a flat list is one implicit group)."""

    model_config = ConfigDict(frozen=True)

    groups: dict[str, GroupConfig]
    flat: bool = False

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """A list of hosts or a mapping of groups; raises ValidationError located in the file's
        own terms (`hosts[0].name`, `hosts.critical.role`)."""
        if isinstance(obj, list):
            hosts = _FlatHosts.model_validate(obj, *args, **kwargs).root
            if not hosts:  # `hosts: []`: no hosts, as before groups
                return cls(groups={}, flat=True)
            return cls(groups={IMPLICIT_GROUP: GroupConfig(hosts=hosts)}, flat=True)
        return cls(groups=_Groups.model_validate(obj, *args, **kwargs).root)

    def resolved(self) -> list[Group]:
        """The groups in file order, each host with its group's settings filled in."""
        out = []
        for name, g in self.groups.items():
            hosts = tuple(
                Host(
                    name=h.name,
                    target=h.target,
                    attr=h.attr or h.name,
                    method=h.method or g.method,
                    dir=h.hive or g.dir,
                    extra_args=tuple(h.extra_args),
                    group=name,
                    role=g.role,
                    four_eyes=g.four_eyes or h.protected,
                )
                for h in g.hosts
            )
            out.append(Group(name, g.method, g.dir, g.role, g.four_eyes, hosts))
        return out

    def hosts(self) -> dict[str, Host]:
        """Every host by name, in file order."""
        return {h.name: h for g in self.resolved() for h in g.hosts}


def unknown_roles(inventory: Inventory, roles: Iterable[str]) -> list[str]:
    """ "hosts.critical.role: unknown role 'x'" for each group whose role is not one of `roles`
    (the configured ones): only the admin role could deploy its hosts.

    A role written in the file is already refused when the config is loaded; this names the
    default `deploy` role of a flat list or a group without `role:`, which older configs rely
    on without configuring it (the admin role alone deploys then, as before groups)."""
    known = set(roles)
    where = "hosts" if inventory.flat else "hosts.{}.role"
    return [
        f"{where.format(name)}: unknown role {g.role!r} (roles: {', '.join(sorted(known))})"
        for name, g in inventory.groups.items()
        if g.role not in known
    ]
