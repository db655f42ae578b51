"""Alertmanager's webhook payload (version 4), validated strictly with reasons fit for a 400."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class WebhookError(Exception):
    """A webhook body that is not acceptable; `status` is the HTTP code to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Model(BaseModel):
    # Alertmanager may add fields in later versions; accept and ignore them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Model):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""

    @property
    def key(self) -> str:
        """Identity of the alert within its group."""
        if self.fingerprint:
            return self.fingerprint
        return hashlib.sha256(json.dumps(sorted(self.labels.items())).encode()).hexdigest()[:16]


class Notification(_Model):
    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    # Alerts Alertmanager left out of this notification (webhook_config `max_alerts`).
    truncatedAlerts: int = Field(default=0, ge=0)
    alerts: list[Alert] = Field(min_length=1)

    @property
    def all_resolved(self) -> bool:
        """Whether the whole group is known to be resolved.

        Alertmanager computes `status` from the alerts it kept after cutting the list to
        `max_alerts` (notify/webhook/webhook.go, 0.25: truncateAlerts before
        GetTemplateData), so with `truncatedAlerts` > 0 a "resolved" speaks only for the
        visible part: the alerts left out may still fire.
        """
        return self.status == "resolved" and self.truncatedAlerts == 0

    @property
    def firing(self) -> list[Alert]:
        """The alerts still firing."""
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[Alert]:
        """The alerts that resolved."""
        return [a for a in self.alerts if a.status == "resolved"]

    def state_digest(self) -> str:
        """Identical for notifications that say the same thing (e.g. from two HA replicas)."""
        parts = sorted((a.key, a.status, a.startsAt.isoformat()) for a in self.alerts)
        state: list[object] = [self.groupKey, self.status, parts]
        if self.truncatedAlerts:
            # Only then: digests stored before this field counted are still recognised.
            state.append(self.truncatedAlerts)
        raw = json.dumps(state)
        return hashlib.sha256(raw.encode()).hexdigest()


def parse_notification(body: bytes) -> Notification:
    """Parse and validate a webhook body; raises WebhookError(400) with the first few reasons."""
    try:
        # The common case in one pass through pydantic-core; a failure is explained below.
        return Notification.model_validate_json(body)
    except ValidationError:
        pass
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WebhookError(400, "body must be a JSON object (Alertmanager webhook payload)")
    if data.get("version") != "4":
        raise WebhookError(
            400, f"unsupported payload version {data.get('version')!r}; expected '4'"
        )
    try:
        return Notification.model_validate(data)
    except ValidationError as exc:
        reasons = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:3]
        ]
        raise WebhookError(400, "invalid payload: " + "; ".join(reasons)) from None
