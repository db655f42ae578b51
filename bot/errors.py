"""The one error hierarchy that the dispatcher turns into replies."""

from __future__ import annotations


class BotError(Exception):
    """Base of errors whose message is fit to show in the room."""


class UserError(BotError):
    """The user's input is wrong; the message says what and how to fix it."""


class PermissionDenied(BotError):
    """The sender lacks the role a command needs."""


class RemoteError(BotError):
    """A remote system (homeserver, SSH host, AWS, database) failed; the message says which."""
