"""tools/bench_gpu.py on the CPU: its command line, and the pieces whose numbers it reports
(the group packing fed to the runtime, the torch.sparse baselines) compute what they claim."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    assert "--dry-run" in result.stdout and "--out" in result.stdout


def test_without_a_gpu_it_points_to_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--dry-run" in result.stdout


@pytest.mark.parametrize("group_size", [4, 5])
def test_pack_groups_reproduces_the_pruned_layer(bench, group_size):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(10, 24, generator=generator)
    matrix[torch.rand(10, 24, generator=generator) < 0.6] = 0  # unequal groups: padded
    x = torch.randn(7, 24, generator=generator)

    weight, columns = bench.pack_groups(matrix, group_size)

    from groupsparse.runtime.cpu import torch_ops

    out = torch_ops.grouped_linear(x, weight, columns, None)
    torch.testing.assert_close(out[:, :10], F.linear(x, matrix))
    assert torch.equal(out[:, 10:], torch.zeros_like(out[:, 10:]))


def test_pruning_keeps_the_scale_of_a_deep_stack(bench):
    """Ten layers pruned to 90% shrink the output ~10x (VGG-16's 13 convs underflowed in half
    precision); scaled back to their dense norms they keep its scale, and the pruned weights
    stay zero."""
    import groupsparse as gs

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
        masks = bench._prune_keeping_scale(gs, model, 0.9, 16)
        for key, mask in masks.items():
            assert torch.equal(model.get_parameter(key) != 0, mask)
        assert plain(x).std().item() < dense_scale / 10
        assert 0.3 < model(x).std().item() / dense_scale < 3
