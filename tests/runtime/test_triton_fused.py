"""The fused Triton kernels (runtime/cuda/triton_fused.py) run through Triton's CPU interpreter: same
function as the dense conv2d / linear of the masked weight, for strides, padding, dilation,
batches, group sizes that are not a power of two, kept counts that are not a multiple of the
tile, bias and ReLU. Skipped where Triton is not installed (it comes with torch's CUDA builds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from groupsparse.runtime.cuda import conv_gather_table
from groupsparse.runtime.geometry import conv_output_size
from tests.sparsify import dense_from_groups, random_group_columns

pytest.importorskip("triton")


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the child process of test_kernels_in_triton_interpreter"
)


def test_kernels_in_triton_interpreter():
    """Triton reads TRITON_INTERPRET when it is imported, so the checks below run in a child
    pytest with the interpreter on; this test passes when they all do."""
    if INTERPRETING:
        pytest.skip("this is the child process")
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" in child.stdout


def _index_from_size_one_arrays() -> None:
    """Triton 3.6's interpreter turns a scalar into an index with int(array), which NumPy 2.4
    refuses for the 1-element arrays it holds; read the element instead (the interpreter's
    scalars are what a compiled kernel's loop bounds are)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


@pytest.fixture(scope="module")
def fused():
    _index_from_size_one_arrays()
    from groupsparse.runtime.cuda import triton_fused

    assert triton_fused.INTERPRETED
    return triton_fused


# (batch, channels, height, width, groups, G, kept, geometry)
CONV_CASES = [
    (1, 4, 6, 7, 2, 16, 20, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (3, 5, 9, 8, 3, 8, 11, (3, 3, 2, 2, 1, 1, 1, 1, 1, 1)),
    (2, 6, 7, 7, 1, 40, 6, (1, 1, 1, 1, 0, 0, 0, 0, 1, 1)),
    (2, 3, 11, 10, 2, 12, 17, (5, 3, 1, 2, 2, 1, 0, 2, 2, 1)),
]


@needs_interpreter
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_bias, relu", [(True, False), (False, True)])
def test_fused_conv_matches_dense_conv(fused, case, with_bias, relu):
    x, weight, columns, bias, out, expected = _conv_problem(case, with_bias, relu)
    table = conv_gather_table(columns, case[-1], x.shape[2], x.shape[3])
    fused.fused_conv2d(x, weight, table, bias, case[-1], relu, out)
    _check(out, expected)


def _conv_problem(case, with_bias, relu):
    """(x, weight, columns, bias, NaN-filled out, float64 dense reference) of a conv case."""
    batch, channels, height, width, groups, group_rows, kept, geometry = case
    generator = torch.Generator().manual_seed(hash(case) % 2**31)
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    x = torch.randn(batch, channels, height, width, generator=generator)
    weight = torch.randn(groups, group_rows, kept, generator=generator)
    columns = random_group_columns(groups, channels * kh * kw, kept, generator)
    bias = torch.randn(groups * group_rows, generator=generator) if with_bias else None
    out_h, out_w = conv_output_size(height, width, geometry)
    out = torch.full((batch, groups * group_rows, out_h, out_w), float("nan"))
    dense = dense_from_groups(weight.double(), columns, channels * kh * kw).view(
        -1, channels, kh, kw
    )
    expected = F.conv2d(F.pad(x.double(), (left, right, top, bottom)), dense,
                        None if bias is None else bias.double(), stride=(sh, sw), dilation=(dh, dw))  # fmt: skip
    return x, weight, columns, bias, out, expected.relu() if relu else expected


def _check(out, expected):
    assert not out.isnan().any(), "an output element was not written"
    assert ((out.double() - expected).norm() / expected.norm()).item() < 1e-5


WIDE_CASES = [
    (1, 4, 6, 7, 2, 16, 20, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (2, 5, 9, 12, 3, 8, 13, (3, 3, 1, 1, 2, 2, 2, 2, 2, 2)),
    (2, 3, 8, 9, 1, 24, 30, (3, 5, 1, 1, 1, 2, 0, 3, 1, 1)),
    (3, 6, 5, 5, 2, 16, 4, (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)),
    (1, 2, 20, 17, 1, 16, 18, (3, 3, 1, 1, 0, 0, 0, 0, 1, 1)),
]


@needs_interpreter
@pytest.mark.parametrize("case", WIDE_CASES)
@pytest.mark.parametrize("with_bias, relu", [(True, False), (False, True)])
def test_wide_conv_matches_dense_conv(fused, case, with_bias, relu):
    x, weight, columns, bias, out, expected = _conv_problem(case, with_bias, relu)
    plan = fused.wide_plan(case[-1], x.shape[2], x.shape[3], max_junk=1.0)
    assert plan is not None and plan[0] % 16 == 0
    rows, shifts = fused.wide_tables(columns, case[-1], x.shape[1], plan[0])
    fused.wide_conv2d(x, weight, rows, shifts, bias, case[-1], relu, out, plan)
    _check(out, expected)


@needs_interpreter
@pytest.mark.parametrize("case", WIDE_CASES)
def test_wide_source_is_the_padded_image_shifted_per_kernel_column(fused, case):
    """Its definition, in torch ops: the zero-padded image on rows of ``pitch`` pixels, each
    row shifted left by ``kx * dw`` for kernel column ``kx``, zeros coming in on the right."""
    batch, channels, height, width, *_, geometry = case
    _, kw, _, _, top, _, left, _, _, dw = geometry
    x = torch.randn(batch, channels, height, width)
    pitch, padded_height, _ = fused.wide_plan(geometry, height, width, max_junk=1.0)
    padded = torch.zeros(batch, channels, padded_height, 2 * pitch)
    rows, cols = min(height, padded_height - top), min(width, pitch - left)
    padded[:, :, top : top + rows, left : left + cols] = x[:, :, :rows, :cols]
    expected = torch.stack(
        [padded[..., kx * dw : kx * dw + pitch].flatten(2) for kx in range(kw)], dim=1
    )
    assert torch.equal(fused.wide_source(x, geometry, pitch, padded_height), expected)


@needs_interpreter
@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (33, 64), (70, 3)])
def test_transpose_is_x_t(fused, shape):
    x = torch.randn(*shape)
    out = fused.transpose(x)
    assert out.is_contiguous() and torch.equal(out, x.t())


def test_wide_plan_applies_to_stride_1_on_images_wide_enough():
    from groupsparse.runtime.cuda.triton_fused import wide_plan

    same = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    assert wide_plan(same, 56, 56) == (64, 58, 58 * 64)
    assert wide_plan(same, 14, 14) == (16, 16, 256)
    assert wide_plan(same, 7, 7) is None  # 7 of 16 columns would be real
    assert wide_plan((3, 3, 2, 2, 1, 1, 1, 1, 1, 1), 56, 56) is None


# (tokens, in_features, groups, G, kept)
LINEAR_CASES = [(5, 40, 2, 16, 20), (33, 64, 3, 24, 7), (1, 17, 1, 130, 17)]


@needs_interpreter
@pytest.mark.parametrize(
    "case", [(2, 6, 7, 7, 1, 40, 6), (3, 20, 4, 4, 3, 16, 9), (1, 8, 5, 3, 2, 130, 8)]
)
@pytest.mark.parametrize("with_bias, relu", [(True, False), (False, True)])
def test_rows_product_is_a_1x1_conv(fused, case, with_bias, relu):
    case = (*case, (1, 1, 1, 1, 0, 0, 0, 0, 1, 1))
    x, weight, columns, bias, out, expected = _conv_problem(case, with_bias, relu)
    batch, channels = x.shape[:2]
    fused.rows_product(
        x.view(batch, channels, -1), weight, columns.reshape(-1).to(torch.int32), bias, relu,
        out.view(batch, out.shape[1], -1), transposed_out=False,
    )  # fmt: skip
    _check(out, expected)


@needs_interpreter
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("with_bias, relu", [(True, True), (False, False)])
def test_fused_linear_matches_dense_linear(fused, case, with_bias, relu, layout, monkeypatch):
    monkeypatch.setattr(fused, "LINEAR_LAYOUT", layout)
    tokens, in_features, groups, group_rows, kept = case
    generator = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(tokens, in_features, generator=generator)
    weight = torch.randn(groups, group_rows, kept, generator=generator)
    columns = random_group_columns(groups, in_features, kept, generator)
    bias = torch.randn(groups * group_rows, generator=generator) if with_bias else None
    out = torch.full((tokens, groups * group_rows), float("nan"))
    fused.fused_linear(x, weight, columns.reshape(-1).to(torch.int32), bias, relu, out)
    expected = F.linear(x.double(), dense_from_groups(weight.double(), columns, in_features),
                        None if bias is None else bias.double())  # fmt: skip
    expected = expected.relu() if relu else expected
    assert not out.isnan().any(), "an output element was not written"
    assert ((out.double() - expected).norm() / expected.norm()).item() < 1e-5
