"""Typed configuration: loaded from YAML once at start, validated, never written back."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.cron import CronError, CronSchedule
from bot.durations import Duration


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists each one as 'file: key: message'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys rejected, secrets from files or env.

    A field typed `SecretStr` may instead be given as `<key>_file: /path` (the file's content,
    stripped) or `<key>_env: VAR` (an environment variable).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _resolve_secret_sources(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if not _is_secret(field.annotation):
                continue
            file_key, env_key = f"{name}_file", f"{name}_env"
            given = [k for k in (name, file_key, env_key) if out.get(k) is not None]
            if len(given) > 1:
                raise ValueError(f"give only one of {', '.join(given)}")
            if file_key in out:
                path = out.pop(file_key)
                if path is not None:
                    out[name] = _read_secret_file(file_key, str(path))
                    if not out[name]:
                        raise ValueError(f"{file_key}: the secret file {path} is empty")
            if env_key in out:
                var = out.pop(env_key)
                if var is not None:
                    if str(var) not in os.environ:
                        raise ValueError(f"{env_key}: environment variable {var} is not set")
                    out[name] = os.environ[str(var)]
                    if not out[name].strip():
                        raise ValueError(f"{env_key}: environment variable {var} is empty")
            # An empty secret is a mistake (a file not yet decrypted, an unset template), not
            # "no secret": clients would send it, or fall back to credentials found elsewhere.
            if isinstance(out.get(name), str) and not out[name].strip():
                raise ValueError(f"{name}: is empty")
        return out


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return SecretStr in getattr(annotation, "__args__", ())


def _read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None


class MatrixConfig(Section):
    homeserver: str = Field(pattern=r"^https?://")
    user_id: str = Field(pattern=r"^@[^:]+:.+$")
    access_token: SecretStr | None = None
    password: SecretStr | None = None
    device_name: str = "infrabot"
    rooms: list[str] = Field(min_length=1)
    sync_timeout_s: float = Field(default=30, gt=0, le=300)
    request_timeout_s: float = Field(default=20, gt=0, le=300)
    max_backoff_s: float = Field(default=60, gt=0, le=3600)

    @field_validator("rooms")
    @classmethod
    def _room_ids_or_aliases(cls, rooms: list[str]) -> list[str]:
        for room in rooms:
            if not room.startswith(("!", "#")):
                raise ValueError(f"{room!r} is neither a room id (!…) nor an alias (#…)")
        return rooms

    @model_validator(mode="after")
    def _needs_credentials(self) -> MatrixConfig:
        if self.access_token is None and self.password is None:
            raise ValueError("set access_token (or access_token_file/_env) or password")
        return self


class CommandsConfig(Section):
    prefix: str = Field(default="!", min_length=1, max_length=5)


class RoleConfig(Section):
    users: list[str] = Field(default_factory=list)
    # Anyone with at least this power level in the room holds the role.
    min_power_level: int | None = None


class PermissionsConfig(Section):
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    # command name -> role; overrides the role a command declares. "anyone" lifts the need.
    commands: dict[str, str] = Field(default_factory=dict)
    # Holders of this role may run every command.
    admin_role: str = "admin"


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    enabled: bool = True


# A password in a DSN: `password=`/`sslpassword=` (key/value or a URI's query), or a URI's
# `user:password@` (libpq's "Connection Strings", PostgreSQL 15 docs §34.1.1).
_DSN_SECRET = re.compile(r"password\s*=|^\s*[a-z][a-z0-9+.-]*://[^/?#@]*:[^/?#@]*@", re.I)
_POSTGRES_ONLY = frozenset({"lease", "connect_timeout", "statement_timeout", "pool_size"})
_MAX_MS_DURATION = timedelta(days=24)  # < 2**31 ms
_DSN_HOLDS = "it holds a password; give it as password_file or password_env instead"


class StateConfig(Section):
    """Where the state lives: a SQLite file (default), or a PostgreSQL database (`dsn`)."""

    data_dir: Path = Path("~/.local/share/infrabot")
    path: Path | None = None
    # libpq connection string or URI, e.g. "host=db.example port=5432 user=infrabot dbname=infrabot"
    dsn: str | None = None
    # The PostgreSQL password (or password_file / password_env); never inside `dsn`.
    password: SecretStr | None = None
    connect_timeout: Duration = timedelta(seconds=10)
    statement_timeout: Duration = timedelta(seconds=30)
    pool_size: int = Field(default=4, ge=1, le=64)
    # Two instances on PostgreSQL: how long the speaker's lease lasts (bot.leader).
    lease: Duration = timedelta(seconds=15)

    @model_validator(mode="after")
    def _postgres_or_sqlite(self) -> StateConfig:
        if self.dsn is None:
            # Keys that only PostgreSQL uses, set beside a SQLite state, are a half-done move
            # to two instances: each would keep its own file and lead alone.
            only_pg = sorted(self.model_fields_set & _POSTGRES_ONLY)
            if self.password is not None or only_pg:
                given = ", ".join(only_pg or ["password"])
                raise ValueError(f"{given}: for a PostgreSQL state only; give dsn as well")
            return self
        if self.path is not None:
            raise ValueError("give either dsn (PostgreSQL) or path (SQLite), not both")
        if not self.dsn.strip():
            raise ValueError("dsn: is empty; give e.g. 'host=db.example user=infrabot'")
        try:
            from psycopg.conninfo import conninfo_to_dict

            parts = conninfo_to_dict(self.dsn)
        except Exception as exc:  # psycopg.ProgrammingError: the libpq parser's complaint
            # libpq quotes the text it could not parse, which may be the password: say so
            # without echoing it.
            if _DSN_SECRET.search(self.dsn):
                raise ValueError(f"dsn: not a libpq connection string; {_DSN_HOLDS}") from None
            raise ValueError(f"dsn: not a libpq connection string or URI ({exc})") from None
        if parts.keys() & {"password", "sslpassword"}:
            raise ValueError(f"dsn: {_DSN_HOLDS}")
        for port in (p.strip() for p in str(parts.get("port") or "").split(",")):
            # libpq checks a port only when it connects: the bot would retry it forever.
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"dsn: port {port!r} is not a port number")
        if self.lease.total_seconds() < 3:
            raise ValueError("lease must be at least 3s")
        # PostgreSQL's statement_timeout and the lease connection's tcp_user_timeout are
        # milliseconds in a 32-bit integer: beyond it every connection is refused, forever.
        for key in ("lease", "statement_timeout"):
            if getattr(self, key) > _MAX_MS_DURATION:
                raise ValueError(f"{key} must be at most 24d")
        if self.connect_timeout.total_seconds() < 1 or self.statement_timeout.total_seconds() <= 0:
            raise ValueError("connect_timeout must be at least 1s and statement_timeout above 0")
        return self

    @property
    def db_path(self) -> Path:
        """The SQLite file: `path`, or infrabot.sqlite3 under `data_dir`."""
        return (self.path or self.data_dir / "infrabot.sqlite3").expanduser()


class ScheduleConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    cron: str
    job: str
    room: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, expr: str) -> str:
        try:
            CronSchedule(expr)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return expr


class LoggingConfig(Section):
    level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Per-logger levels, e.g. {asyncssh: INFO}; third-party loggers otherwise stay at WARNING.
    loggers: dict[str, str] = Field(default_factory=dict)

    @field_validator("loggers")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        for name, level in value.items():
            if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ValueError(f"{name}: {level!r} is not DEBUG, INFO, WARNING or ERROR")
        return {name: level.upper() for name, level in value.items()}


class CoreConfig(Section):
    matrix: MatrixConfig
    commands: CommandsConfig = CommandsConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    http: HttpConfig = HttpConfig()
    state: StateConfig = StateConfig()
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    logging: LoggingConfig = LoggingConfig()

    CORE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"matrix", "commands", "permissions", "http", "state", "schedules", "logging"}
    )


S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration: core sections plus each feature's section."""

    core: CoreConfig
    features: Mapping[str, BaseModel]
    source: str

    def section(self, key: str, model: type[S]) -> S | None:
        """A feature's section, or None when the file does not have it."""
        value = self.features.get(key)
        if value is None:
            return None
        if not isinstance(value, model):
            raise TypeError(f"section {key} is {type(value).__name__}, not {model.__name__}")
        return value


def _format_loc(prefix: str, loc: Iterable[int | str]) -> str:
    out = prefix
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else item
    return out or "(top level)"


def _problems(source: str, prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{source}: {_format_loc(prefix, err['loc'])}: {msg}")
    return out


JobParams = Mapping[str, "type[BaseModel] | None"]


def parse_config(
    raw: Any, source: str, sections: Mapping[str, type[BaseModel]], job_types: JobParams
) -> Config:
    """Validate an already-parsed YAML document; every problem is collected before raising."""
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{source}: the file must be a mapping of sections"])
    problems: list[str] = []
    core_raw = {k: v for k, v in raw.items() if k in CoreConfig.CORE_KEYS}
    core: CoreConfig | None = None
    core_problems: list[str] = []
    try:
        core = CoreConfig.model_validate(core_raw)
    except ValidationError as exc:
        core_problems = _problems(source, "", exc)
    # Sections check the roles they name against the core's (see `known_roles`).
    context = {_KNOWN_ROLES: _role_names(core)} if core is not None else {}
    features: dict[str, BaseModel] = {}
    for key, value in raw.items():
        if key in CoreConfig.CORE_KEYS:
            continue
        model = sections.get(str(key))
        if model is None:
            known = sorted(CoreConfig.CORE_KEYS | set(sections))
            problems.append(f"{source}: {key}: unknown section (known: {', '.join(known)})")
            continue
        try:
            features[str(key)] = model.model_validate(
                value if value is not None else {}, context=context
            )
        except ValidationError as exc:
            problems.extend(_problems(source, str(key), exc))
    problems.extend(core_problems)
    problems.extend(_check_schedules(raw.get("schedules"), source, job_types))
    if core is not None:
        problems.extend(_check_roles(core, source))
    if problems or core is None:
        raise ConfigError(problems)
    return Config(core=core, features=features, source=source)


def _check_schedules(raw: Any, source: str, job_types: JobParams) -> list[str]:
    """Job names and params, checked per entry so they are reported alongside other errors."""
    if not isinstance(raw, list):
        return []
    problems = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        try:
            sched = ScheduleConfig.model_validate(item)
        except ValidationError:
            continue  # already reported by the core validation
        if sched.name in seen:
            problems.append(f"{source}: schedules[{i}].name: duplicate job name {sched.name!r}")
        seen.add(sched.name)
        if sched.job not in job_types:
            problems.append(
                f"{source}: schedules[{i}].job: unknown job {sched.job!r} "
                f"(known: {', '.join(sorted(job_types))})"
            )
        elif (model := job_types[sched.job]) is not None:
            try:
                model.model_validate(sched.params)
            except ValidationError as exc:
                problems.extend(_problems(source, f"schedules[{i}].params", exc))
    return problems


_KNOWN_ROLES = "infrabot.known_roles"


def _role_names(core: CoreConfig) -> frozenset[str]:
    return frozenset(core.permissions.roles) | {"anyone", core.permissions.admin_role}


def known_roles(info: ValidationInfo) -> frozenset[str] | None:
    """The roles a feature section's key may name (those under `permissions.roles`, the
    admin role and "anyone"), for a validator of that key; None when the section is validated
    on its own or `permissions` itself is invalid (then there is nothing to check against).

    A validator raising ValueError("unknown role …") makes the problem 'file: key: message'
    like every other.
    """
    context = info.context
    if not isinstance(context, Mapping):
        return None
    roles = context.get(_KNOWN_ROLES)
    return roles if isinstance(roles, frozenset) else None


def known_role(value: str, info: ValidationInfo) -> str:
    """`value` if it names a known role (see `known_roles`); for a feature's `role:` validator.

    Raises ValueError("unknown role …", with the known ones) otherwise: a typo would leave what
    the key guards to the admins alone, found out only when someone is refused.
    """
    roles = known_roles(info)
    if roles is not None and value not in roles:
        raise ValueError(
            f"unknown role {value!r}: not under permissions.roles "
            f"(known: {', '.join(sorted(roles))})"
        )
    return value


def _check_roles(core: CoreConfig, source: str) -> list[str]:
    roles = _role_names(core)
    return [
        f"{source}: permissions.commands.{cmd}: unknown role {role!r}"
        for cmd, role in core.permissions.commands.items()
        if role not in roles
    ]


def load_config(
    path: str | Path, sections: Mapping[str, type[BaseModel]], job_types: JobParams
) -> Config:
    """Read and validate a YAML config file; raises ConfigError naming the file and keys."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {exc}"]) from None
    return parse_config(raw if raw is not None else {}, source, sections, job_types)
