"""Fused gather + grouped GEMM for the GPU, in Triton: each program gathers its group's kept
input columns straight from the input into registers and multiplies them there, so the
reordered im2col is never written to memory.

Why it exists: the first run on a GPU (an H200, bench/results/nvidia-h200/) showed the
gather-then-cuBLAS path at 8-36 TFLOP/s on kept FLOPs. With G output rows per group, each
gathered element feeds only G multiply-adds, so a materialized gather moves ``groups`` times
the input through memory twice (write, then read by the GEMM): for a 512->512 3x3 conv on
28x28 at batch 32 and G=32, 1.8 GB at 50% sparsity, about 0.9 ms at 4 TB/s against cuDNN's
0.25 ms for the whole dense layer. Fused, the gathered tile lives in registers and shared
memory; the input is read from L2, where the groups that share it find it.

Imported only by ``runtime/cuda/fused.py``, and only where Triton is installed (it comes with
PyTorch's CUDA builds). ``TRITON_INTERPRET=1`` runs the same kernels on the CPU through
Triton's interpreter, which is how the tests check their index arithmetic without a GPU.

Layouts (the CUDA runtime's, see ``cuda.py``):
- conv: ``x`` (B, C, H, W) contiguous; ``weight`` (groups, G, k); ``table`` (groups*k, 3)
  int32 rows ``[channel*H*W, i*dh - pad_top, j*dw - pad_left]``; ``out`` (B, groups*G, OH, OW).
- linear: ``x`` (T, K) contiguous; ``weight`` (groups, G, k); ``columns`` (groups*k,) int32;
  ``out`` (T, groups*G).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "fused_conv2d", "fused_linear"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# how fused_linear gathers: "rows" of x transposed, or "columns" of x in place
LINEAR_LAYOUT = os.environ.get("GROUPSPARSE_TRITON_LINEAR", "rows")


@triton.jit
def _bias_relu(acc, bias_ptr, channel, rows_ok, relu, HAS_BIAS: tl.constexpr, AXIS: tl.constexpr):
    """The epilogue every kernel here shares: ``acc`` plus the bias of ``channel`` (along
    ``AXIS`` of the tile: 0 when channels are its rows), then the ReLU when ``relu``."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channel, mask=rows_ok, other=0.0).to(tl.float32)
        if AXIS == 0:
            acc += bias[:, None]
        else:
            acc += bias[None, :]
    if relu != 0:
        acc = tl.maximum(acc, 0.0)
    return acc


# Integer arguments are not specialized (on value 1 or divisibility by 16): the loads are
# gathers anyway, and each specialization is one more compile of every tile shape.
_CONV_INTS = ("kept", "n_total", "pixels", "out_w", "height", "width", "stride_h", "stride_w",
              "image_stride", "out_image_stride", "G", "relu")  # fmt: skip
_LINEAR_INTS = ("kept", "tokens", "in_features", "out_features", "G", "relu")


@triton.jit(do_not_specialize=_CONV_INTS)
def _conv_kernel(
    x_ptr, w_ptr, table_ptr, bias_ptr, out_ptr,
    kept, n_total, pixels, out_w, height, width, stride_h, stride_w,
    image_stride, out_image_stride, G, relu,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    group = tl.program_id(0)  # fastest: the groups that read one pixel tile run together
    n_block = tl.program_id(1)
    m_block = tl.program_id(2)
    rows = m_block * BM + tl.arange(0, BM)
    n = n_block * BN + tl.arange(0, BN)  # output pixels of all images, one after another
    n_ok = n < n_total
    image = n // pixels
    pixel = n % pixels
    iy0 = (pixel // out_w) * stride_h
    ix0 = (pixel % out_w) * stride_w
    x_base = image.to(tl.int64) * image_stride + iy0 * width + ix0
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, kept, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < kept
        entry = table_ptr + (group * kept + k) * 3
        plane = tl.load(entry, mask=k_ok, other=0)
        dy = tl.load(entry + 1, mask=k_ok, other=0)
        dx = tl.load(entry + 2, mask=k_ok, other=0)
        iy = iy0[None, :] + dy[:, None]
        ix = ix0[None, :] + dx[:, None]
        inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
        ok = k_ok[:, None] & n_ok[None, :] & inside
        offset = x_base[None, :] + (plane + dy * width + dx)[:, None]
        b = tl.load(x_ptr + offset, mask=ok, other=0.0)
        a_ok = (rows < G)[:, None] & k_ok[None, :]
        a = tl.load(w_ptr + (group * G + rows)[:, None] * kept + k[None, :], mask=a_ok, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    channel = group * G + rows
    acc = _bias_relu(acc, bias_ptr, channel, rows < G, relu, HAS_BIAS, 0)
    target = image.to(tl.int64)[None, :] * out_image_stride + channel[:, None] * pixels
    target += pixel[None, :]
    tl.store(
        out_ptr + target, acc.to(out_ptr.dtype.element_ty), mask=(rows < G)[:, None] & n_ok[None, :]
    )


@triton.jit(do_not_specialize=_LINEAR_INTS)
def _linear_kernel(
    x_ptr, w_ptr, columns_ptr, bias_ptr, out_ptr,
    kept, tokens, in_features, out_features, G, relu,
    BT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    group = tl.program_id(0)
    t_block = tl.program_id(1)
    m_block = tl.program_id(2)
    t = t_block * BT + tl.arange(0, BT)
    rows = m_block * BM + tl.arange(0, BM)
    t_ok = t < tokens
    acc = tl.zeros((BT, BM), dtype=tl.float32)
    for k0 in range(0, kept, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < kept
        column = tl.load(columns_ptr + group * kept + k, mask=k_ok, other=0)
        a = tl.load(
            x_ptr + t.to(tl.int64)[:, None] * in_features + column[None, :],
            mask=t_ok[:, None] & k_ok[None, :], other=0.0,
        )  # fmt: skip
        b_ok = k_ok[:, None] & (rows < G)[None, :]
        b = tl.load(w_ptr + (group * G + rows)[None, :] * kept + k[:, None], mask=b_ok, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    feature = group * G + rows
    acc = _bias_relu(acc, bias_ptr, feature, rows < G, relu, HAS_BIAS, 1)
    target = t.to(tl.int64)[:, None] * out_features + feature[None, :]
    tl.store(
        out_ptr + target, acc.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & (rows < G)[None, :]
    )


@triton.jit
def _rows_kernel(
    src_ptr, w_ptr, index_ptr, shift_ptr, bias_ptr, out_ptr,
    kept, n, src_row_stride, src_batch_stride, out_channel_stride, out_n_stride,
    out_batch_stride, wide_pitch, out_w, G, relu, m_blocks,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, SHIFTED: tl.constexpr,
    WIDE: tl.constexpr,
):  # fmt: skip
    """The product of each group's weights with the rows ``index[group]`` of a row-major
    source whose rows are contiguous (a linear's x transposed, a 1x1 conv's image as
    (C, H*W)): the gathered operand is whole row segments, so its loads are coalesced and,
    where ``n`` and the strides are multiples of 16 (integer arguments are specialized on
    that), 16 bytes wide and pipelined.

    ``SHIFTED``: row k starts ``16 * shift[k]`` elements into its source row (a 3x3 tap's
    rows below, in ``wide_conv2d``; loaded as multiples of 16 so the loads stay aligned).
    ``WIDE``: column ``j`` is output pixel ``(j // wide_pitch, j % wide_pitch)``, written only
    where the second is below ``out_w`` (the wide grid's last columns are junk)."""
    group = tl.program_id(0)
    n_block = tl.program_id(1)
    batch = tl.program_id(2) // m_blocks
    m_block = tl.program_id(2) % m_blocks
    rows = m_block * BM + tl.arange(0, BM)
    cols = n_block * BN + tl.arange(0, BN)
    cols_ok = cols < n
    src = src_ptr + batch.to(tl.int64) * src_batch_stride
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, kept, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < kept
        row = tl.load(index_ptr + group * kept + k, mask=k_ok, other=0).to(tl.int64)
        start = row * src_row_stride
        if SHIFTED:
            start += tl.load(shift_ptr + group * kept + k, mask=k_ok, other=0).to(tl.int64) * 16
        b = tl.load(
            src + start[:, None] + cols[None, :],
            mask=k_ok[:, None] & cols_ok[None, :], other=0.0,
        )  # fmt: skip
        a_ok = (rows < G)[:, None] & k_ok[None, :]
        a = tl.load(w_ptr + (group * G + rows)[:, None] * kept + k[None, :], mask=a_ok, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    channel = group * G + rows
    acc = _bias_relu(acc, bias_ptr, channel, rows < G, relu, HAS_BIAS, 0)
    target = (
        batch.to(tl.int64) * out_batch_stride + channel.to(tl.int64)[:, None] * out_channel_stride
    )
    if WIDE:
        column = cols % wide_pitch
        cols_ok = cols_ok & (column < out_w)
        position = (cols // wide_pitch) * out_w + column
    else:
        position = cols
    target += position[None, :] * out_n_stride
    tl.store(
        out_ptr + target,
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows < G)[:, None] & cols_ok[None, :],
    )


@triton.jit
def _wide_source_kernel(
    x_ptr, out_ptr, planes, channels, kw, height, width, x_c_stride, x_b_stride, pitch,
    padded_height, top, left, dw, PL: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    """Rows ``BR`` at a time of ``PL`` consecutive planes ``(b, kx, c)`` of ``wide_source``'s
    output: grid row ``r``, column ``j`` holds padded pixel ``(r, j + kx * dw)`` (zero past
    the row's end). Tiles of whole grid rows, so no division per element; loads run along
    image rows and stores along grid rows; small planes (14x14: 16 rows of 16) go several
    to a tile, so that no tile moves only a few hundred bytes."""
    plane = tl.program_id(0) * PL + tl.arange(0, PL)
    c = plane % channels
    kx = (plane // channels) % kw
    b = plane // (channels * kw)
    r = tl.program_id(1) * BR + tl.arange(0, BR)
    j = tl.arange(0, BP)
    y = r - top
    col = j[None, :] + (kx * dw - left)[:, None]  # (PL, BP)
    inside = (
        (plane < planes)[:, None, None]
        & (r < padded_height)[None, :, None]
        & (j < pitch)[None, None, :]
    )
    rows_ok = (y >= 0) & (y < height)
    cols_ok = (col >= 0) & (col < width) & (j[None, :] + (kx * dw)[:, None] < pitch)
    source = b.to(tl.int64) * x_b_stride + c.to(tl.int64) * x_c_stride
    value = tl.load(
        x_ptr + source[:, None, None] + (y * width)[None, :, None] + col[:, None, :],
        mask=inside & rows_ok[None, :, None] & cols_ok[:, None, :], other=0.0,
    )  # fmt: skip
    target = plane.to(tl.int64) * padded_height * pitch
    tl.store(out_ptr + target[:, None, None] + (r * pitch)[None, :, None] + j[None, None, :],
             value, mask=inside)  # fmt: skip


@triton.jit
def _transpose_kernel(x_ptr, out_ptr, rows, cols, BR: tl.constexpr, BC: tl.constexpr):
    """``out`` (cols, rows) = ``x`` (rows, cols) transposed, both contiguous, by tiles (loads
    and stores both along contiguous memory)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    ok = (r < rows)[:, None] & (c < cols)[None, :]
    tile = tl.load(x_ptr + r.to(tl.int64)[:, None] * cols + c[None, :], mask=ok)
    tl.store(out_ptr + c.to(tl.int64)[None, :] * rows + r[:, None], tile, mask=ok)


def transpose(x: torch.Tensor) -> torch.Tensor:
    """``x.t().contiguous()`` of a contiguous 2-D ``x`` in one tiled kernel (PyTorch's strided
    copy ran at about 0.6 TB/s on the H200 for BERT's 4096x768 half-precision activations)."""
    rows, cols = x.shape
    out = torch.empty(cols, rows, dtype=x.dtype, device=x.device)
    tile = 32 if INTERPRETED else 64
    _transpose_kernel[(triton.cdiv(rows, tile), triton.cdiv(cols, tile))](
        x, out, rows, cols, BR=tile, BC=tile
    )
    return out


def _configs(wide: str) -> list[triton.Config]:
    """A few tile shapes to time per layer shape (``wide``: the name of the long tile side)."""
    shapes = [(128, 32, 4, 3), (128, 64, 4, 3), (256, 32, 8, 3)]
    return [
        triton.Config({wide: size, "BK": depth}, num_warps=warps, num_stages=stages)
        for size, depth, warps, stages in shapes
    ]


def _quick_bench(kernel_call, quantiles):
    """Autotuning's timing, shortened (3 ms warm-up, 10 ms of runs per tile shape): the
    shapes differ by far more than that resolves, and every new layer shape pays it."""
    return triton.testing.do_bench(kernel_call, warmup=3, rep=10, quantiles=quantiles)


_ROWS_CONFIGS = [
    triton.Config({"BN": size, "BK": depth}, num_warps=warps, num_stages=stages)
    for size, depth, warps, stages in [
        (128, 32, 4, 4),
        (128, 64, 4, 3),
        (256, 64, 8, 3),
        (64, 64, 4, 4),
        (256, 32, 8, 4),
        (128, 128, 4, 3),
        (128, 128, 8, 3),
    ]
]

# GROUPSPARSE_TRITON_AUTOTUNE=0: the first tile shape of each kernel, no timing (for tests,
# which check arithmetic and would otherwise compile every shape for every case)
AUTOTUNE = os.environ.get("GROUPSPARSE_TRITON_AUTOTUNE", "1") != "0"

if INTERPRETED:  # one fixed tile: the interpreter checks arithmetic, not speed
    _conv = _conv_kernel
    _linear = _linear_kernel
    _rows = _rows_kernel
    _FIXED_CONV = {"BN": 32, "BK": 16}
    _FIXED_LINEAR = {"BT": 32, "BK": 16}
    _FIXED_ROWS = {"BN": 32, "BK": 16}
elif not AUTOTUNE:
    _conv, _linear, _rows = _conv_kernel, _linear_kernel, _rows_kernel
    _FIXED_CONV = {"BN": 128, "BK": 32, "num_warps": 4, "num_stages": 3}
    _FIXED_LINEAR = {"BT": 128, "BK": 32, "num_warps": 4, "num_stages": 3}
    _FIXED_ROWS = {"BN": 128, "BK": 32, "num_warps": 4, "num_stages": 4}
else:
    _rows = triton.autotune(
        configs=_ROWS_CONFIGS, key=["kept", "n", "G", "BM", "m_blocks"], do_bench=_quick_bench
    )(_rows_kernel)
    _FIXED_ROWS = {}
    _conv = triton.autotune(
        configs=_configs("BN"), key=["kept", "n_total", "G", "BM"], do_bench=_quick_bench
    )(_conv_kernel)
    _linear = triton.autotune(
        configs=_configs("BT"), key=["kept", "tokens", "G", "BM"], do_bench=_quick_bench
    )(_linear_kernel)
    _FIXED_CONV = _FIXED_LINEAR = {}


def _row_block(group_rows: int) -> int:
    """The tile's height: the group's rows, at least 16 (the matrix units' smallest) and at
    most 128 (larger groups take several tiles)."""
    return min(128, max(16, triton.next_power_of_2(group_rows)))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def fused_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: tuple[int, ...],
    relu: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """Write the group-sparse conv of ``x`` into ``out`` (B, groups*G, OH, OW), gathering
    pixel by pixel (a 1x1 conv of stride 1 without padding is better run as
    ``rows_product`` over whole channel planes)."""
    groups, group_rows, kept = weight.shape
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    n_total = batch * out_h * out_w
    block = _row_block(group_rows)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (groups, triton.cdiv(n_total, meta["BN"]), triton.cdiv(group_rows, block))

    _conv[grid](
        x, weight, table, bias if bias is not None else out, out,
        kept, n_total, out_h * out_w, out_w, height, width, geometry[2], geometry[3],
        channels * height * width, out.shape[1] * out_h * out_w, group_rows, int(relu),
        BM=block, HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype), **_FIXED_CONV,
    )  # fmt: skip
    return out


def rows_product(
    source: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    out: torch.Tensor,
    *,
    transposed_out: bool,
) -> torch.Tensor:
    """``out[b, group*G + m, :] = sum_k weight[group, m, k] * source[b, index[group*k + k], :]``
    for ``source`` (B, R, N) with contiguous rows; with ``transposed_out`` the output is
    written as ``out[b, :, group*G + m]`` instead (``out`` (B, N, groups*G))."""
    groups, group_rows, kept = weight.shape
    batch, _, n = source.shape
    block = _row_block(group_rows)
    m_blocks = triton.cdiv(group_rows, block)
    channel_stride, n_stride = (1, out.stride(1)) if transposed_out else (out.stride(1), 1)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (groups, triton.cdiv(n, meta["BN"]), batch * m_blocks)

    _rows[grid](
        source, weight, index, index, bias if bias is not None else out, out,
        kept, n, source.stride(1), source.stride(0), channel_stride, n_stride, out.stride(0),
        1, 1, group_rows, int(relu), m_blocks,
        BM=block, HAS_BIAS=bias is not None, PRECISION=_precision(source.dtype),
        SHIFTED=False, WIDE=False, **_FIXED_ROWS,
    )  # fmt: skip
    return out


def wide_plan(
    geometry: tuple[int, ...], height: int, width: int, max_junk: float = 0.25
) -> tuple[int, int, int] | None:
    """``(pitch, padded_height, plane)`` of ``wide_conv2d`` for a conv of ``geometry`` on
    ``height x width`` images, or None where it does not apply: strides other than 1, or a
    wide grid whose junk columns would be more than ``max_junk`` of it (small images)."""
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    if (sh, sw) != (1, 1):
        return None
    out_w = width + left + right - (kw - 1) * dw
    out_h = height + top + bottom - (kh - 1) * dh
    if out_w < 1 or out_h < 1:
        return None
    pitch = -(-(out_w + (kw - 1) * dw) // 16) * 16
    if out_w < (1 - max_junk) * pitch:
        return None
    padded_height = out_h + (kh - 1) * dh
    return pitch, padded_height, padded_height * pitch


def wide_tables(
    columns: torch.Tensor, geometry: tuple[int, ...], channels: int, pitch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``wide_conv2d``'s per-column tables, int32: the source row of each kept im2col column
    (``kx * C + c``: the copy shifted by its tap's column, then its channel) and its start
    in that row in units of 16 elements (``ky * dh * pitch / 16``)."""
    kh, kw, dh = geometry[0], geometry[1], geometry[8]
    flat = columns.reshape(-1).to(torch.int64)
    channel, tap = flat // (kh * kw), flat % (kh * kw)
    row = (tap % kw) * channels + channel
    shift = (tap // kw) * dh * pitch // 16
    return row.to(torch.int32).contiguous(), shift.to(torch.int32).contiguous()


def wide_source(
    x: torch.Tensor, geometry: tuple[int, ...], pitch: int, padded_height: int
) -> torch.Tensor:
    """``(B, KW, C, padded_height * pitch)``: the zero-padded images laid out on rows of
    ``pitch`` pixels, once per kernel column ``kx``, each row shifted left by ``kx * dw``
    (zeros come in on the right), so that every tap's rows start on a 16-element boundary.
    The shift's lost columns are read only by the wide grid's junk columns. One kernel
    writes it all (built from torch ops, zeros plus copies plus a stack, it cost 0.39 ms of
    a VGG 256-channel 56x56 layer's 0.55 on the H200, the product itself 0.16)."""
    _, kw, _, _, top, _, left, _, _, dw = geometry
    x = x.contiguous()
    batch, channels, height, width = x.shape
    out = torch.empty(batch, kw, channels, padded_height * pitch, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    row_block = triton.next_power_of_2(pitch)
    # about 4096 elements a tile: no more rows than the plane has, then as many planes as
    # fill it (14x14: 16 rows of 16, 16 planes a tile)
    tile = 512 if INTERPRETED else 4096
    rows = min(max(1, tile // row_block), triton.next_power_of_2(padded_height))
    planes = batch * kw * channels
    per_tile = min(max(1, tile // (rows * row_block)), triton.next_power_of_2(planes))
    _wide_source_kernel[(triton.cdiv(planes, per_tile), triton.cdiv(padded_height, rows))](
        x, out, planes, channels, kw, height, width, x.stride(1), x.stride(0), pitch,
        padded_height, top, left, dw, PL=per_tile, BR=rows, BP=row_block,
    )  # fmt: skip
    return out


def wide_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    shifts: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: tuple[int, ...],
    relu: bool,
    out: torch.Tensor,
    plan: tuple[int, int, int],
) -> torch.Tensor:
    """A stride-1 conv as ``rows_product`` over a wide grid: with the images padded and
    laid out on rows of ``pitch`` pixels (a multiple of 16), tap ``(ky, kx)`` of channel
    ``c`` is one contiguous, aligned run of a shifted copy of the image; outputs are computed
    on the wide grid and the junk columns (``ox >= OW``) are not written. Costs ``KW``
    padded copies of the input; ``plan`` is ``wide_plan``'s."""
    pitch, padded_height, _ = plan
    source = wide_source(x, geometry, pitch, padded_height)  # (B, KW, C, plane)
    source = source.view(x.shape[0], -1, source.shape[-1])  # rows kx*C + c
    return wide_product(source, weight, rows, shifts, bias, relu, out, pitch)


def wide_product(
    source: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    shifts: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    out: torch.Tensor,
    pitch: int,
) -> torch.Tensor:
    """``wide_conv2d``'s kernel alone, on ``source`` (B, KW*C, plane) as ``wide_source``
    lays it out (timed apart from the copy by tools/gpu_kernels.py)."""
    groups, group_rows, kept = weight.shape
    batch = source.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    block = _row_block(group_rows)
    m_blocks = triton.cdiv(group_rows, block)
    n = out_h * pitch

    def grid(meta: dict) -> tuple[int, int, int]:
        return (groups, triton.cdiv(n, meta["BN"]), batch * m_blocks)

    _rows[grid](
        source, weight, rows, shifts, bias if bias is not None else out, out,
        kept, n, source.stride(1), source.stride(0), out.stride(1), 1, out.stride(0),
        pitch, out_w, group_rows, int(relu), m_blocks,
        BM=block, HAS_BIAS=bias is not None, PRECISION=_precision(source.dtype),
        SHIFTED=True, WIDE=True, **_FIXED_ROWS,
    )  # fmt: skip
    return out


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """Write the group-sparse linear of ``x`` (T, K) into ``out`` (T, groups*G).

    ``LINEAR_LAYOUT`` "rows" (default) transposes x once, so that each kept column is a
    contiguous row of x^T gathered whole (``rows_product``); "columns" gathers the kept
    columns of x in place, element by element."""
    if LINEAR_LAYOUT == "rows":
        source = transpose(x).unsqueeze(0)  # (1, K, T)
        return rows_product(
            source, weight, columns, bias, relu, out.unsqueeze(0), transposed_out=True
        )
    groups, group_rows, kept = weight.shape
    tokens, in_features = x.shape
    block = _row_block(group_rows)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (groups, triton.cdiv(tokens, meta["BT"]), triton.cdiv(group_rows, block))

    _linear[grid](
        x, weight, columns, bias if bias is not None else out, out,
        kept, tokens, in_features, out.shape[1], group_rows, int(relu),
        BM=block, HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype), **_FIXED_LINEAR,
    )  # fmt: skip
    return out
