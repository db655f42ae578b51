"""Logging setup, with every configured secret masked in every record."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

# Libraries that log every connection or request at INFO: at the bot's INFO they bury its own
# lines (asyncssh alone logged 94 lines for one demo check). `logging.loggers` lifts them.
THIRD_PARTY = (
    "nio",
    "aiohttp.access",
    "aiohttp.server",
    "asyncssh",
    "botocore",
    "boto3",
    "urllib3",
    "matplotlib",
    "psycopg",
)


class SecretMask(logging.Filter):
    """Replaces known secret strings with '***' in formatted log messages."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        # A traceback is formatted after the filters ran, from the exception itself; its
        # text (an aiohttp error quoting a URL with ?access_token=…) is masked here, and the
        # formatter then uses this cached text.
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self._mask(record.stack_info)
        return True

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_TRACEBACKS = logging.Formatter()


def setup_logging(
    level: str, secrets: Iterable[str] = (), loggers: Mapping[str, str] | None = None
) -> None:
    """One stderr handler; third-party loggers at WARNING unless `loggers` says otherwise."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMask(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in THIRD_PARTY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, wanted in (loggers or {}).items():
        logging.getLogger(name).setLevel(wanted)
