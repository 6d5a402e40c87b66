"""benchmarks/sparse_formats.py: CSR and BSR layers compute what the pruned dense layers
compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs
from benchmarks import sparse_formats as baselines
from tests.sparsify import max_relative_error

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def _pruned(model: nn.Module, pattern: str, **pattern_args) -> nn.Module:
    gs.prune(model, pattern=pattern, sparsity=0.75, **pattern_args)
    return model.eval()


@pytest.mark.parametrize("layout", ["csr", "bsr"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "conv",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2, "bias": False},
        {"kernel_size": (1, 3), "stride": (2, 1), "padding": (0, 1)},
    ],
    ids=["3x3", "strided-dilated-nobias", "1x3"],
)
def test_conv2d_equals_dense(layout, batch, conv):
    torch.manual_seed(0)
    model = _pruned(nn.Sequential(nn.Conv2d(16, 32, **conv), nn.ReLU()), "block", block=(16, 16))
    sparse, how = baselines.to_sparse_layout(model, ["0"], layout)
    assert how == {"0": layout}
    x = torch.randn(batch, 16, 11, 9)
    with torch.no_grad():
        assert max_relative_error(sparse(x), model(x)) < 1e-5


@pytest.mark.parametrize("layout", ["csr", "bsr"])
@pytest.mark.parametrize("shape", [(5, 64), (2, 7, 64)])
def test_linear_equals_dense_and_output_is_contiguous(layout, shape):
    torch.manual_seed(0)
    model = _pruned(nn.Sequential(nn.Linear(64, 48)), "block", block=(16, 16))
    sparse, _ = baselines.to_sparse_layout(model, ["0"], layout)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = sparse(x)
        assert max_relative_error(out, model(x)) < 1e-5
    assert out.shape == (*shape[:-1], 48) and out.is_contiguous()  # transformers .view() it


def test_layers_the_layout_cannot_take_stay_dense_and_say_why():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 16, 3, padding="same")
    )
    sparse, how = baselines.to_sparse_layout(model, ["0", "1", "2"], "bsr")
    assert how["0"].startswith("dense: 8x27 weight is not a multiple of the 16x16 block")
    assert how["1"].startswith("dense: grouped conv")
    assert how["2"].startswith("dense: padding 'same'")
    assert all(isinstance(sparse[i], nn.Conv2d) for i in range(3))
    _, how = baselines.to_sparse_layout(model, ["0"], "csr")
    assert how == {"0": "csr"}


def test_model_is_not_changed():
    model = nn.Sequential(nn.Linear(32, 32))
    baselines.to_sparse_layout(model, ["0"], "csr")
    assert isinstance(model[0], nn.Linear)


def test_probes():
    kernels = baselines.probe_cpu_kernels()
    assert (
        kernels["csr sparse.mm"] == "ok" and kernels["csr addmm"] == "ok"
    )  # the bench needs these
    assert set(kernels) == {
        f"{layout} {op}"
        for layout in ("csr", "bsr")
        for op in ("sparse.mm", "addmm", "matmul", "F.linear")
    }
    why = baselines.nm_cpu_kernel()
    assert why is None or "to_sparse_semi_structured" in why
