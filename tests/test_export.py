"""`groupsparse export`: an AOTInductor package (.pt2) of the compiled model that a fresh
process runs after `import groupsparse` alone, computing the masked model; without groupsparse
loading fails naming the missing operator, and `gs.load_package` names every operator the
process lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import groupsparse as gs
from groupsparse import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = """
import torch
from torch import nn


def build():
    model = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 6 * 6, 16))
    return model, (torch.randn(2, 4, 6, 6),)
"""
PRUNE = ["--sparsity", "0.75", "--group-size", "8", "--decide", "always"]


def _run_fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that finds this checkout's groupsparse (not the tests,
    not the model file: the directory holds the package and its inputs only)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """`groupsparse export` of a model file pruned group-wise; beside the package, fresh
    inputs and the masked model's outputs on them."""
    directory = tmp_path_factory.mktemp("export")
    source = tmp_path_factory.mktemp("model") / "tiny_model.py"
    source.write_text(MODEL_FILE)
    spec = f"{source}:build"
    path = directory / "model.pt2"
    assert cli.main(["export", spec, *PRUNE, "--out", str(path)]) == 0
    model, _ = cli.load_model(spec)  # the same weights (seed 0) and masks (magnitude)
    gs.prune(model, "group", 0.75, group_size=8)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.save({"x": x, "expected": model(x)}, directory / "io.pt")
    return path


def test_a_fresh_process_runs_the_package_with_groupsparse_and_no_model_code(package):
    result = _run_fresh(
        """
import sys
import torch
import groupsparse
io = torch.load("io.pt")
model = groupsparse.load_package("model.pt2")
with torch.no_grad():
    out = model(io["x"])
print(float((out - io["expected"]).abs().max() / io["expected"].abs().max()))
print(any("tiny_model" in name or name.startswith("tests") for name in sys.modules))
""",
        cwd=package.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    error, model_code = result.stdout.split()
    assert float(error) < 1e-4
    assert model_code == "False"


def test_without_groupsparse_loading_fails_naming_the_missing_operator(package):
    result = _run_fresh(
        """
import sys
import torch
try:
    torch._inductor.aoti_load_package("model.pt2")
except RuntimeError as error:
    print("refused:", error)
print("groupsparse imported:", "groupsparse" in sys.modules)
""",
        cwd=package.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: Could not find schema for groupsparse::" in result.stdout
    assert "groupsparse imported: False" in result.stdout


def test_load_package_names_every_operator_this_process_lacks(package, tmp_path):
    assert gs.compiler.package.package_operators(package) == [
        "groupsparse::conv2d",
        "groupsparse::linear",
    ]
    # as if written by a groupsparse with other operators, and by a library not imported
    edited = tmp_path / "other.pt2"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("wrapper.json"):
                text = data.decode().replace('"groupsparse::linear"', '"groupsparse::linear_v9"')
                data = text.replace('"groupsparse::conv2d"', '"elsewhere::conv"').encode()
            target.writestr(item, data)
    with pytest.raises(RuntimeError) as caught:
        gs.load_package(edited)
    message = str(caught.value)
    assert f"groupsparse::linear_v9: this groupsparse ({gs.__version__}) does not define" in message
    assert "export the model again with this one" in message
    assert "elsewhere::conv: import the library that defines them first" in message


def test_bad_paths_are_refused_clearly(package, tmp_path):
    with pytest.raises(FileNotFoundError, match="no AOTInductor package"):
        gs.load_package(tmp_path / "missing.pt2")
    not_a_package = tmp_path / "notes.pt2"
    not_a_package.write_text("hello")
    with pytest.raises(ValueError, match="is not an AOTInductor package"):
        gs.load_package(not_a_package)
    with pytest.raises(SystemExit, match="--out must name a .pt2 file"):
        cli.main(["export", "small-cnn", "--out", str(tmp_path / "model.pt")])
    copy = tmp_path / "copy.pt2"
    shutil.copy(package, copy)
    assert callable(gs.load_package(copy))
