"""A small client for Alertmanager's API v2: alerts and silences."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp

from bot.errors import RemoteError
from commands.alerts.matchers import Matcher


class NotFound(RemoteError):
    """Alertmanager answered 404 (e.g. no silence with that id)."""


class AlertmanagerAPI:
    """Each call has a timeout; failures raise RemoteError with a message fit for the room.

    One HTTP session (and its connection pool) for every call, opened on the first call;
    `close` ends it (the feature's lifespan does, at shutdown).
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        """Close the session; a later call would open a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base}/api/v2{path}"
        try:
            async with self._open().request(method, url, **kwargs) as resp:
                text = await resp.text(errors="replace")
                if resp.status == 404:
                    raise NotFound(f"Alertmanager has no {path}")
                if resp.status >= 400:
                    snippet = text[:200].strip()
                    raise RemoteError(
                        f"Alertmanager answered {resp.status} to {method} {path}: {snippet}"
                    )
        except aiohttp.ClientError as exc:
            raise RemoteError(f"Alertmanager at {self.base} is unreachable: {exc}") from None
        except TimeoutError:
            raise RemoteError(f"Alertmanager at {self.base} did not answer in time") from None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            # E.g. an auth proxy in front of it whose session lapsed: 200 and its HTML login page.
            raise RemoteError(
                f"Alertmanager at {self.base} answered {method} {path} with something that is "
                f"not JSON (an auth proxy's login page?): {_snippet(text)}"
            ) from None

    async def _listing(self, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        """A list of objects from the API, or RemoteError saying what came instead."""
        result = await self._call("GET", path, **kwargs)
        if not isinstance(result, list) or not all(isinstance(x, dict) for x in result):
            raise RemoteError(
                f"Alertmanager at {self.base} answered GET {path} with "
                f"{type(result).__name__}, not a list of objects: {_snippet(json.dumps(result))}"
            )
        return result

    async def alerts(self, matchers: list[Matcher]) -> list[dict[str, Any]]:
        """Active alerts (silenced and inhibited included) matching all matchers."""
        params = [("active", "true"), ("silenced", "true"), ("inhibited", "true")]
        params += [("filter", m.filter()) for m in matchers]
        return await self._listing("/alerts", params=params)

    async def silences(self) -> list[dict[str, Any]]:
        """Every silence Alertmanager knows, expired ones included."""
        return await self._listing("/silences")

    async def create_silence(
        self,
        matchers: list[Matcher],
        starts: datetime,
        ends: datetime,
        created_by: str,
        comment: str,
    ) -> str:
        """Create a silence; returns its id."""
        body = {
            "matchers": [m.api() for m in matchers],
            "startsAt": starts.isoformat(),
            "endsAt": ends.isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        result = await self._call("POST", "/silences", json=body)
        if not isinstance(result, dict) or not isinstance(result.get("silenceID"), str):
            raise RemoteError(
                f"Alertmanager at {self.base} answered POST /silences without a silenceID: "
                f"{_snippet(json.dumps(result))}"
            )
        return str(result["silenceID"])

    async def silence(self, silence_id: str) -> dict[str, Any]:
        """One silence as Alertmanager stored it; raises NotFound for an unknown id."""
        result = await self._call("GET", f"/silence/{silence_id}")
        if not isinstance(result, dict):
            raise RemoteError(
                f"Alertmanager at {self.base} answered GET /silence/{silence_id} with "
                f"{type(result).__name__}, not a silence: {_snippet(json.dumps(result))}"
            )
        return result

    async def expire_silence(self, silence_id: str) -> None:
        """Expire a silence now."""
        await self._call("DELETE", f"/silence/{silence_id}")


def _snippet(text: str) -> str:
    """The start of an answer, on one line, short enough for a room message."""
    return " ".join(text.split())[:160]
