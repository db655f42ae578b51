"""A throwaway Synapse homeserver on loopback, for the demo and the test harness.

Synapse is installed once into its own cached venv (it is large and its dependencies must not
mix with the bot's), keyed by version.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.process import start_server, stop_server

log = logging.getLogger(__name__)

SYNAPSE_VERSION = "1.163.2"
_RELAXED = {"per_second": 1000, "burst_count": 1000}


def cache_dir() -> Path:
    """Where installed helper servers are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "infrabot"


def synapse_python() -> Path:
    """The Python of a venv with matrix-synapse installed, installing it on first use."""
    venv = Path(
        os.environ.get("INFRABOT_SYNAPSE_VENV") or cache_dir() / f"synapse-{SYNAPSE_VERSION}"
    )
    marker = venv / ".installed"
    if marker.exists():
        return venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers install only once
        if not marker.exists():
            print(
                f"installing matrix-synapse {SYNAPSE_VERSION} into {venv} (once)…", file=sys.stderr
            )
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", f"matrix-synapse=={SYNAPSE_VERSION}"],
                check=True,
            )
            marker.touch()
    return venv / "bin" / "python"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Account:
    """A registered user with a live access token."""

    user_id: str
    password: str
    access_token: str

    @property
    def localpart(self) -> str:
        """The part between '@' and ':'."""
        return self.user_id[1:].split(":")[0]


class MatrixHttpError(Exception):
    """A homeserver answered a harness request with an error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.errcode = str(body.get("errcode", ""))


class LocalSynapse:
    """One Synapse process with SQLite, relaxed rate limits and no federation."""

    def __init__(self, workdir: Path, port: int | None = None, server_name: str = "localhost"):
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self.server_name = server_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "homeserver.yaml"

    @property
    def url(self) -> str:
        """The client-server API base URL."""
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Generate the config once, then set loopback listener and test-friendly limits."""
        python = synapse_python()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "synapse.app.homeserver",
                    "--server-name",
                    self.server_name,
                    "--config-path",
                    str(self.config_path),
                    "--data-directory",
                    str(self.workdir),
                    "--generate-config",
                    "--report-stats=no",
                ],
                check=True,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
            )
        cfg = yaml.safe_load(self.config_path.read_text())
        cfg["listeners"] = [
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        cfg.update(
            {
                "trusted_key_servers": [],
                "suppress_key_server_warning": True,
                "report_stats": False,
                "enable_registration": False,
                "presence": {"enabled": False},
                "url_preview_enabled": False,
                "max_upload_size": "50M",
                "rc_message": _RELAXED,
                "rc_login": {k: _RELAXED for k in ("address", "account", "failed_attempts")},
                "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
                "rc_joins_per_room": _RELAXED,
                "rc_invites": {k: _RELAXED for k in ("per_room", "per_user", "per_issuer")},
                "rc_registration": _RELAXED,
                "rc_admin_redaction": _RELAXED,
                "rc_room_creation": _RELAXED,
                "rc_presence": {"per_user": _RELAXED},
                "rc_delayed_event_mgmt": _RELAXED,
                "rc_reports": _RELAXED,
                "log_config": str(self._write_log_config()),
            }
        )
        self.config_path.write_text(yaml.safe_dump(cfg))

    def _write_log_config(self) -> Path:
        path = self.workdir / "log.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "formatters": {
                        "f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
                    },
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "filename": str(self.workdir / "homeserver.log"),
                            "formatter": "f",
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        return path

    def start(self, timeout: float = 90) -> None:
        """Start the process and wait until the client API answers."""
        if not self.config_path.exists():
            self.prepare()
        self.proc = start_server(
            "synapse",
            [str(synapse_python()), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            self.workdir / "stdout.log",
            f"{self.url}/_matrix/client/versions",
            timeout,
            cwd=self.workdir,
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        stop_server(self.proc)
        self.proc = None

    # --- client-server helpers (synchronous; for setup, not for the bot) -------------------
    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> dict[str, Any]:
        """One JSON request to the homeserver; raises MatrixHttpError on an error status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback URL
                result: dict[str, Any] = json.loads(resp.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
            raise MatrixHttpError(exc.code, payload) from None

    def limit_messages(
        self, admin: Account, user_id: str, per_second: int, burst: int | None
    ) -> None:
        """Rate-limit one user's sends (admin API) while everyone else is relaxed; None: undo."""
        path = f"/_synapse/admin/v1/users/{urllib.parse.quote(user_id)}/override_ratelimit"
        if burst is None:
            self.request("DELETE", path, token=admin.access_token)
            return
        body = {"messages_per_second": per_second, "burst_count": burst}
        self.request("POST", path, body, token=admin.access_token)

    def register(self, localpart: str, password: str, admin: bool = False) -> Account:
        """Create a user with the shared-secret admin API (or log in if it exists)."""
        cfg = yaml.safe_load(self.config_path.read_text())
        secret = str(cfg["registration_shared_secret"]).encode()
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        digest = hmac.new(
            secret,
            b"\x00".join(
                p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")
            ),
            hashlib.sha1,
        ).hexdigest()
        try:
            resp = self.request(
                "POST",
                "/_synapse/admin/v1/register",
                {
                    "nonce": nonce,
                    "username": localpart,
                    "password": password,
                    "admin": admin,
                    "mac": digest,
                },
            )
            return Account(resp["user_id"], password, resp["access_token"])
        except MatrixHttpError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        return self.login(localpart, password)

    def login(self, localpart: str, password: str) -> Account:
        """Log in with a password; returns a fresh access token."""
        resp = self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            },
        )
        return Account(resp["user_id"], password, resp["access_token"])

    def create_room(
        self,
        owner: Account,
        *,
        name: str,
        invite: list[str] = (),  # type: ignore[assignment]
        power_levels: dict[str, int] | None = None,
        alias: str | None = None,
        encrypted: bool = False,
    ) -> str:
        """Create a private room owned by `owner`; returns its room id."""
        body: dict[str, Any] = {"name": name, "preset": "private_chat", "invite": list(invite)}
        if encrypted:
            body["initial_state"] = [
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ]
        if alias:
            body["room_alias_name"] = alias
        if power_levels:
            # Room version 12 gives creators unlimited power; they must not be listed.
            body["power_level_content_override"] = {"users": power_levels}
        return str(
            self.request("POST", "/_matrix/client/v3/createRoom", body, owner.access_token)[
                "room_id"
            ]
        )

    def join(self, account: Account, room: str) -> str:
        """Join a room by id or alias; returns the room id."""
        quoted = urllib.parse.quote(room)
        return str(
            self.request("POST", f"/_matrix/client/v3/join/{quoted}", {}, account.access_token)[
                "room_id"
            ]
        )

    def leave(self, account: Account, room: str) -> None:
        """Leave and forget `room` as `account`; a room it is not in is no error."""
        quoted = urllib.parse.quote(room)
        for action in ("leave", "forget"):
            try:
                self.request(
                    "POST", f"/_matrix/client/v3/rooms/{quoted}/{action}", {}, account.access_token
                )
            except MatrixHttpError:
                return

    def kick(self, account: Account, room: str, user_id: str, reason: str = "") -> None:
        """Kick `user_id` from `room` as `account` (who needs the power to)."""
        quoted = urllib.parse.quote(room)
        body = {"user_id": user_id, "reason": reason}
        self.request("POST", f"/_matrix/client/v3/rooms/{quoted}/kick", body, account.access_token)

    def invite(self, account: Account, room: str, user_id: str) -> None:
        """Invite `user_id` into `room` as `account`."""
        quoted = urllib.parse.quote(room)
        body = {"user_id": user_id}
        self.request(
            "POST", f"/_matrix/client/v3/rooms/{quoted}/invite", body, account.access_token
        )

    def resolve_alias(self, alias: str) -> str | None:
        """The room id behind an alias, or None."""
        try:
            resp = self.request(
                "GET", f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias)}"
            )
        except MatrixHttpError:
            return None
        return str(resp["room_id"])
