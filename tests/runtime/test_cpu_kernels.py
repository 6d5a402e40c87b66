"""The CPU kernels against F.conv2d / F.linear with the masked dense weight.

Property tests over conv geometries (stride, asymmetric padding, dilation, 1x1 / 1x3 / 3x3 /
5x5 kernels, batch 1..5, channels_last), bias or not, ReLU, 1..4 groups, and both grids and
tile sizes of the conv kernel; linear on 2-D and 3-D inputs; each on the native kernel (where
it builds) and on the torch-ops one. float32, max relative error under 1e-4.
"""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from groupsparse.runtime import cpu, native

TOLERANCE = 1e-4
# the kernels a test may draw: the torch-ops one always, the native one where it builds
KERNELS = [False, True] if native.library() is not None else [False]


def _group_sparse(rows: int, columns: int, groups: int, kept: int, seed: int):
    """(masked dense weight (rows, columns), packed (groups, G, kept), kept columns)."""
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


def _assert_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-6)
    assert ((out - expected).abs().max() / scale).item() < TOLERANCE


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.sampled_from([(1, 1), (1, 3), (3, 1), (3, 3), (5, 5), (2, 3)]))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))  # top, bottom, left, right
    height = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[1]), 14))
    width = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[2] - pads[3]), 40))
    return {
        "geometry": (kh, kw, sh, sw, *pads, dh, dw),
        "batch": draw(st.integers(1, 5)),
        "channels": draw(st.integers(1, 6)),
        "height": height,
        "width": width,
        "groups": draw(st.integers(1, 4)),
        "group_rows": draw(st.sampled_from([1, 3, 8])),
        "kept_fraction": draw(st.sampled_from([0.1, 0.25, 0.5, 1.0])),
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "channels_last": draw(st.booleans()),
        "wide": draw(st.sampled_from([None, True, False])),
        "tile_bytes": draw(st.sampled_from([1, 2048, 1 << 23])),
        "use_native": draw(st.sampled_from(KERNELS)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _conv_reference(case, x, dense, bias):
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = case["geometry"]
    weight = dense.view(dense.shape[0], case["channels"], kh, kw)
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, (sh, sw), 0, (dh, dw))
    return out.relu() if case["relu"] else out


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_grouped_conv2d_matches_masked_dense(case):
    kh, kw = case["geometry"][:2]
    columns = case["channels"] * kh * kw
    kept = max(1, round(columns * case["kept_fraction"]))
    rows = case["groups"] * case["group_rows"]
    dense, packed, kept_columns = _group_sparse(rows, columns, case["groups"], kept, case["seed"])
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(
        case["batch"], case["channels"], case["height"], case["width"], generator=generator
    )
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(rows, generator=generator) if case["bias"] else None
    expected = _conv_reference(case, x, dense, bias)

    # small tiles, down to one output row (the kernel would keep 256 pixels per tile)
    with mock.patch.object(cpu, "_MIN_TILE_PIXELS", 1):
        out = cpu.grouped_conv2d(
            x,
            packed,
            kept_columns,
            bias,
            case["geometry"],
            case["relu"],
            tile_bytes=case["tile_bytes"],
            wide=case["wide"],
            use_native=case["use_native"],
        )
    _assert_close(out, expected)
    assert out.is_contiguous()
    loop = cpu.loop_conv2d(x, packed, kept_columns, bias, case["geometry"], case["relu"])
    _assert_close(loop, expected)


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_gather_conv_columns_is_reordered_im2col(case):
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = case["geometry"]
    x = torch.randn(case["batch"], case["channels"], case["height"], case["width"])
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    columns = torch.randperm(case["channels"] * kh * kw)[: max(1, case["group_rows"])]
    gathered = cpu.gather_conv_columns(x, columns, case["geometry"])
    im2col = F.unfold(F.pad(x, (left, right, top, bottom)), (kh, kw), (dh, dw), 0, (sh, sw))
    out_h, out_w = gathered.shape[2:]
    assert torch.equal(gathered, im2col[:, columns].view(x.shape[0], -1, out_h, out_w))


@pytest.mark.parametrize("images", [1, 3, 64])
def test_conv_batches_share_tiles(images):
    """Small images are batched into one GEMM; the epilogue brings images back to the front."""
    case = {"geometry": (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), "channels": 16, "relu": True}
    dense, packed, kept_columns = _group_sparse(32, 16 * 9, 4, 40, seed=images)
    x = torch.randn(images, 16, 7, 7)
    bias = torch.randn(32)
    expected = _conv_reference(case, x, dense, bias)
    for tile_bytes in (1, 1 << 16, 1 << 30):
        with mock.patch.object(cpu, "_MIN_TILE_PIXELS", 1):
            out = cpu.grouped_conv2d(
                x, packed, kept_columns, bias, case["geometry"], True, tile_bytes=tile_bytes
            )
        _assert_close(out, expected)
    _assert_close(
        cpu.grouped_conv2d(x, packed, kept_columns, bias, case["geometry"], True), expected
    )


@pytest.mark.parametrize("use_native", KERNELS)
def test_conv_of_an_empty_batch(use_native):
    _, packed, kept_columns = _group_sparse(8, 72, 2, 18, seed=0)
    x = torch.randn(0, 8, 10, 10)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    grouped = functools.partial(cpu.grouped_conv2d, use_native=use_native)
    for kernel in (grouped, cpu.loop_conv2d):
        assert kernel(x, packed, kept_columns, torch.randn(8), geometry, True).shape == (
            0,
            8,
            10,
            10,
        )


@settings(max_examples=40, deadline=None)
@given(
    lead=st.sampled_from([(), (1,), (5,), (2, 3), (0,)]),
    tokens=st.sampled_from([1, 2, 6, 7, 9, 13, 24, 25, 150]),
    features=st.integers(1, 40),
    groups=st.integers(1, 4),
    group_rows=st.sampled_from([1, 4, 16, 20, 64, 130]),
    k_major=st.booleans(),
    kept_fraction=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    bias=st.booleans(),
    relu=st.booleans(),
    gather=st.sampled_from(["auto", "rows", "columns"]),
    tile_bytes=st.sampled_from([1, 200, 1 << 23]),
    use_native=st.sampled_from(KERNELS),
    seed=st.integers(0, 2**16),
)
def test_grouped_linear_matches_masked_dense(
    lead,
    tokens,
    features,
    groups,
    group_rows,
    kept_fraction,
    bias,
    relu,
    gather,
    tile_bytes,
    use_native,
    seed,
    k_major,
):
    kept = max(1, round(features * kept_fraction))
    rows = groups * group_rows
    dense, packed, kept_columns = _group_sparse(rows, features, groups, kept, seed)
    packed = cpu.k_major(packed) if k_major else packed  # as plans hold it, or plain
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*lead, tokens, features, generator=generator)
    b = torch.randn(rows, generator=generator) if bias else None
    expected = F.linear(x, dense, b)
    expected = expected.relu() if relu else expected

    with mock.patch.object(cpu, "_MIN_TILE_PIXELS", 1):  # small tiles: a few tokens each
        out = cpu.grouped_linear(
            x,
            packed,
            kept_columns,
            b,
            relu,
            gather=gather,
            tile_bytes=tile_bytes,
            use_native=use_native,
        )
    assert out.shape == expected.shape
    if out.numel():
        _assert_close(out, expected)
    assert out.is_contiguous()
    loop = cpu.loop_linear(x, packed, kept_columns, b, relu)
    if loop.numel():
        _assert_close(loop, expected)


@pytest.mark.parametrize("gather", ["rows", "columns"])
@pytest.mark.parametrize("use_native", KERNELS)
def test_linear_on_a_non_contiguous_input(gather, use_native):
    dense, packed, kept_columns = _group_sparse(64, 48, 4, 12, seed=0)
    x = torch.randn(48, 10).t()  # (10, 48), transposed storage
    out = cpu.grouped_linear(x, packed, kept_columns, None, gather=gather, use_native=use_native)
    _assert_close(out, F.linear(x, dense))


def test_linear_rejects_an_unknown_gather():
    _, packed, kept_columns = _group_sparse(8, 8, 2, 2, seed=0)
    with pytest.raises(ValueError, match="gather"):
        cpu.grouped_linear(torch.randn(3, 8), packed, kept_columns, None, gather="nope")
