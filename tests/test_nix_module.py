"""The flake and the NixOS module `services.infrabot`, evaluated by Debian's Nix (2.8).

The module is evaluated with nixpkgs' own `lib.evalModules` (the vendored nixpkgs lib in
nix/vendor/nixpkgs-lib) beside stand-in declarations of the NixOS options it sets
(tests/nix/stubs.nix); the config file it renders is checked by the real `infrabot check-config`.
Nothing is built: `--readonly-mode` computes store paths without writing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from bot.cli import load_registry
from bot.config import CoreConfig
from bot.services.ssh import SshSettings

ROOT = Path(__file__).resolve().parent.parent
NIX_LIB = ROOT / "nix" / "vendor" / "nixpkgs-lib" / "lib"
EVAL = ROOT / "tests" / "nix" / "eval.nix"
INFRABOT = Path(sys.executable).parent / "infrabot"
OPT = "services.infrabot"


def nix_eval(expr: str, tmp_path: Path) -> Any:
    """The JSON value of a Nix expression; raises AssertionError with Nix's error output."""
    assert shutil.which("nix-instantiate"), "nix-instantiate missing: run scripts/bootstrap.sh"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode", "-E", expr],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def evaluate(tmp_path: Path, settings: dict[str, Any], options: str = "", attr: str = "") -> Any:
    """tests/nix/eval.nix for a host with `services.infrabot.enable`, these settings (as JSON)
    and extra `services.infrabot` option definitions (Nix text)."""
    host = tmp_path / "host"
    host.mkdir(exist_ok=True)
    (host / "settings.json").write_text(json.dumps(settings))
    (host / "default.nix").write_text(
        "{ ... }: { services.infrabot = { enable = true;"
        " settings = builtins.fromJSON (builtins.readFile ./settings.json);"
        f" {options} }}; }}\n"
    )
    return nix_eval(f"(import {EVAL} {{ modules = [ {host} ]; }}){attr}", tmp_path)


def secret_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("secret-token-value\n")
    return str(path)


def minimal(tmp_path: Path) -> dict[str, Any]:
    return {
        "matrix": {
            "homeserver": "https://matrix.example.org",
            "user_id": "@infrabot:example.org",
            "access_token_file": secret_file(tmp_path, "token"),
            "rooms": ["#infra:example.org"],
        }
    }


def example_settings(tmp_path: Path) -> dict[str, Any]:
    """config.example.yaml as `settings`, its agenix paths pointing at files under tmp_path."""
    text = (ROOT / "config.example.yaml").read_text()
    for secret in set(re.findall(r"/run/agenix/[\w.-]+", text)):
        text = text.replace(secret, secret_file(tmp_path, Path(secret).name))
    # YAML reads `2025-06-01` as a date; in Nix it is a string, which the config parses alike.
    settings = json.loads(json.dumps(yaml.safe_load(text), default=str))
    assert isinstance(settings, dict)
    return settings


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "infrabot.yaml"
    path.write_text(text)
    return subprocess.run(
        [str(INFRABOT), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nix_files_parse() -> None:
    for path in ["flake.nix", "nix/module.nix", "nix/package.nix"]:
        done = subprocess.run(
            ["nix-instantiate", "--parse", str(ROOT / path)], capture_output=True, text=True
        )
        assert done.returncode == 0, f"{path}: {done.stderr}"


def test_flake_builds_the_pyproject_with_nixpkgs_python_packaging(tmp_path: Path) -> None:
    expr = f"""
      let
        lib = import {NIX_LIB};
        nixpkgs = import {ROOT}/tests/nix/nixpkgs.nix {{ inherit lib; }};
        self = (import {ROOT}/flake.nix).outputs {{ inherit self nixpkgs; }};
        pkg = self.packages.x86_64-linux.default;
        names = map (p: p.pname);
        keeps = rel: pkg.src.filter "${{toString {ROOT}}}/${{rel}}" "regular";
      in {{
        inherit (pkg) pname version pyproject doCheck pythonImportsCheck;
        buildSystem = names pkg.build-system;
        dependencies = names pkg.dependencies;
        inherit (pkg.meta) mainProgram;
        devPython = names pkg.devPython.packages;
        shell = names self.devShells.x86_64-linux.default.packages;
        systems = builtins.attrNames self.packages;
        kept = builtins.filter keeps [
          "pyproject.toml" "README.md" "bot" "bot/cli.py" "commands" "commands/x/y.py"
          "tests" "devstack" "bench" ".venv" "bot/__pycache__" "flake.nix"
        ];
        moduleImports = builtins.length (self.nixosModules.default {{ pkgs = {{}}; }}).imports;
      }}
    """
    out = nix_eval(expr, tmp_path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    name = re.compile(r"[A-Za-z0-9_.-]+")

    def names(reqs: list[str]) -> list[str]:
        return [m.group(0).lower() for r in reqs if (m := name.match(r))]

    assert (out["pname"], out["version"]) == (project["project"]["name"], "0.1.0")
    assert out["pyproject"] is True
    assert (
        out["buildSystem"]
        == names(project["build-system"]["requires"])
        == [
            "setuptools",
            "wheel",
        ]
    )
    assert out["dependencies"] == names(project["project"]["dependencies"])
    assert "psycopg" in out["dependencies"] and "matrix-nio" in out["dependencies"]
    assert out["devPython"] == names(
        project["project"]["dependencies"] + project["project"]["optional-dependencies"]["test"]
    )
    assert out["mainProgram"] == "infrabot"
    assert out["doCheck"] is False and "bot.cli" in out["pythonImportsCheck"]
    # The real parts the suite starts, from nixpkgs in the dev shell.
    assert out["shell"] == ["python3-env", "alertmanager", "openssh", "postgresql", "nix"]
    assert out["systems"] == ["aarch64-linux", "x86_64-linux"]
    # The source is what the Dockerfile copies.
    assert out["kept"] == [
        "pyproject.toml",
        "README.md",
        "bot",
        "bot/cli.py",
        "commands",
        "commands/x/y.py",
    ]
    assert out["moduleImports"] == 1


def test_flake_module_runs_the_flake_package(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(minimal(tmp_path)))
    expr = f"""
      let
        lib = import {NIX_LIB};
        nixpkgs = import {ROOT}/tests/nix/nixpkgs.nix {{ inherit lib; }};
        self = (import {ROOT}/flake.nix).outputs {{ inherit self nixpkgs; }};
        stubs = import {ROOT}/tests/nix/stubs.nix {{ inherit lib; }};
        config = (lib.evalModules {{
          modules = [
            stubs.nixos
            self.nixosModules.default
            {{
              _module.args.pkgs = nixpkgs.legacyPackages.x86_64-linux;
              services.infrabot.enable = true;
              services.infrabot.settings = builtins.fromJSON (builtins.readFile {settings});
            }}
          ];
        }}).config;
      in {{
        package = "${{self.packages.x86_64-linux.default}}";
        exec = config.systemd.services.infrabot.serviceConfig.ExecStart;
      }}
    """
    out = nix_eval(expr, tmp_path)
    assert out["exec"].startswith(f"{out['package']}/bin/infrabot run --config /nix/store/")


def test_unit_runs_check_config_then_run_hardened(tmp_path: Path) -> None:
    out = evaluate(tmp_path, minimal(tmp_path), 'extraGroups = [ "keys" ];')
    assert out["failedAssertions"] == []
    exe = f"{out['package']}/bin/infrabot"
    config = out["configFile"]["path"]
    assert re.fullmatch(r"/nix/store/[0-9a-z]{32}-infrabot\.yaml", config)
    service = out["service"]
    unit = service["serviceConfig"]
    # The command lines of bot/cli.py: `infrabot check-config|run --config FILE`.
    assert unit["ExecStartPre"] == f"{exe} check-config --config {config}"
    assert unit["ExecStart"] == f"{exe} run --config {config}"
    assert (unit["User"], unit["Group"]) == ("infrabot", "infrabot")
    # Supplementary groups only work outside a private user namespace.
    assert (unit["SupplementaryGroups"], unit["PrivateUsers"]) == (["keys"], False)
    user = out["users"]["users"]["infrabot"]
    assert user["isSystemUser"] is True and user["group"] == "infrabot"
    assert user["home"] == "/var/lib/infrabot"
    assert "infrabot" in out["users"]["groups"]
    assert (unit["StateDirectory"], unit["StateDirectoryMode"]) == ("infrabot", "0700")
    assert unit["WorkingDirectory"] == "/var/lib/infrabot"
    assert unit["Restart"] == "on-failure"
    assert service["wantedBy"] == ["multi-user.target"]
    assert "network-online.target" in service["after"]
    hardening = {
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "NoNewPrivileges": True,
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictNamespaces": True,
        "RestrictSUIDSGID": True,
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectControlGroups": True,
        "LockPersonality": True,
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    assert {k: unit.get(k) for k in hardening} == hardening
    assert set(unit["RestrictAddressFamilies"]) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert unit["SystemCallFilter"][0] == "@system-service"
    assert "EnvironmentFile" not in unit
    assert out["firewall"] == [] and out["etc"] == {}


def installed_unit(tmp_path: Path, out: Any) -> tuple[Path, dict[str, list[str]]]:
    """The unit file NixOS would write, with the package's store path pointing at this venv's
    `infrabot` and the config's store path at the rendered text; and its [Service] lines."""
    package = tmp_path / "package"
    (package / "bin").mkdir(parents=True)
    (package / "bin" / "infrabot").symlink_to(INFRABOT)
    config = tmp_path / "infrabot.yaml"
    config.write_text(out["configFile"]["text"])
    text = out["unitText"].replace(out["package"], str(package))
    text = text.replace(out["configFile"]["path"], str(config))
    unit = tmp_path / "infrabot.service"
    unit.write_text(text)
    lines: dict[str, list[str]] = {}
    for line in text.split("[Service]")[1].splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            lines.setdefault(key, []).append(value)
    return unit, lines


def test_unit_file_passes_systemd_and_its_commands_run(tmp_path: Path) -> None:
    out = evaluate(tmp_path, minimal(tmp_path))
    unit, lines = installed_unit(tmp_path, out)
    # systemd's own parser: no unknown key or bad value (those are warnings on stderr).
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    # systemd's exposure score, 0 (locked down) to 10 (fully exposed); 2.0 and less is "OK".
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert security.returncode == 0, security.stdout
    assert re.search(r"Overall exposure level for infrabot\.service: [01]\.\d OK", security.stdout)
    # The start-up check, exactly as the unit runs it, against the real CLI.
    (pre,) = lines["ExecStartPre"]
    checked = subprocess.run(pre.split(), capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith(": OK")
    (start,) = lines["ExecStart"]
    assert start.split()[1:3] == ["run", "--config"]
    helped = subprocess.run([*start.split(), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--config" in helped.stdout


def test_example_config_as_settings_passes_check_config(tmp_path: Path) -> None:
    settings = example_settings(tmp_path)
    out = evaluate(tmp_path, settings)
    assert out["failedAssertions"] == []
    text = out["configFile"]["text"]
    rendered = yaml.safe_load(text)
    assert rendered == {**settings, "state": {**settings["state"], "data_dir": "/var/lib/infrabot"}}
    done = check_config(tmp_path, text)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_module_fills_state_ssh_firewall_and_environment(tmp_path: Path) -> None:
    settings = minimal(tmp_path)
    settings["http"] = {"host": "::", "port": 9099}
    settings["deploy"] = {"runner": "root@localhost", "checkout": "/srv/infra"}
    settings["backups"] = {"checks": [], "ssh": {"known_hosts": "/etc/ssh/ssh_known_hosts"}}
    options = """
      stateDir = "/var/lib/bots/infrabot";
      openFirewall = true;
      environmentFile = "/run/agenix/infrabot-env";
      ssh.keyFile = "/run/agenix/infrabot-ssh-key";
      ssh.knownHosts = [ "pluto.nixos.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPluto" ];
    """
    out = evaluate(tmp_path, settings, options)
    assert out["failedAssertions"] == []
    rendered = yaml.safe_load(out["configFile"]["text"])
    assert rendered["state"] == {"data_dir": "/var/lib/bots/infrabot"}
    assert rendered["deploy"]["ssh"] == {
        "known_hosts": "/etc/infrabot/known_hosts",
        "client_keys": ["/run/agenix/infrabot-ssh-key"],
    }
    # A section's own ssh settings win.
    assert rendered["backups"]["ssh"] == {
        "known_hosts": "/etc/ssh/ssh_known_hosts",
        "client_keys": ["/run/agenix/infrabot-ssh-key"],
    }
    assert out["etc"]["infrabot/known_hosts"] == {
        "text": "pluto.nixos.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPluto\n",
        "mode": "0444",
    }
    unit = out["service"]["serviceConfig"]
    assert (unit["StateDirectory"], unit["WorkingDirectory"]) == (
        "bots/infrabot",
        "/var/lib/bots/infrabot",
    )
    assert unit["EnvironmentFile"] == "/run/agenix/infrabot-env"
    assert unit["PrivateUsers"] is True and "SupplementaryGroups" not in unit
    assert out["firewall"] == [9099]
    # The bot accepts what the module wrote (state dir and key paths are not opened by
    # check-config; the secrets are).
    done = check_config(tmp_path, out["configFile"]["text"])
    assert done.returncode == 0, done.stderr


BAD_VALUE = (
    f"{OPT}.settings.matrix.access_token: a secret value would be copied into the "
    "world-readable Nix store; give access_token_file (e.g. an agenix secret's path) or "
    f"access_token_env (with {OPT}.environmentFile) instead"
)
# (id, settings over `minimal`, services.infrabot definitions, the module's messages)
BAD: list[tuple[str, Any, str, list[str]]] = [
    (
        "token-and-token-file",
        {"matrix": {"access_token": "syt_abc"}},
        "",
        [
            f"{OPT}.settings.matrix: give only one of access_token, access_token_file, "
            "as the bot accepts exactly one form of a secret",
            # A value is also a secret in the store.
            BAD_VALUE,
        ],
    ),
    (
        "token-value-in-store",
        {"matrix": {"access_token_file": None, "access_token": "syt_abc"}},
        "",
        [BAD_VALUE],
    ),
    (
        "secret-file-in-store",
        {"alertmanager": {"auth": {"bearer_token_file": "/nix/store/abc-token"}}},
        "",
        [
            f"{OPT}.settings.alertmanager.auth.bearer_token_file: /nix/store/abc-token is in the "
            "Nix store, readable by every user; point it at a file outside the store "
            "(agenix: config.age.secrets.<name>.path, as a string)",
        ],
    ),
    (
        "file-and-env-in-a-list",
        {
            "backups": {
                "checks": [
                    {"name": "a", "kind": "file_age"},
                    {"name": "b", "password_file": "/run/agenix/pg", "password_env": "PG"},
                ]
            }
        },
        "",
        [
            f"{OPT}.settings.backups.checks[1]: give only one of password_file, password_env, "
            "as the bot accepts exactly one form of a secret",
        ],
    ),
    (
        "any-key-file-and-env",
        {"later_feature": {"api_key_file": "/run/agenix/k", "api_key_env": "K"}},
        "",
        [
            f"{OPT}.settings.later_feature: give only one of api_key_file, api_key_env, "
            "as the bot accepts exactly one form of a secret",
        ],
    ),
    (
        "ssh-client-key-in-store",
        {"deploy": {"ssh": {"client_keys": ["/run/agenix/ok", "/nix/store/abc-id_ed25519"]}}},
        "",
        [
            f"{OPT}.settings.deploy.ssh.client_keys: a private key in the Nix store is readable "
            "by every user; give the path of a file outside the store "
            "(agenix: config.age.secrets.<name>.path, as a string)",
        ],
    ),
    (
        "no-matrix",
        {"matrix": None},
        "",
        [
            f"{OPT}.settings.matrix is required: homeserver, user_id, rooms and access_token_file "
            "(or password_file), as in config.example.yaml",
        ],
    ),
    (
        "firewall-on-loopback",
        {},
        "openFirewall = true;",
        [
            f"{OPT}.openFirewall opens port 8080, but the bot listens on 127.0.0.1 only "
            '(settings.http.host); set settings.http.host = "0.0.0.0" (or "::")',
        ],
    ),
    (
        "firewall-without-http",
        {"http": {"enabled": False, "host": "::"}},
        "openFirewall = true;",
        [
            f"{OPT}.openFirewall opens the HTTP port, but settings.http.enabled is false",
        ],
    ),
    (
        "state-dir-outside-var-lib",
        {},
        'stateDir = "/srv/infrabot";',
        [
            f"{OPT}.stateDir = /srv/infrabot: it must be below /var/lib/ (systemd StateDirectory=)",
        ],
    ),
    (
        "data-dir-outside-state-dir",
        {"state": {"data_dir": "/srv/infrabot"}},
        "",
        [
            f"{OPT}.settings.state: data_dir and path must be below {OPT}.stateDir "
            "(/var/lib/infrabot), the only place the service may write (ProtectSystem=strict)",
        ],
    ),
    (
        "known-hosts-twice",
        {},
        'ssh.knownHosts = [ "h ssh-ed25519 AAAA" ]; ssh.knownHostsFile = "/etc/kh";',
        [
            f"{OPT}.ssh: give knownHosts or knownHostsFile, not both",
        ],
    ),
    (
        "ssh-key-in-store",
        {},
        "ssh.keyFile = ./id_ed25519;",
        [
            f"{OPT}.ssh.keyFile is in the Nix store, readable by every user; point it at a file "
            "outside the store (agenix: config.age.secrets.<name>.path)",
        ],
    ),
    (
        "environment-file-in-store",
        {},
        'environmentFile = "/nix/store/abc-env";',
        [
            f"{OPT}.environmentFile is in the Nix store, readable by every user; point it at a "
            "file outside the store",
        ],
    ),
]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("settings", "options", "messages"),
    [pytest.param(s, o, m, id=i) for i, s, o, m in BAD],
)
def test_bad_settings_fail_with_the_modules_message(
    tmp_path: Path, settings: dict[str, Any], options: str, messages: list[str]
) -> None:
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "id_ed25519").write_text("not a real key\n")
    failed = evaluate(tmp_path, merge(minimal(tmp_path), settings), options, ".failedAssertions")
    assert failed == messages


def secret_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Names of the SecretStr fields of a config model and of every model nested in it."""
    if model in seen:
        return set()
    seen.add(model)
    found: set[str] = set()

    def visit(annotation: Any, name: str) -> None:
        if annotation is SecretStr:
            found.add(name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(secret_fields(annotation, seen))
        for arg in typing.get_args(annotation):
            visit(arg, name)

    for name, field in model.model_fields.items():
        visit(field.annotation, name)
    return found


def ssh_sections() -> set[str]:
    return {
        key
        for key, model in load_registry().sections.items()
        if any(
            f.annotation is SshSettings or SshSettings in typing.get_args(f.annotation)
            for f in model.model_fields.values()
        )
    }


def test_every_secret_and_ssh_section_of_the_bot_is_known_to_the_module(tmp_path: Path) -> None:
    seen: set[type[BaseModel]] = set()
    secrets = secret_fields(CoreConfig, seen)
    for model in load_registry().sections.values():
        secrets |= secret_fields(model, seen)
    assert {"access_token", "password", "bearer_token"} <= secrets
    # Each secret given twice, in a section of its own: each must be refused by name.
    settings = minimal(tmp_path)
    for key in sorted(secrets):
        settings[f"probe_{key}"] = {f"{key}_file": "/run/agenix/x", f"{key}_env": "X"}
    failed = evaluate(tmp_path, settings, attr=".failedAssertions")
    assert failed == [
        f"{OPT}.settings.probe_{key}: give only one of {key}_file, {key}_env, "
        "as the bot accepts exactly one form of a secret"
        for key in sorted(secrets)
    ]
    # Every section connecting over SSH gets the module's known_hosts and key.
    sections = ssh_sections()
    assert {"backups", "deploy"} <= sections
    settings = minimal(tmp_path)
    settings.update({key: {} for key in sections})
    out = evaluate(
        tmp_path, settings, 'ssh.keyFile = "/run/agenix/k"; ssh.knownHostsFile = "/etc/kh";'
    )
    rendered = yaml.safe_load(out["configFile"]["text"])
    for key in sections:
        assert rendered[key]["ssh"] == {"known_hosts": "/etc/kh", "client_keys": ["/run/agenix/k"]}


def test_vendored_nixpkgs_lib_is_complete() -> None:
    vendor = NIX_LIB.parent
    assert (
        "MIT" in (vendor / "COPYING").read_text()
        or "Permission" in (vendor / "COPYING").read_text()
    )
    assert "de42d44212d207476489bce163375d8306a26d59" in (vendor / "SOURCE").read_text()


def readme_nix_blocks() -> tuple[str, str]:
    """The README's flake (the one with `outputs`) and its host module (`services.infrabot`)."""
    blocks = re.findall(r"```nix\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    flake = [b for b in blocks if "outputs" in b and "nixosConfigurations" in b]
    host = [b for b in blocks if "services.infrabot" in b and "outputs" not in b]
    assert len(flake) == 1 and len(host) == 1, f"expected one flake and one host block in {blocks}"
    return flake[0], host[0]


def test_readme_flake_and_host_evaluate_and_pass_check_config(tmp_path: Path) -> None:
    flake, host_module = readme_nix_blocks()
    (tmp_path / "flake.nix").write_text(flake)
    done = subprocess.run(
        ["nix-instantiate", "--parse", str(tmp_path / "flake.nix")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "infrabot.nixosModules.default" in flake and "agenix.nixosModules.default" in flake
    host = tmp_path / "hosts" / "bot"
    host.mkdir(parents=True)
    (host / "infrabot.nix").write_text(host_module)
    out = nix_eval(f"import {EVAL} {{ modules = [ {host / 'infrabot.nix'} ]; }}", tmp_path)
    assert out["failedAssertions"] == []
    assert out["firewall"] == [8080]
    text = out["configFile"]["text"]
    rendered = yaml.safe_load(text)
    assert list(rendered["hosts"]) == ["critical", "non-critical"]
    assert rendered["deploy"]["ssh"] == {
        "known_hosts": "/etc/infrabot/known_hosts",
        "client_keys": ["/run/agenix/infrabot-ssh-key"],
    }
    for secret in set(re.findall(r"/run/agenix/[\w.-]+", text)):
        text = text.replace(secret, secret_file(tmp_path, Path(secret).name))
    done = check_config(tmp_path, text)
    assert done.returncode == 0, done.stderr
