"""What the Dockerfile runs, checked without Docker: a fresh venv, `pip install .`, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_config import example_config

ROOT = Path(__file__).resolve().parent.parent


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
    subprocess.run([*pip, str(ROOT)], check=True, timeout=600, capture_output=True)
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
