"""The CPU kernels, called through their ops, against the masked dense layer in float64.

Property tests over conv geometries (stride, asymmetric padding, dilation, 1x1 / 1x3 / 3x3 /
5x5 kernels, batch 1..5, channels_last), bias or not, ReLU, a shortcut, 1..4 groups and a
smaller last group; linear on 2-D and 3-D inputs, one token to many; each on every CPU kernel
of the registry (grouped: C++ on brgemm, where it loads; torch_ops, with tiny tiles; loop),
in float32 (max relative error under 1e-4) and bfloat16 (no worse than 3x eager bfloat16's
own error against float32). Then the ops' checks and registrations (opcheck).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from groupsparse.runtime import kernels, tuning
from groupsparse.runtime.cpu import extension

TOLERANCE = 1e-4
CPU_KERNELS = [k.name for k in kernels.KERNELS if k.kind == "conv2d" and k.runs_on("cpu")]
DTYPES = [torch.float32] + (
    [torch.bfloat16] if kernels.kernel_of("grouped", "conv2d", "cpu").unavailable(torch.bfloat16)
    is None else []
)  # fmt: skip


def _group_sparse(rows: int, columns: int, groups: int, kept: int, seed: int):
    """(masked dense weight (groups * G, columns), packed (groups, G, kept), kept columns)."""
    generator = torch.Generator().manual_seed(seed)
    group_rows = rows // groups
    kept_columns = torch.stack(
        [torch.randperm(columns, generator=generator)[:kept].sort().values for _ in range(groups)]
    )
    dense = torch.randn(rows, columns, generator=generator)
    mask = torch.zeros(rows, columns, dtype=torch.bool)
    mask[torch.arange(rows)[:, None], kept_columns.repeat_interleave(group_rows, 0)] = True
    dense = dense * mask
    packed = dense.view(groups, group_rows, columns).gather(
        2, kept_columns[:, None, :].expand(groups, group_rows, kept)
    )
    return dense, packed.contiguous(), kept_columns


def _error(out: torch.Tensor, expected: torch.Tensor) -> float:
    assert out.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-6)
    return float((out.double() - expected.double()).abs().max() / scale)


def _check(out, exact, eager_low) -> None:
    """float32: within TOLERANCE of the float64 result; 16-bit: no worse than 3x eager's own
    error in that dtype (eager_low), or two of bfloat16's roundings (the torch-ops kernel rounds
    its GEMM, then adds the bias), whichever is larger: a one-output layer can give eager a
    lucky rounding."""
    if out.dtype == torch.float32:
        assert _error(out, exact) < TOLERANCE
    else:
        assert _error(out, exact) <= max(3 * _error(eager_low, exact), 2**-7)


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.sampled_from([(1, 1), (1, 3), (3, 1), (3, 3), (5, 5), (2, 3)]))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))  # top, bottom, left, right
    height = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[1]), 14))
    width = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[2] - pads[3]), 40))
    groups, group_rows = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 8]))
    return {
        "geometry": (kh, kw, sh, sw, *pads, dh, dw),
        "batch": draw(st.integers(1, 5)),
        "channels": draw(st.integers(1, 6)),
        "height": height,
        "width": width,
        "groups": groups,
        "group_rows": group_rows,
        # a smaller last group: the op computes only out_channels rows
        "out_channels": groups * group_rows - draw(st.integers(0, group_rows - 1)),
        "kept_fraction": draw(st.sampled_from([0.1, 0.25, 0.5, 1.0])),
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "residual": draw(st.booleans()),
        "channels_last": draw(st.booleans()),
        "kernel": draw(st.sampled_from(CPU_KERNELS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "tile_bytes": draw(st.sampled_from([1, 2048, 1 << 23])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _conv_reference(case, x, dense, bias, residual):
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = case["geometry"]
    weight = dense.view(dense.shape[0], case["channels"], kh, kw)
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, (sh, sw), 0, (dh, dw))
    out = out[:, : case["out_channels"]]
    if residual is not None:
        out = out + residual
    return out.relu() if case["relu"] else out


def _one_pixel_case(kernel: str, dtype: torch.dtype) -> dict:
    """A 1x1 image, padded, channels_last: its strides fit both formats, and F.pad then
    returns a channels_last tensor (the torch-ops kernel once viewed it as NCHW and failed)."""
    return {
        "geometry": (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), "batch": 2, "channels": 4, "height": 1,
        "width": 1, "groups": 2, "group_rows": 3, "out_channels": 6, "kept_fraction": 0.5,
        "bias": True, "relu": False, "residual": False, "channels_last": True, "kernel": kernel,
        "dtype": dtype, "tile_bytes": 1 << 23, "seed": 5,
    }  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(conv_cases())
@example(_one_pixel_case("torch_ops", torch.float32))
@example(_one_pixel_case("torch_ops", torch.bfloat16))
@example(_one_pixel_case("grouped", torch.float32))
def test_conv2d_kernels_match_the_masked_dense_conv(case):
    kh, kw = case["geometry"][:2]
    columns = case["channels"] * kh * kw
    kept = max(1, round(columns * case["kept_fraction"]))
    rows = case["groups"] * case["group_rows"]
    dense, packed, kept_columns = _group_sparse(rows, columns, case["groups"], kept, case["seed"])
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    shape = (case["batch"], case["channels"], case["height"], case["width"])
    x = torch.randn(shape, generator=generator)
    bias = torch.randn(rows, generator=generator) if case["bias"] else None
    oh, ow = _conv_reference(case, x, dense, bias, None).shape[2:]
    residual = (
        torch.randn(case["batch"], case["out_channels"], oh, ow, generator=generator)
        if case["residual"]
        else None
    )
    dtype = case["dtype"]

    def run(x, weight, bias, residual):
        kernel = kernels.kernel_of(case["kernel"], "conv2d", "cpu")
        if case["channels_last"]:
            x = x.to(memory_format=torch.channels_last)  # a 1x1 image: strides (C, 1, C, C)
        # small tiles for torch_ops, down to one output row (it keeps 256 pixels per tile)
        with tuning.override(min_tile_pixels=1, tile_bytes=case["tile_bytes"]):
            return kernel.op(
                x, kernel.prepare(weight), kept_columns, bias, list(case["geometry"]),
                case["relu"], case["out_channels"], case["channels"], None, residual,
            )  # fmt: skip

    def low(t):
        return None if t is None else t.to(dtype)

    exact = _conv_reference(case, x.double(), dense.double(), _double(bias), _double(residual))
    eager = _conv_reference(case, x.to(dtype), dense.to(dtype), low(bias), low(residual))
    out = run(x.to(dtype), packed.to(dtype), low(bias), low(residual))
    assert out.dtype == dtype and out.is_contiguous()
    _check(out, exact, eager)


def _double(t):
    return None if t is None else t.double()


@st.composite
def linear_cases(draw):
    groups, group_rows = draw(st.integers(1, 5)), draw(st.sampled_from([1, 4, 16]))
    return {
        "shape": draw(st.sampled_from([(1,), (3,), (70,), (2, 5), (1, 1), (3, 130)])),
        "features": draw(st.integers(1, 80)),
        "groups": groups,
        "group_rows": group_rows,
        "out_features": groups * group_rows - draw(st.integers(0, group_rows - 1)),
        "kept_fraction": draw(st.sampled_from([0.1, 0.3, 1.0])),
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "kernel": draw(st.sampled_from(CPU_KERNELS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=60, deadline=None)
@given(linear_cases())
def test_linear_kernels_match_the_masked_dense_linear(case):
    rows = case["groups"] * case["group_rows"]
    kept = max(1, round(case["features"] * case["kept_fraction"]))
    dense, packed, kept_columns = _group_sparse(
        rows, case["features"], case["groups"], kept, case["seed"]
    )
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(*case["shape"], case["features"], generator=generator)
    bias = torch.randn(rows, generator=generator) if case["bias"] else None
    dtype, out_features = case["dtype"], case["out_features"]

    def reference(x, weight, bias):
        out = F.linear(x, weight[:out_features], None if bias is None else bias[:out_features])
        return out.relu() if case["relu"] else out

    kernel = kernels.kernel_of(case["kernel"], "linear", "cpu")
    with tuning.override(min_tile_pixels=1, tile_bytes=64):
        out = kernel.op(
            x.to(dtype), kernel.prepare(packed.to(dtype)), kept_columns,
            None if bias is None else bias.to(dtype), case["relu"], out_features,
            case["features"],
        )  # fmt: skip
    assert out.dtype == dtype and out.shape == (*case["shape"], out_features)
    exact = reference(x.double(), dense.double(), _double(bias))
    eager = reference(x.to(dtype), dense.to(dtype), None if bias is None else bias.to(dtype))
    _check(out, exact, eager)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_bfloat16_bias_is_added_before_the_one_rounding(name):
    """256 * 1 + 1 * 1 = 257 lies halfway between bfloat16's 256 and 258; with a bias of 0.75
    the exact 257.75 rounds to 258 once, but the product rounded first (256) plus the bias
    rounds to 256: each kernel adds the bias inside its GEMM, as eager's conv and linear do
    (the loop kernel once added it after, and a fuzzed bfloat16 model fell outside 3x eager's
    error)."""
    weight = torch.ones(1, 1, 2, dtype=torch.bfloat16)  # one group of one row, two columns
    columns, bias = torch.tensor([[0, 1]]), torch.tensor([0.75], dtype=torch.bfloat16)
    linear = kernels.kernel_of(name, "linear", "cpu")
    x = torch.tensor([[256.0, 1.0]], dtype=torch.bfloat16)
    out = linear.op(x, linear.prepare(weight), columns, bias, False, 1, 2)
    assert out.item() == 258.0
    conv = kernels.kernel_of(name, "conv2d", "cpu")  # a 1x1 conv: the same sum per pixel
    image = x.view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    out = conv.op(image, conv.prepare(weight), columns, bias, [1, 1, 1, 1, 0, 0, 0, 0, 1, 1],
                  False, 1, 2, None, None)  # fmt: skip
    assert out.flatten().tolist() == [258.0] * 4


# -- the ops' checks and registrations ---------------------------------------------------------

GEOMETRY = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1]


def _conv_args(dtype=torch.float32):
    _, packed, columns = _group_sparse(6, 36, 2, 9, 0)
    return [torch.randn(2, 4, 5, 5, dtype=dtype), packed.to(dtype), columns, None, GEOMETRY,
            True, 6, 4]  # fmt: skip


def _linear_args(kernel, dtype=torch.float32):
    _, packed, columns = _group_sparse(8, 12, 2, 5, 0)
    return [torch.randn(3, 12, dtype=dtype), kernel.prepare(packed.to(dtype)), columns, None,
            False, 8, 12]  # fmt: skip


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_ops_pass_opcheck(name):
    """Schema, fake kernel, dispatch and autograd registrations agree (torch.library.opcheck)."""
    conv = kernels.kernel_of(name, "conv2d", "cpu")
    linear = kernels.kernel_of(name, "linear", "cpu")
    torch.library.opcheck(conv.op, _conv_args())
    torch.library.opcheck(linear.op, _linear_args(linear))


def test_max_pool_passes_opcheck():
    args = [torch.randn(2, 3, 9, 9), [3, 3], [2, 2], [1, 1], [1, 1], True]
    torch.library.opcheck(torch.ops.groupsparse.max_pool2d.default, args)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_a_wrong_dtype_or_width_is_refused(name):
    conv = kernels.kernel_of(name, "conv2d", "cpu")
    args = _conv_args()
    with pytest.raises(TypeError, match="the input is torch.float64 but the layer was compiled"):
        conv.op(args[0].double(), *args[1:])
    with pytest.raises(ValueError, match="compiled for inputs with 4 channels"):
        conv.op(torch.randn(2, 5, 5, 5), *args[1:])
    linear = kernels.kernel_of(name, "linear", "cpu")
    args = _linear_args(linear)
    with pytest.raises(ValueError, match="compiled for inputs with 12 features"):
        linear.op(torch.randn(3, 11), *args[1:])


def test_the_cxx_kernels_refuse_columns_outside_the_layer():
    if extension.load() is None:
        pytest.skip(extension.status())
    args = _conv_args()
    args[2] = args[2].clone()
    args[2][0, 0] = 36  # one past the last im2col column
    with pytest.raises(RuntimeError, match="outside the layer's 36 im2col columns"):
        torch.ops.groupsparse.conv2d(*args)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_backward_says_why_there_is_none(name):
    conv = kernels.kernel_of(name, "conv2d", "cpu")
    args = _conv_args()
    args[0].requires_grad_(True)
    out = conv.op(*args)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="groupsparse ops have no backward"):
        out.sum().backward()
    with torch.no_grad():
        assert not conv.op(*args).requires_grad


def test_an_empty_batch_gives_an_empty_output():
    for name in CPU_KERNELS:
        conv = kernels.kernel_of(name, "conv2d", "cpu")
        args = _conv_args()
        assert conv.op(args[0][:0], *args[1:]).shape == (0, 6, 5, 5)


def test_packed_linear_weights_are_brgemm_b_per_group():
    if extension.load() is None:
        pytest.skip(extension.status())
    weight = torch.randn(3, 4, 5)
    assert torch.equal(extension.pack_linear_weight(weight), weight.transpose(1, 2).contiguous())
    packed = extension.pack_linear_weight(weight.bfloat16())
    assert packed.shape == (3, 3, 4, 2)  # k = 5 rounded up to pairs
    assert torch.equal(packed[:, 1, :, 0], weight.bfloat16()[:, :, 2])
    assert torch.equal(packed[:, 1, :, 1], weight.bfloat16()[:, :, 3])
    assert not packed[:, 2, :, 1].any()  # the pair's missing half: zero


def test_packed_linear_weights_unpack_to_the_plan_layout():
    """What the fallbacks read when a packed layer meets a dtype brgemm does not run."""
    if extension.load() is None:
        pytest.skip(extension.status())
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(3, 4, 5).to(dtype)
        packed = extension.pack_linear_weight(weight)
        assert torch.equal(extension.unpacked_linear_weight(packed, 5), weight)


def test_a_packed_linear_moved_to_float64_runs_the_torch_ops_kernel():
    kernel = kernels.kernel_of("grouped", "linear", "cpu")
    if kernel.unavailable(torch.float32) is not None:
        pytest.skip(kernel.unavailable(torch.float32))
    args = _linear_args(kernel)
    expected = kernel.op(*args)
    doubled = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
               for a in args]  # fmt: skip
    torch.testing.assert_close(kernel.op(*doubled), expected.double(), rtol=1e-5, atol=1e-5)
