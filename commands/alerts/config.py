"""The `alertmanager:` config section, and the renderer built from its templates."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr

from bot.config import Section
from bot.context import Runtime
from bot.durations import Duration
from bot.mentions import MentionRule


class WebhookAuth(Section):
    bearer_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None


class AlertRoute(Section):
    room: str
    # Any of these that is set must match: the webhook path suffix, the receiver, labels.
    path: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    receiver: str | None = None
    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)
    # Keep looking for further matching routes after this one.
    continue_: bool = Field(default=False, alias="continue")


class Templates(Section):
    text: str | None = None
    html: str | None = None


class AlertsConfig(Section):
    url: str | None = Field(default=None, pattern=r"^https?://")
    api_timeout_s: float = Field(default=10, gt=0)
    external_url: str | None = None
    auth: WebhookAuth | None = None
    room: str | None = None
    routes: list[AlertRoute] = Field(default_factory=list)
    mentions: list[MentionRule] = Field(default_factory=list)
    resolved_reply: bool = True
    dedupe_window_s: float = Field(default=600, ge=0)
    # Alertmanager's repeat of an unchanged group (repeat_interval) is posted again; off: dropped.
    reminders: bool = True
    # A 🔕 reaction (by an operator) on a group's message silences the group this long; None: off.
    silence_on_reaction: Duration | None = timedelta(hours=2)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    templates: Templates = Templates()
    # New groups that join a message still waiting to be sent (a storm, or the homeserver
    # away) share it, up to this many per message.
    digest_max_groups: int = Field(default=150, ge=1, le=200)


def alerts_config(rt: Runtime) -> AlertsConfig:
    """The section as configured, or its defaults."""
    return rt.config.section("alertmanager", AlertsConfig) or AlertsConfig()
