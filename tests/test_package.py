"""What the Dockerfile runs, checked without Docker: a fresh venv, `pip install .`, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import example_config

ROOT = Path(__file__).resolve().parent.parent


# A fresh venv installs every dependency from the index: minutes on a busy 2-core machine.
@pytest.mark.timeout(900)
def test_fresh_install_provides_the_cli(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, str(ROOT)], check=True, timeout=840, capture_output=True)
    # The product only: no dev stack, no test extras, and the CLI works without them.
    python = str(venv / "bin" / "python")
    probe = "import importlib.util as u; print(u.find_spec('devstack'), u.find_spec('moto'))"
    found = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == ["None", "None"]
    helped = subprocess.run(
        [str(venv / "bin" / "infrabot"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0 and "check-config" in helped.stdout
    config = example_config(tmp_path)
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
