"""The Makefile's virtualenv bootstrap: `make run` is the first command of the README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _make(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={sys.executable}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_venv_left_without_pip_is_made_again(tmp_path: Path) -> None:
    """What `python3 -m venv` leaves on Debian without python3-venv: bin/python, no pip. Once the
    package is installed, the next `make` must make the venv again, not run pip that is absent."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert (venv / "bin" / "python").exists() and not (venv / "bin" / "pip").exists()

    planned = _make(venv, "--dry-run", "venv")
    assert planned.returncode == 0, planned.stderr
    assert f"{sys.executable} -m venv --clear {venv}" in planned.stdout.splitlines()

    made = _make(venv, str(venv / "bin" / "pip"))
    assert made.returncode == 0, made.stderr
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], check=False)
    assert pip.returncode == 0


def test_a_venv_with_pip_is_kept(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    planned = _make(venv, "--dry-run", "venv")
    assert planned.returncode == 0, planned.stderr
    assert not [line for line in planned.stdout.splitlines() if " -m venv " in line]
