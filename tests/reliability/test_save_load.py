"""Save and load: a compiled module's state (plans, packed weights, the dense layers around
them) goes through ``state_dict()`` or ``torch.save(compiled)`` and gives identical outputs in
a fresh Python process; a model with a Pruner attached checkpoints (the model's, the
optimizer's and the Pruner's state dicts) and resumes to the same masks.

``torch.save(compiled)`` pickles the module; load it with ``torch.load(path,
weights_only=False)`` in a process where groupsparse is installed (unpickling imports it, which
registers the custom operators). A state_dict loads into a module compiled from the same
architecture with the same masks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.runtime import kernels

from .fuzz_models import build_model, make_masks

ROOT = Path(__file__).resolve().parents[2]

# conv (strided, BN, ReLU), a residual conv, a concatenation, then flatten and two linears
SPEC = {
    "family": "image",
    "input_shape": (3, 8, 8),
    "blocks": [
        {"kind": "conv", "in_channels": 3, "out_channels": 12, "kernel": (3, 3), "stride": (2, 2),
         "padding": (1, 1), "dilation": (1, 1), "bias": True, "batch_norm": True, "activation": "relu"},
        {"kind": "residual", "conv": {"in_channels": 12, "out_channels": 12, "kernel": (3, 3),
         "stride": (1, 1), "padding": "same", "dilation": (1, 1), "bias": False},
         "batch_norm": True, "activation": "gelu"},
        {"kind": "concat", "conv": {"in_channels": 12, "out_channels": 4, "kernel": (1, 1),
         "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "bias": True}, "activation": "relu"},
    ],
    "head": "flatten",
    "linears": [
        {"in_features": 16 * 4 * 4, "out_features": 20, "bias": True, "activation": "relu"},
        {"in_features": 20, "out_features": 5, "bias": False, "activation": "none"},
    ],
    "pruning": [{"pattern": "group", "sparsity": 0.75, "group_size": 4, "balanced": True}],
}  # fmt: skip


def _spec(seed: int) -> dict:
    return {**SPEC, "seed": seed}


def _run_fresh(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter that can import the tests; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _compiled(seed: int = 0):
    model = build_model(_spec(seed))
    masks = make_masks(model, _spec(0))  # the same masks whatever the weights
    return (
        model,
        masks,
        gs.compile_sparse(model, torch.randn(2, 3, 8, 8), masks=masks, decide="always"),
    )


def test_state_dict_and_pickled_module_give_identical_outputs_in_a_fresh_process(tmp_path):
    _, masks, fast = _compiled(seed=0)
    assert len(fast.report.rewritten) == len(fast.report.rows) == 5
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = fast(x)
    torch.save({"x": x, "expected": expected, "masks": masks}, tmp_path / "io.pt")
    torch.save(fast.state_dict(), tmp_path / "state.pt")
    torch.save(fast, tmp_path / "compiled.pt")
    threads = torch.get_num_threads()

    # one fresh process: first the pickled module (its file needs groupsparse, not the tests),
    # then the state_dict loaded into a module compiled from other weights with the same masks
    output = _run_fresh(
        f"""
import sys
import torch
torch.set_num_threads({threads})
io = torch.load("io.pt")
fast = torch.load("compiled.pt", weights_only=False)
with torch.no_grad():
    print(type(fast).__name__, torch.equal(fast(io["x"]), io["expected"]), fast.report.rewritten)
print("tests imported:", any(name.startswith("tests") for name in sys.modules))

import groupsparse as gs
from groupsparse.runtime import kernels
from tests.reliability.fuzz_models import build_model
from tests.reliability.test_save_load import _spec
other = gs.compile_sparse(build_model(_spec(seed=1)), torch.randn(2, 3, 8, 8), masks=io["masks"], decide="always")
with torch.no_grad():
    before = torch.equal(other(io["x"]), io["expected"])
    other.load_state_dict(torch.load("state.pt", weights_only=True))
    print("state_dict:", before, torch.equal(other(io["x"]), io["expected"]))
""",
        cwd=tmp_path,
    )
    pickled, imported, state = output.strip().splitlines()
    assert pickled == f"SparseModule True {fast.report.rewritten}"
    assert imported == "tests imported: False"
    assert state == "state_dict: False True"


def test_state_dict_holds_the_plans_as_plain_tensors():
    _, _, fast = _compiled()
    state = fast.state_dict()
    weights = [key for key in state if key.endswith("_weight") and "groupsparse_" in key]
    columns = [key for key in state if key.endswith("_columns")]
    assert len(weights) == len(columns) == 5
    assert all(state[key].dtype == torch.int64 for key in columns)
    assert all(type(value) is torch.Tensor for value in state.values())


# -- a Pruner's checkpoint -----------------------------------------------------------------------


def _training_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 36, 4),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = gs.Pruner(
        model, "group", 0.75, "taylor", group_size=4, schedule=gs.Gradual(start=0, end=8, every=2)
    )
    return model, optimizer, pruner


def _train_step(model, optimizer, pruner, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 3, 6, 6, generator=generator)
    y = torch.randint(0, 4, (8,), generator=generator)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    pruner.step()


def test_a_pruner_checkpoint_resumes_to_the_same_masks(tmp_path):
    model, optimizer, pruner = _training_setup()
    for step in range(3):  # stop between two mask updates, with gradients accumulated
        _train_step(model, optimizer, pruner, step)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict(),
        },
        tmp_path / "checkpoint.pt",
    )
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain data only

    resumed_model, resumed_optimizer, resumed = _training_setup(seed=1)  # other initial weights
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["pruner"])
    assert resumed.step_count == pruner.step_count == 3
    assert all(torch.equal(resumed.masks[name], mask) for name, mask in pruner.masks.items())

    for step in range(3, 10):  # through the remaining updates (4, 6, 8) of both runs
        _train_step(model, optimizer, pruner, step)
        _train_step(resumed_model, resumed_optimizer, resumed, step)
        for name, mask in pruner.masks.items():
            assert torch.equal(resumed.masks[name], mask), (step, name)
        for key, value in model.state_dict().items():
            assert torch.equal(resumed_model.state_dict()[key], value), (step, key)
    assert abs(pruner.sparsity - 0.75) < 1e-9
    pruner.remove()
    resumed.remove()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_aotinductor_package_runs_in_a_fresh_process_that_only_imports_groupsparse(
    tmp_path, dtype
):
    """torch.export of a compiled model, AOTInductor's package of it, and a fresh process that
    loads the package after ``import groupsparse`` alone (the ops' C++ kernels registered by
    the import): the same outputs as the compiled module."""
    low = getattr(torch, dtype)
    if kernels.kernel_of("grouped", "conv2d", "cpu").unavailable(low) is not None:
        pytest.skip(kernels.kernel_of("grouped", "conv2d", "cpu").unavailable(low))
    model, masks, _ = _compiled(seed=0)
    fast = gs.compile_sparse(
        model.to(low), torch.randn(2, 3, 8, 8).to(low), masks=masks, decide="always"
    )
    x = torch.randn(4, 3, 8, 8).to(low)
    with torch.no_grad():
        expected = fast(x)
        program = torch.export.export(fast, (x,))
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "model.pt2")
    )
    assert any("groupsparse" in str(node.target) for node in program.graph.nodes)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    # Inductor generates the dense ops around ours: in bfloat16 its rounding can differ by an ulp
    tolerance = 1e-5 if dtype == "float32" else 2**-6
    output = _run_fresh(
        f"TOLERANCE = {tolerance}\n"
        + """
import sys
import torch
import groupsparse
io = torch.load("io.pt")
model = torch._inductor.aoti_load_package("model.pt2")
with torch.no_grad():
    out = model(io["x"])
error = (out.float() - io["expected"].float()).abs().max() / io["expected"].float().abs().max()
print(bool(error < TOLERANCE), float(error))
print("model code imported:", any(name.startswith("tests") for name in sys.modules))
""",
        cwd=tmp_path,
    )
    fits, error, *imported = output.split()
    assert fits == "True", (error, package)
    assert imported == ["model", "code", "imported:", "False"]
