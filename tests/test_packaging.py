"""A fresh install prints nothing on import: numpy is a dependency, since torch warns
"Failed to initialize NumPy" on import without it (torch itself does not require numpy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["dependencies"]


def test_numpy_is_a_dependency():
    names = [entry.split(">")[0].split("=")[0].split("<")[0].strip() for entry in _dependencies()]
    assert "numpy" in names


def test_torch_warns_on_import_without_numpy():
    """Why numpy is needed: with numpy missing, importing torch prints the warning."""
    code = "import sys; sys.modules['numpy'] = None; import torch"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300
    )
    assert "Failed to initialize NumPy" in result.stderr


def test_importing_groupsparse_prints_nothing():
    result = subprocess.run(
        [sys.executable, "-c", "import groupsparse, groupsparse.cli"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
