"""Roles: configured user lists and room power levels; which role each command needs."""

from __future__ import annotations

from collections.abc import Callable

from bot.config import PermissionsConfig
from bot.registry import ANYONE, Command


class Permissions:
    """Answers 'may this user run this command in this room?'."""

    def __init__(self, cfg: PermissionsConfig, power_level: Callable[[str, str], int]) -> None:
        self.cfg = cfg
        self._power_level = power_level

    def required_role(self, cmd: Command) -> str:
        """The role a command needs: the config's override, else what the command declares."""
        return self.role_for(cmd.name, cmd.role)

    def role_for(self, name: str, declared: str) -> str:
        """The role an action named `name` (a command, or a reaction acting as one) needs."""
        return self.cfg.commands.get(name, declared)

    def has_role(self, user_id: str, room_id: str, role: str) -> bool:
        """Whether the user holds `role` (or the admin role) in the room."""
        if role == ANYONE:
            return True
        for name in (role, self.cfg.admin_role):
            spec = self.cfg.roles.get(name)
            if spec is None:
                continue
            if user_id in spec.users:
                return True
            if spec.min_power_level is not None:
                if self._power_level(room_id, user_id) >= spec.min_power_level:
                    return True
        return False

    def may_run(self, user_id: str, room_id: str, cmd: Command) -> bool:
        """Whether the user may run the command in the room."""
        return self.has_role(user_id, room_id, self.required_role(cmd))
