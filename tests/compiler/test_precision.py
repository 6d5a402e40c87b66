"""compile_sparse in bfloat16 and float16: a model in bfloat16, a float32 model under
torch.autocast, float16 rewritten only where the CPU computes it natively, and a wrong dtype
refused outside autocast. bfloat16 results are held to no worse than 3x eager bfloat16's own
error against float32."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import groupsparse as gs
from groupsparse.runtime import kernels
from tests.sparsify import group_sparsify, max_relative_error

BF16 = kernels.kernel_of("grouped", "conv2d", "cpu").unavailable(torch.bfloat16)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.GELU(), nn.Linear(64, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    group_sparsify(model, 0.75, 8, seed=seed)
    return model


def _errors(low: torch.Tensor, eager_low: torch.Tensor, reference: torch.Tensor):
    return (max_relative_error(low.float(), reference),
            max_relative_error(eager_low.float(), reference))  # fmt: skip


@pytest.mark.parametrize("kernel", ["grouped", "torch_ops", "loop"])
def test_a_bfloat16_model_compiles_and_runs_in_bfloat16(kernel):
    model = _model()
    low = copy.deepcopy(model).to(torch.bfloat16)
    fast = gs.compile_sparse(low, torch.randn(1, 8, 8, 8).bfloat16(), decide="always",
                             kernel=kernel)  # fmt: skip
    assert fast.report.rewritten == ["0", "3", "6", "8"]
    assert {row.kernel for row in fast.report if row.decision == "sparse"} <= {kernel, "torch_ops"}
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        out = fast(x.bfloat16())
        assert out.dtype == torch.bfloat16
        ours, eager = _errors(out, low(x.bfloat16()), model(x))
    assert ours <= 3 * eager


@pytest.mark.skipif(BF16 is not None, reason=str(BF16))
def test_bfloat16_runs_the_cxx_kernels_where_brgemm_takes_it():
    fast = gs.compile_sparse(_model().to(torch.bfloat16), torch.randn(1, 8, 8, 8).bfloat16(),
                             decide="always")  # fmt: skip
    assert {row.kernel for row in fast.report if row.decision == "sparse"} == {"grouped"}
    assert "torch.ops.groupsparse.conv2d.default" in fast.code


def test_a_float32_model_under_autocast_runs_its_layers_in_bfloat16():
    model = _model(1)
    x = torch.randn(3, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = gs.compile_sparse(model, torch.randn(1, 8, 8, 8), decide="always")
        with torch.no_grad():
            out, eager = fast(x), model(x)
    assert out.dtype == eager.dtype == torch.bfloat16
    assert ".to(torch.bfloat16)" in fast.code  # the input cast, as autocast casts a conv's
    weights = [b for name, b in fast.named_buffers() if name.endswith("_weight")]
    assert weights and all(w.dtype == torch.bfloat16 for w in weights)
    with torch.no_grad():
        ours, eager_error = _errors(out, eager, model(x))
    assert ours <= 3 * eager_error


def test_outside_autocast_a_float32_layer_refuses_bfloat16_input():
    fast = gs.compile_sparse(_model(), torch.randn(1, 8, 8, 8), decide="always")
    with pytest.raises(TypeError, match="the input is torch.bfloat16 but the layer was compiled"):
        fast(torch.randn(1, 8, 8, 8).bfloat16())


def test_float16_is_rewritten_only_where_the_cpu_computes_it():
    native = kernels.kernel_of("grouped", "conv2d", "cpu").unavailable(torch.float16) is None
    fast = gs.compile_sparse(_model().half(), torch.randn(1, 8, 8, 8).half(), decide="always")
    if native:
        assert fast.report.rewritten == ["0", "3", "6", "8"]
    else:
        assert fast.report.rewritten == []
        assert all("float16 runs natively only with AVX512-FP16 or AMX-FP16" in row.reason
                   for row in fast.report)  # fmt: skip


@st.composite
def _layers(draw):
    return {
        "conv": draw(st.booleans()),
        "channels": draw(st.sampled_from([4, 16, 24])),
        "out": draw(st.sampled_from([8, 16, 40])),
        "group_size": draw(st.sampled_from([4, 8])),
        "sparsity": draw(st.sampled_from([0.5, 0.75, 0.9])),
        "kernel": draw(st.sampled_from(["grouped", "torch_ops"])),
        "autocast": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
    }


@settings(max_examples=20, deadline=None)
@given(_layers())
def test_property_bfloat16_layers_match_eager_bfloat16(case):
    """Random conv and linear layers in bfloat16 (as a bfloat16 model or under autocast)."""
    torch.manual_seed(case["seed"])
    if case["conv"]:
        layer = nn.Conv2d(case["channels"], case["out"], 3, padding=1)
        shape = (2, case["channels"], 7, 9)
    else:
        layer = nn.Linear(case["channels"] * 4, case["out"])
        shape = (5, case["channels"] * 4)
    model = nn.Sequential(layer, nn.ReLU()).eval()
    group_sparsify(model, case["sparsity"], case["group_size"], seed=case["seed"])
    x = torch.randn(shape)
    with torch.no_grad():
        reference = model(x)
        if case["autocast"]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast = gs.compile_sparse(model, x, decide="always", kernel=case["kernel"])
                out, eager = fast(x), model(x)
        else:
            low = copy.deepcopy(model).to(torch.bfloat16)
            fast = gs.compile_sparse(low, x.bfloat16(), decide="always", kernel=case["kernel"])
            out, eager = fast(x.bfloat16()), low(x.bfloat16())
    assert fast.report.rewritten == ["0"]
    ours, eager_error = _errors(out, eager, reference)
    assert ours <= max(3 * eager_error, 2**-7)
