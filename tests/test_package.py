"""What the Dockerfile runs, checked without Docker: a fresh venv, `pip install .`, the CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_config import example_config

ROOT = Path(__file__).resolve().parent.parent

# Run by the fresh venv's Python: imports every module of the product, runs `check-config`, and
# reports the distributions `infrabot` requires (transitively, with the extras it asks for; the
# test extra left out) and which distribution provides each importable top-level name.
PROBE = """
import importlib, importlib.metadata as md, json, pkgutil, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import bot, commands
for package in (bot, commands):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
from bot.cli import main
code = main(["check-config", "--config", sys.argv[1]])
required, todo = set(), [("infrabot", frozenset())]
while todo:
    name, extras = todo.pop()
    key = (canonicalize_name(name), extras)
    if key in required:
        continue
    required.add(key)
    for text in md.requires(name) or ():
        req = Requirement(text)
        if req.marker is None or any(
            req.marker.evaluate({"extra": extra}) for extra in ("", *extras)
        ):
            todo.append((req.name, frozenset(req.extras)))
owners = {k: [canonicalize_name(d) for d in v] for k, v in md.packages_distributions().items()}
print(json.dumps({
    "code": code,
    "required": sorted({name for name, _ in required}),
    "owners": owners,
    "loaded": sorted(sys.modules),
}))
"""


def imported_names() -> set[str]:
    """Top-level names the product's source imports (absolute imports only), stdlib left out."""
    names: set[str] = set()
    for path in [*(ROOT / "bot").rglob("*.py"), *(ROOT / "commands").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"bot", "commands", "__future__"}


@pytest.mark.timeout(300)
def test_fresh_install_provides_the_cli(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies are the test venv's (installing them afresh took a minute of the suite's
    # budget); instead of a fresh download, the probe below proves that everything the product
    # imports is something pyproject.toml requires.
    (Path(purelib) / "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(ROOT)], check=True, timeout=240, capture_output=True)
    installed = subprocess.run(
        [python, "-m", "pip", "show", "-f", "infrabot"], capture_output=True, text=True, check=True
    ).stdout
    assert "bot/cli.py" in installed and "commands/" in installed
    assert "devstack/" not in installed and "tests/" not in installed

    config = example_config(tmp_path)
    probed = subprocess.run(
        [python, "-c", PROBE, str(config)], cwd=tmp_path, capture_output=True, text=True
    )
    assert probed.returncode == 0, probed.stderr
    report = json.loads(probed.stdout.splitlines()[-1])
    assert report["code"] == 0
    owners, names = report["owners"], imported_names()
    unknown = {name for name in names if name not in owners}
    assert not unknown, f"imported by the product but not installed: {unknown}"
    undeclared = {
        (name, dist) for name in names for dist in owners[name] if dist not in report["required"]
    }
    assert not undeclared, f"imported but not required by pyproject.toml: {undeclared}"
    assert not {"moto", "pytest", "devstack", "tests"} & set(report["loaded"])

    helped = subprocess.run(
        [str(venv / "bin" / "infrabot"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "check-config" in helped.stdout
    result = subprocess.run(
        [str(venv / "bin" / "infrabot"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile and "USER infrabot" in dockerfile
    assert '"run", "--config", "/config/config.yaml"' in dockerfile and "/healthz" in dockerfile
