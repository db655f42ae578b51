"""boto3 behind a small async face: every call in a thread, with a timeout, and AWS errors
turned into RemoteError messages a person can act on (never a traceback in the room)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bot.errors import RemoteError

# boto3 and botocore are imported where used: they cost ~30 MB and ~0.3 s at start-up, which
# a bot that only relays alerts should not pay.

DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}
THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
}


class AwsClients:
    """boto3 clients from config (or the standard credential chain), made once and closed.

    Each (service, region) client is made on first use, on the event loop's thread (a boto3
    session is not thread-safe; its clients are), and kept until `close()`, which the feature's
    lifespan calls at shutdown. Nothing is imported or opened until a client is asked for.
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None,
        profile: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        timeout_s: float,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self.region = region
        session_kwargs: dict[str, Any] = {"region_name": region}
        if profile:
            session_kwargs["profile_name"] = profile
        if access_key_id and secret_access_key:
            session_kwargs["aws_access_key_id"] = access_key_id
            session_kwargs["aws_secret_access_key"] = secret_access_key
        self._session_kwargs = session_kwargs
        self._session: Any = None
        self._config: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self.closed = False

    @property
    def open_clients(self) -> list[tuple[str, str]]:
        """(service, region) of every client made and not yet closed."""
        return list(self._clients)

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached boto3 client (Cost Explorer lives in us-east-1).

        Raises RemoteError once closed, or when the profile or settings are unusable.
        """
        if self.closed:
            raise RemoteError("the AWS clients are closed (the bot is shutting down)")
        key = (service, region or self.region)
        if key not in self._clients:
            with aws_errors(f"{service} client for {key[1]}", self.timeout_s):
                if self._session is None:
                    import boto3.session
                    import botocore.config

                    self._config = botocore.config.Config(
                        connect_timeout=min(10, self.timeout_s),
                        read_timeout=self.timeout_s,
                        retries={"max_attempts": 3, "mode": "standard"},
                    )
                    self._session = boto3.session.Session(**self._session_kwargs)
                self._clients[key] = self._session.client(
                    service, region_name=key[1], endpoint_url=self.endpoint_url, config=self._config
                )
        return self._clients[key]

    def close(self) -> None:
        """Close every client's connection pool; later calls raise RemoteError."""
        self.closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    async def call(self, service: str, op: str, region: str | None = None, **kwargs: Any) -> Any:
        """Run one API call in a thread; RemoteError on any failure."""
        with aws_errors(f"{service}:{op}", self.timeout_s * 3):
            func: Callable[..., Any] = functools.partial(
                getattr(self.client(service, region), op), **kwargs
            )
            async with asyncio.timeout(self.timeout_s * 3):
                return await asyncio.to_thread(func)

    async def paginate(
        self, service: str, op: str, region: str, key: str, **kwargs: Any
    ) -> list[Any]:
        """Every item under `key` across all pages of a paginated call."""
        client = self.client(service, region)

        def run() -> list[Any]:
            items: list[Any] = []
            for page in client.get_paginator(op).paginate(**kwargs):
                items.extend(page.get(key, []))
            return items

        with aws_errors(f"{service}:{op}", self.timeout_s * 6):
            async with asyncio.timeout(self.timeout_s * 6):
                return await asyncio.to_thread(run)


@contextmanager
def aws_errors(what: str, timeout_s: float) -> Iterator[None]:
    """Turn boto3's exceptions (and our timeout) into RemoteError."""
    import botocore.exceptions
    import botocore.parsers

    try:
        yield
    except TimeoutError:
        raise RemoteError(f"AWS did not answer {what} within {timeout_s:.0f} s") from None
    except botocore.exceptions.NoCredentialsError:
        raise RemoteError(
            "no AWS credentials found (profile, environment, instance role or aws.* keys)"
        ) from None
    except botocore.exceptions.ProfileNotFound as exc:
        raise RemoteError(f"AWS profile not found: {exc}") from None
    except botocore.exceptions.ClientError as exc:
        raise RemoteError(describe_client_error(exc, what)) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise RemoteError(f"AWS call {what} failed: {exc}") from None
    except botocore.parsers.ResponseParserError:
        # Not a BotoCoreError: an HTML error page (a proxy, a wrong endpoint_url, an unknown
        # region behind a stand-in) would otherwise escape as an unexpected failure.
        raise RemoteError(
            f"AWS answered {what} with something that is not an AWS response "
            "(wrong endpoint_url or region, or a proxy in the way?)"
        ) from None


def describe_client_error(exc: Any, what: str) -> str:
    """A ClientError as one sentence."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "error"))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in DENIED:
        return f"AWS denied {what} ({code}); the bot's IAM policy needs that permission"
    if code in THROTTLED:
        return f"AWS is throttling {what} ({code}); try again in a minute"
    if code == "DataUnavailableException":
        # GetCostForecast's answer for an account with too little history (a new account,
        # or one with no costs yet): AWS Cost Explorer API reference, GetCostForecast errors.
        return (
            f"Cost Explorer has too little cost history for {what} yet "
            "(DataUnavailableException: a new account, or one without costs so far)"
        )
    if code in ("NotImplemented", "UnsupportedOperation", "InvalidAction") or status in (500, 501):
        return f"{what} is not available here ({code or status})"
    message = str(error.get("Message", "")).strip().splitlines()[0:1]
    return f"AWS refused {what}: {code}{': ' + message[0][:200] if message else ''}"
