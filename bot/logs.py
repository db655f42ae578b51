"""Logging setup, with every configured secret masked in every record."""

from __future__ import annotations

import logging
from collections.abc import Iterable


class SecretMask(logging.Filter):
    """Replaces known secret strings with '***' in formatted log messages."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """One stderr handler; nio and aiohttp access logs kept quiet."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMask(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("nio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
