"""The native CPU kernel's build and its fallback: where it cannot be built or is turned off,
the CPU runtime warns once (or, when turned off, stays quiet) and gives the same numbers
through the torch-ops kernel. Each case runs in a fresh interpreter, since the kernel library
is loaded once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from groupsparse.runtime import cpu, native

# a conv and a linear by the default kernel against the torch-ops one; prints the status
CHECK = textwrap.dedent(
    """
    import warnings
    import torch
    from groupsparse.runtime import cpu, native
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    columns = torch.stack([torch.randperm(72)[:20].sort().values for _ in range(3)])
    weight = torch.randn(3, 5, 20)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cpu.grouped_conv2d(x, weight, columns, None, geometry, True)
        cpu.grouped_conv2d(x, weight, columns, None, geometry, True)
        tokens = torch.randn(7, 72)
        linear = cpu.grouped_linear(tokens, weight, columns, None)
    same = cpu.grouped_conv2d(x, weight, columns, None, geometry, True, use_native=False)
    assert torch.allclose(out, same, rtol=1e-5, atol=1e-5)
    expected = cpu.grouped_linear(tokens, weight, columns, None, use_native=False)
    assert torch.allclose(linear, expected, rtol=1e-5, atol=1e-5)
    print(native.status())
    print("warnings:", [str(w.message) for w in caught if w.category is native.NativeKernelWarning])
    """
)


def _run(tmp_path, **env) -> str:
    environment = {**os.environ, "GROUPSPARSE_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_turned_off_by_the_environment(tmp_path):
    out = _run(tmp_path, GROUPSPARSE_NATIVE="0")
    assert "not in use (turned off by GROUPSPARSE_NATIVE=0)" in out
    assert "warnings: []" in out  # asked for: no warning


def test_a_failed_build_warns_once_and_falls_back(tmp_path):
    out = _run(tmp_path, CXX="false")  # a "compiler" that always fails
    assert "not in use (the build failed" in out
    warnings = out.splitlines()[-1]
    assert warnings.count("native CPU kernel is unavailable") == 1, warnings
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built left to load


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_builds_into_the_cache_and_loads_from_it(tmp_path):
    assert "in use" in _run(tmp_path)
    built = list((tmp_path / "cache").glob("grouped_gemm-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert "in use" in _run(tmp_path)  # the second process loads it, without building again
    assert built[0].stat().st_mtime_ns == stamp


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_default_cpu_kernel_is_native_for_float32_only():
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    columns = torch.tensor([[0, 5, 9], [1, 2, 30]])
    weight = torch.randn(2, 3, 3, dtype=torch.float64)
    assert not cpu.native_ready(x, weight)
    assert cpu.native_ready(x.float(), weight.float())
    out = cpu.grouped_conv2d(x, weight, columns, None, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1))
    assert out.dtype == torch.float64
    with pytest.raises(TypeError, match="native kernel takes contiguous float32"):
        native.grouped_gemm(  # insisting on float64 through the raw entry is refused up front
            x.view(-1),
            columns,
            weight,
            None,
            out,
            batch=1,
            image=144,
            out_image=216,
            pixels=36,
            grid=(6, 6, 1),
            valid_w=6,
            dst_row=6,
            out_channel=36,
            relu=False,
        )


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_linear_entry_checks_its_tensors():
    x = torch.randn(5, 12)
    columns = torch.tensor([[0, 3, 7], [1, 2, 11]])
    weight = torch.randn(2, 4, 3)  # (groups, G, k)
    packed = cpu.blocked_linear_weight(weight)
    assert packed.shape == (2, 1, 3, 16)
    assert torch.equal(packed[:, 0, :, :4], weight.transpose(1, 2))
    assert not packed[:, :, :, 4:].any()  # zero rows past G
    out = torch.empty(5, 8)
    native.grouped_linear(x, columns, packed, None, out, relu=False)
    expected = torch.cat([x[:, columns[g]] @ weight[g].T for g in range(2)], dim=1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(TypeError, match="contiguous float32"):
        native.grouped_linear(x.double(), columns, packed, None, out, relu=False)
    with pytest.raises(TypeError, match=r"contiguous int64 columns \(groups, k\)"):
        native.grouped_linear(x, columns.int(), packed, None, out, relu=False)
    with pytest.raises(TypeError, match=r"x \(tokens, K >= 12\)"):  # column 11 is kept
        native.grouped_linear(x[:, :11].contiguous(), columns, packed, None, out, relu=False)
    with pytest.raises(TypeError, match=r"out \(tokens, groups \* G\) with 2 groups"):
        native.grouped_linear(x, columns, packed, None, torch.empty(5, 9), relu=False)
    with pytest.raises(TypeError, match=r"packed as \(2, 1, 3, 16\)"):
        native.grouped_linear(
            x, columns, weight.transpose(1, 2).contiguous(), None, out, relu=False
        )


def test_blocked_linear_weight_is_packed_once_and_again_after_a_change():
    weight = torch.randn(3, 20, 7)
    first = cpu.blocked_linear_weight(weight)
    assert cpu.blocked_linear_weight(weight) is first  # remembered
    assert torch.equal(first.transpose(2, 3).reshape(3, 32, 7)[:, :20], weight)
    weight.mul_(2)  # in place: the version counter moves
    again = cpu.blocked_linear_weight(weight)
    assert again is not first
    assert torch.equal(again.transpose(2, 3).reshape(3, 32, 7)[:, :20], weight)
    other = weight.clone()  # same values, another tensor: packed for itself
    assert cpu.blocked_linear_weight(other) is not again
    key = id(other)
    assert any(entry[0] == key for entry in cpu._MEMO)
    del other
    assert not any(entry[0] == key for entry in cpu._MEMO)  # forgotten with its tensor


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_prepared_native_calls_follow_in_place_changes_of_a_layer():
    """The native kernels' arguments are built once per layer (cpu.memo); an in-place change
    of the weights, kept columns or bias is seen by the next call."""
    torch.manual_seed(0)
    x = torch.randn(1, 6, 9, 9)
    weight = torch.randn(2, 4, 10)
    columns = torch.stack([torch.randperm(54)[:10].sort().values for _ in range(2)])
    bias = torch.randn(8)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)

    def expected():
        return cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=False)

    first = cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=True)
    torch.testing.assert_close(first, expected())
    for change in (lambda: weight.mul_(-2), lambda: columns.sub_(1).clamp_(min=0),
                   lambda: bias.add_(3)):  # fmt: skip
        change()
        again = cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=True)
        torch.testing.assert_close(again, expected())
    tokens = torch.randn(5, 54)
    linear = cpu.grouped_linear(tokens, weight, columns, bias, use_native=True)
    torch.testing.assert_close(
        linear, cpu.grouped_linear(tokens, weight, columns, bias, use_native=False)
    )
    weight.mul_(0.5)
    linear = cpu.grouped_linear(tokens, weight, columns, bias, use_native=True)
    torch.testing.assert_close(
        linear, cpu.grouped_linear(tokens, weight, columns, bias, use_native=False)
    )


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize("kernel", ["grouped_conv2d", "grouped_conv2d_torch", "loop_conv2d"])
def test_conv_kernels_add_a_residual_before_the_relu(kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    columns = torch.tensor([[0, 5, 9, 20], [1, 2, 30, 35]])
    weight = torch.randn(2, 3, 4)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    bias = torch.randn(6)
    residual = torch.randn(2, 6, 7, 7)
    plain = cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=False)
    run = getattr(cpu, kernel)
    for relu in (False, True):
        want = (plain + residual).relu() if relu else plain + residual
        got = run(x, weight, columns, bias, geometry, relu, residual=residual)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_conv_entry_checks_its_residual():
    x = torch.randn(1, 4, 6, 6)
    columns = torch.tensor([[0, 5, 9], [1, 2, 30]])
    weight = torch.randn(2, 3, 3)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    with pytest.raises(TypeError, match="residual shaped as out"):
        cpu.grouped_conv2d(x, weight, columns, None, geometry, residual=torch.randn(1, 6, 6, 5))


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize("size", [5, 7, 14])
def test_both_tile_widths_compute_the_conv(size, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 8, size, size)
    columns = torch.stack([torch.randperm(72)[:20].sort().values for _ in range(3)])
    weight = torch.randn(3, 7, 20)  # 7 rows: a partial block for both 4- and 6-row tiles
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    want = cpu.grouped_conv2d(x, weight, columns, None, geometry, True, use_native=False)
    for tile in (16, 24):
        monkeypatch.setattr(cpu, "_tile_pixels", lambda pixels, tile=tile: tile)
        got = cpu.grouped_conv2d(x, weight, columns, None, geometry, True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="16 or 24"):
        monkeypatch.setattr(cpu, "_tile_pixels", lambda pixels: 8)
        cpu.grouped_conv2d(x, weight, columns, None, geometry)


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize(
    "height, width, geometry, tile",
    [
        (14, 14, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 16),  # ResNet's 14x14 stage
        (5, 12, (3, 3, 1, 1, 2, 2, 2, 2, 2, 2), 16),  # dilated: rows and columns past both edges
        (6, 11, (5, 5, 1, 1, 1, 3, 3, 2, 1, 1), 16),  # asymmetric padding, taps past the bottom
        (4, 22, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 24),  # 24-pixel rows
        (3, 16, (1, 3, 1, 1, 0, 0, 0, 0, 1, 1), 16),  # no padding: shifts into the next row
    ],
)
def test_conv_pads_in_its_gather_where_a_grid_row_is_one_tile(
    height, width, geometry, tile, monkeypatch
):
    """The unpadded input, padded by the gather's masked loads (``taps``), computes what the
    padded copy does, with bias, shortcut and ReLU, and the kernel takes that path here."""
    torch.manual_seed(0)
    kh, kw = geometry[:2]
    x = torch.randn(2, 6, height, width)
    columns = torch.stack([torch.randperm(6 * kh * kw)[:17].sort().values for _ in range(2)])
    weight = torch.randn(2, 7, 17)
    bias = torch.randn(14)
    monkeypatch.setattr(cpu, "_tile_pixels", lambda pixels: tile)
    monkeypatch.setattr(cpu, "UNPADDED_GATHER", "rows")
    call, out_shape = cpu._prepared_conv(x.shape, weight, columns, bias, geometry, True)
    assert call.unpadded and call._tail[7] == tile  # one grid row, one tile
    residual = torch.randn(out_shape)
    got = cpu.grouped_conv2d(x, weight, columns, bias, geometry, True, residual=residual)
    want = cpu.grouped_conv2d(
        x, weight, columns, bias, geometry, True, use_native=False, residual=residual
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    taps = call.tensors[3].clone()
    taps[0, 0, 2] = 70  # past the kernel's mask tables: refused, not read out of bounds
    with pytest.raises(TypeError, match="span fewer than 64"):
        native.ConvCall(
            call.tensors[0], weight, bias, batch=2, image=6 * height * width, out_image=1,
            pixels=1, grid=(tile, tile, 1), valid_w=1, dst_row=1, out_channel=1, relu=False,
            tile=tile, taps=taps, in_hw=(height, width),
        )  # fmt: skip
    monkeypatch.setattr(cpu, "UNPADDED_GATHER", "off")
    padded = cpu.grouped_conv2d(x, weight.clone(), columns, bias, geometry, True, residual=residual)
    torch.testing.assert_close(got, padded, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize(
    "height, width, geometry, tile",
    [
        (14, 14, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 16),  # 196 pixels: the last tile 4 wide
        (14, 14, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 24),
        (5, 12, (3, 3, 1, 1, 2, 2, 2, 2, 2, 2), 16),  # dilated: shifts of two rows and columns
        (6, 11, (3, 3, 1, 1, 0, 2, 1, 1, 1, 1), 16),  # padded below only
        (7, 7, (5, 5, 1, 1, 2, 2, 2, 2, 1, 1), 24),  # a tile spans three rows
        (4, 9, (1, 1, 1, 1, 0, 0, 0, 0, 1, 1), 16),  # 1x1: nothing to pad
    ],
)
def test_conv_pads_in_its_gather_on_a_flat_grid(height, width, geometry, tile, monkeypatch):
    """UNPADDED_GATHER="flat": tiles of output pixels running across rows (no junk columns),
    each column's loads masked per lane by row and column; equal to the torch-ops kernel."""
    torch.manual_seed(1)
    kh, kw = geometry[:2]
    x = torch.randn(3, 5, height, width)
    kept = min(13, 5 * kh * kw)
    columns = torch.stack([torch.randperm(5 * kh * kw)[:kept].sort().values for _ in range(3)])
    weight, bias = torch.randn(3, 8, kept), torch.randn(24)
    monkeypatch.setattr(cpu, "UNPADDED_GATHER", "flat")
    monkeypatch.setattr(cpu, "FLAT_TILE", tile)
    call, out_shape = cpu._prepared_conv(x.shape, weight, columns, bias, geometry, True)
    assert call.unpadded and call._tail[7] == width  # grid as wide as the image
    residual = torch.randn(out_shape)
    got = cpu.grouped_conv2d(x, weight, columns, bias, geometry, True, residual=residual)
    want = cpu.grouped_conv2d(
        x, weight, columns, bias, geometry, True, use_native=False, residual=residual
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize(
    "size, geometry, grid_w",
    [
        (14, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 14),  # flat: 196 pixels
        (7, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), 7),
        (28, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), None),  # 784 pixels: the padded copy
        (14, (3, 3, 2, 2, 1, 1, 1, 1, 1, 1), None),  # stride 2: the padded copy
    ],
)
def test_gather_padding_by_default(size, geometry, grid_w):
    """The default ("auto"): a flat grid on small "same" convs, a padded copy on larger
    images and strided convs."""
    columns = torch.arange(8).view(2, 4)
    call, _ = cpu._prepared_conv((1, 4, size, size), torch.randn(2, 3, 4), columns, None,
                                 geometry, False)  # fmt: skip
    assert call.unpadded == (grid_w is not None)
    if grid_w is not None:
        assert call._tail[7] == grid_w


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize(
    "shape, padding",
    [((1, 3, 5, 7), (1, 1, 1, 1)), ((2, 4, 6, 6), (2, 0, 0, 3)), ((3, 1, 1), (0, 0, 0, 0)),
     ((1, 2, 9, 4), (0, 4, 2, 0))],
)  # fmt: skip
def test_native_pad_matches_torch(shape, padding):
    x = torch.randn(*shape)
    top, bottom, left, right = padding
    out = torch.full((*shape[:-2], top + shape[-2] + bottom, left + shape[-1] + right), 7.0)
    native.pad2d(x, out, padding=padding)  # every element written: no 7.0 left
    assert torch.equal(out, torch.nn.functional.pad(x, (left, right, top, bottom)))


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_native_pad_checks_its_arguments():
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match=r"got \(2, 3, 4\), \(1, 1, 1, 1\) and \(2, 5, 5\)"):
        native.pad2d(x, torch.empty(2, 5, 5), padding=(1, 1, 1, 1))
    with pytest.raises(TypeError, match=">= 0"):
        native.pad2d(x, torch.empty(2, 2, 6), padding=(-1, 0, 1, 1))
    with pytest.raises(TypeError, match="contiguous float32"):
        native.pad2d(x.double(), torch.empty(2, 5, 6), padding=(1, 1, 1, 1))


@pytest.mark.skipif(native.library() is None, reason=native.status())
def test_conv_on_an_image_larger_than_l2():
    # past 1 MiB a padded image is padded natively and the kernel prefetches the next tile's
    # columns and output rows; the numbers must not change
    torch.manual_seed(0)
    x = torch.randn(2, 64, 66, 66)  # 64 x 68 x 68 floats padded: 1.2 MB an image
    assert 64 * 68 * 68 * 4 > 1 << 20
    columns = torch.stack([torch.randperm(576)[:150].sort().values for _ in range(3)])
    weight = torch.randn(3, 10, 150)
    bias, residual = torch.randn(30), torch.randn(2, 30, 66, 66)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    want = cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=False)
    got = cpu.grouped_conv2d(x, weight, columns, bias, geometry, True, residual=residual)
    torch.testing.assert_close(got, (want + residual).relu(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(native.library() is None, reason=native.status())
@pytest.mark.parametrize("tile", [16, 24])
def test_whole_tiles_store_straight_to_the_output(tile, monkeypatch):
    # a 1x1 conv on 12x12 images: every tile is one run of output pixels, so its last pass
    # stores bias + shortcut + ReLU itself; 7 rows a group leave partial blocks of 4 and 6
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12)
    columns = torch.stack([torch.randperm(16)[:5].sort().values for _ in range(3)])
    weight = torch.randn(3, 7, 5)
    bias, residual = torch.randn(21), torch.randn(2, 21, 12, 12)
    geometry = (1, 1, 1, 1, 0, 0, 0, 0, 1, 1)
    want = cpu.grouped_conv2d(x, weight, columns, bias, geometry, use_native=False)
    monkeypatch.setattr(cpu, "_tile_pixels", lambda pixels: tile)
    for relu in (False, True):
        got = cpu.grouped_conv2d(x, weight, columns, bias, geometry, relu, residual=residual)
        expected = (want + residual).relu() if relu else want + residual
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = cpu.grouped_conv2d(x, weight, columns, bias, geometry)
    torch.testing.assert_close(plain, want, rtol=1e-5, atol=1e-5)
