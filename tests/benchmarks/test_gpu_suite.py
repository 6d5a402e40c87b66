"""benchmarks/suites/gpu.py on the CPU: its command line, its dry run (the same harness on
small models), and the pruning whose numbers it reports."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

import groupsparse as gs
from benchmarks.models import prune_keeping_scale
from benchmarks.provenance import REPO
from benchmarks.suites import gpu


def _benchmarks(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_help_runs_without_a_gpu():
    result = _benchmarks("gpu", "--help")
    assert result.returncode == 0
    assert "--dry-run" in result.stdout and "--out" in result.stdout


def test_without_a_gpu_it_points_to_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = _benchmarks("gpu", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--dry-run" in result.stdout


def test_dry_run_measures_end_to_end_and_per_layer(tmp_path):
    threads = torch.get_num_threads()
    try:
        code = gpu.main(["--dry-run", "--models", "small-cnn", "--sparsities", "0.75",
                         "--variants", "dense,groupsparse,layers,dense-graph",
                         "--out", str(tmp_path)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["suite"] == "gpu" and data["settings"]["dry_run"] and data["finished"]
    assert data["ceilings"]["dense_gemm_tflops"] > 0
    end_to_end = {r["variant"]: r for r in data["records"] if r["variant"] != "layers"}
    assert set(end_to_end) == {"dense", "groupsparse"}  # no CUDA graph on the CPU
    ours = end_to_end["groupsparse"]
    assert ours["error"] is None and ours["check"]["passed"] and ours["ms"] > 0
    assert ours["rewritten_layers"] >= 1 and len(ours["report"]) == ours["layers"]
    layers = [r for r in data["records"] if r["variant"] == "layers"]
    assert [r["layer"] for r in layers][:2] == ["features.0", "features.3"]
    measured = [r for r in layers if "variants" in r]
    assert measured and all(r["variants"]["kernel:grouped"]["check"]["passed"] for r in
                            measured if "kernel:grouped" in r["variants"])  # fmt: skip
    assert {row["variant"] for row in data["summary"]} == {"dense", "groupsparse"}


def test_pruning_keeps_the_scale_of_a_deep_stack():
    """Ten layers pruned to 90% shrink the output ~10x (VGG-16's 13 convs underflowed in half
    precision); scaled back to their dense norms they keep its scale, and the pruned weights
    stay zero."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 256, bias=False) for _ in range(10)]
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=256**-0.5)
    model = torch.nn.Sequential(*layers)
    x = torch.randn(64, 256)
    with torch.no_grad():
        dense_scale = model(x).std().item()
        plain = copy.deepcopy(model)
        gs.prune(plain, pattern="group", sparsity=0.9, group_size=16)
        masks = prune_keeping_scale(model, 0.9, 16)
        for key, mask in masks.items():
            assert torch.equal(model.get_parameter(key) != 0, mask)
        assert plain(x).std().item() < dense_scale / 10
        assert 0.3 < model(x).std().item() / dense_scale < 3


def test_record_layer_inputs():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 8)
    recorded = gpu.record_layer_inputs(model, (x,), ["0", "2"])
    assert torch.equal(recorded["0"], x)
    assert torch.equal(recorded["2"], torch.relu(model[0](x)).detach())
