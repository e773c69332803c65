"""deploy/make-venv.sh: which interpreter `make` builds the virtual environment with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "make-venv.sh"
DISTRIBUTION = Path("/usr/bin/python3")


def make_venv(venv: Path, *python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(venv), *python], capture_output=True, text=True, timeout=120
    )


def usable(python: Path) -> bool:
    check = (
        "import os, sys, sysconfig, ensurepip; assert sys.version_info >= (3, 11);"
        " assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))"
    )
    return python.exists() and subprocess.run([str(python), "-c", check]).returncode == 0


@pytest.mark.skipif(not usable(DISTRIBUTION), reason="no usable /usr/bin/python3 here")
def test_the_distributions_python_comes_first(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = make_venv(venv)
    assert done.returncode == 0, done.stderr
    home = dict(
        line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if line
    )["home"]
    assert Path(home) == DISTRIBUTION.parent
    assert "from /usr/bin/python3" in done.stderr


def test_an_interpreter_that_is_not_there_stops_with_a_one_line_reason(tmp_path: Path) -> None:
    done = make_venv(tmp_path / "venv", "/nonexistent/python3")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "make-venv: no usable Python 3.11+ (set PY=/path/to/python3.11 or install"
        " python3-venv and python3-dev)"
    ]
    assert not (tmp_path / "venv").exists()
