"""CPU kernels for group-sparse layers.

Float32 layers run the native fused kernels (``native.py``; ``csrc/grouped_gemm.cpp`` for
convs, ``csrc/grouped_linear.cpp`` for linears) wherever they build: on the 56x56 VGG conv at
75% the native kernel is about 1.5x faster than the torch-ops kernel below
(``tools/bench_layers.py``'s torch/ours column), because the gathered columns never leave the
cache and its microkernel keeps 64-row groups near full speed; the linear kernel reads the
tokens where they are, with no gather and no transpose. Everything else (other dtypes, no
compiler, no AVX2, or
``GROUPSPARSE_NATIVE=0``) runs the torch-ops kernel, built on PyTorch's own ops (MKL BLAS
underneath), which the rest of this docstring describes. ``native_ready`` is the one place
that chooses.

A group-sparse layer is given by a packed weight ``(groups, G, k)`` and the kept columns
``(groups, k)`` of each group on the (M, K) view (for a conv: K indexes input channel,
kernel row, kernel column in im2col order). Output channel ``g*G + r`` is row r of group g.

- ``grouped_conv2d`` / ``grouped_linear``: a gather ("reordered im2col": each group's kept
  columns written contiguously, straight from the padded input) and a batched GEMM that
  writes every group's rows straight into the output, tile by tile.
- ``loop_conv2d`` / ``loop_linear``: the earlier group-wise implementation the paper compares
  against: one gather and one GEMM per group, launched one after another. Kept for benchmarks
  (device-agnostic: the CUDA backend reuses them).

How the conv kernel runs, and why (figures: 2-core AMD EPYC, torch 2.13, tools/bench_layers.py):

- The gather is ``index_select`` along dim 0 of an overlapping ``as_strided`` view of the flat
  padded input whose entry o is the window starting at offset o: one block copy per kept
  column. Advanced indexing (``view[offsets]``) copies element by element and was 3-4x slower;
  ``index_select`` along any other dim first makes the overlapping view contiguous (gigabytes).
- Tiles: bands of output rows (or several whole images) whose gathered columns take about
  4 MB, so the GEMM reads them from cache right after the gather; a band is at least 256
  output pixels wide, since MKL runs narrow GEMMs well below speed.
- The GEMM is ``bmm(weight, gathered, out=...)`` into a strided slice of the output: no
  scatter, no transpose. With one image per tile it writes the NCHW output in place.
- Stride-1 convs with short rows use a "wide grid" (see ``_ConvGrid``): each window is one
  contiguous run, at the price of ``(kw - 1) * dw`` junk columns per row, dropped by the
  epilogue pass, which also adds the bias and applies the ReLU.
- What bounds it: the GEMMs have only G rows; MKL runs a 64-row GEMM at about 80% of its
  256-row speed, and oneDNN's direct dense conv is faster still, so at 75% sparsity the
  ratio to dense is below the 4x FLOP bound even before the gather.

Nothing here knows of fx or of plans; the custom operators in ``ops.py`` call these.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from . import native

__all__ = [
    "ConvGeometry",
    "blocked_linear_weight",
    "conv_output_size",
    "gather_conv_columns",
    "grouped_conv2d",
    "grouped_conv2d_torch",
    "grouped_linear",
    "grouped_linear_torch",
    "k_major",
    "loop_conv2d",
    "loop_linear",
    "max_pool2d",
    "pool_output_size",
]

# the kernels that take a ``residual`` (the ops fuse a shortcut add only into these)
RESIDUAL_KERNELS = ("grouped_conv2d", "grouped_conv2d_torch", "loop_conv2d")

# (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
#  dilation_h, dilation_w) - a plain tuple so it passes through torch.library as int[]
ConvGeometry = tuple[int, int, int, int, int, int, int, int, int, int]

# The gathered columns of one tile (all groups, a band of output pixels) are sized to stay
# in the caches until the GEMM that follows reads them.
_TILE_BYTES = 4 << 20
# ... but a tile covers at least this many output pixels or tokens (the GEMM's width).
_MIN_TILE_PIXELS = 256
# Below this output width, a stride-1 conv uses the wide grid (see _ConvGrid).
_NARROW_MIN_WIDTH = 32
# Tokens per work item of the native linear kernel (balanced across the sequence in the
# kernel): 64 keeps a 128-token sequence's items even on 2 threads while a group's weights are
# read about once per 64 tokens.
_NATIVE_LINEAR_CHUNK = 64
# Padded inputs this large zero only their border (F.pad fills the whole buffer first).
_PAD_IN_PLACE_NUMEL = 1 << 18


def conv_output_size(height: int, width: int, geometry: ConvGeometry) -> tuple[int, int]:
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    return out_h, out_w


def _padded_flat(x: torch.Tensor, geometry: ConvGeometry, use_native: bool = False) -> torch.Tensor:
    """The zero-padded input as one flat NCHW buffer (also converts channels_last).
    ``use_native``: a large contiguous float32 input is padded by ``native.pad2d`` (one pass,
    on every thread) rather than by torch ops (zero the border, then a strided copy, on one
    thread): 2 threads, 256x56x56 and 512x28x28, 1.5-1.8x faster (``python
    tools/bench_layers.py --pad``)."""
    _, _, top, bottom, left, right = geometry[2:8]
    batch, channels, height, width = x.shape
    contiguous = x.is_contiguous()
    if not (top or bottom or left or right) and contiguous:
        return x.reshape(-1)
    padded_h, padded_w = height + top + bottom, width + left + right
    if contiguous and batch * channels * padded_h * padded_w < _PAD_IN_PLACE_NUMEL:
        return F.pad(x, (left, right, top, bottom)).view(-1)  # one op: fill, then copy
    if use_native and contiguous and x.dtype == torch.float32:
        padded = x.new_empty(batch, channels, padded_h, padded_w)
        return native.pad2d(x, padded, padding=(top, bottom, left, right)).view(-1)
    # large or channels_last: zero only the border, then one copy (and conversion) of the rest
    padded = x.new_empty(batch, channels, padded_h, padded_w)
    if top:
        padded.narrow(2, 0, top).zero_()
    if bottom:
        padded.narrow(2, top + height, bottom).zero_()
    rows = padded.narrow(2, top, height)
    if left:
        rows.narrow(3, 0, left).zero_()
    if right:
        rows.narrow(3, left + width, right).zero_()
    rows.narrow(3, left, width).copy_(x)
    return padded.view(-1)


def _column_offsets(
    columns: torch.Tensor, geometry: ConvGeometry, padded_h: int, padded_w: int
) -> torch.Tensor:
    """Flat offsets into one padded image of each kept im2col column (c, i, j)."""
    kh, kw, _, _, _, _, _, _, dh, dw = geometry
    taps = kh * kw
    channel, tap = columns // taps, columns % taps
    return channel * (padded_h * padded_w) + (tap // kw) * (dh * padded_w) + (tap % kw) * dw


class _ConvGrid:
    """Where a conv's im2col columns sit in the flat padded input, and how the work is tiled.

    Column (c, i, j) of image b, for a band of output rows starting at row r, is one window of
    the flat padded input starting at ``offset(c, i, j) + b * image + r * stride_h * padded_w``.

    - narrow grid: a window is an (rows, out_w) block with row stride ``stride_h * padded_w``.
    - wide grid (stride 1 only): the GEMM also computes the ``padded_w - out_w`` columns past
      the end of each output row, so a window is one contiguous run (a plain memcpy). The
      junk columns are dropped by the epilogue. Used when rows are short (a narrow window
      copies many tiny runs) or when there is no junk at all (1x1 kernels, no padding).
    """

    def __init__(self, shape: torch.Size, geometry: ConvGeometry, wide: bool | None) -> None:
        _, _, sh, sw, top, bottom, left, right, _, _ = geometry
        self.batch, self.channels, height, width = shape
        self.height, self.width = height, width
        self.out_h, self.out_w = conv_output_size(height, width, geometry)
        self.padded_h, self.padded_w = height + top + bottom, width + left + right
        self.image = self.channels * self.padded_h * self.padded_w
        self.sh, self.sw = sh, sw
        if wide is None:
            wide = self.padded_w == self.out_w or self.out_w < _NARROW_MIN_WIDTH
        self.wide = wide and sh == 1 and sw == 1
        if self.wide:
            self.row_pitch = self.padded_w  # output pixels per output row, junk included
            # an image's output is out_h rows of padded_w, the last one cut at out_w
            self.pixels = (self.out_h - 1) * self.padded_w + self.out_w
        else:
            self.row_pitch = self.out_w
            self.pixels = self.out_h * self.out_w

    def windows(self, flat: torch.Tensor, rows: int, last: bool) -> torch.Tensor:
        """A view whose entry o is the window of ``rows`` output rows starting at offset o.

        ``last``: the band ends at the image's last row (cut at out_w in the wide grid)."""
        if self.wide:
            length = rows * self.padded_w - (self.padded_w - self.out_w if last else 0)
            return flat.as_strided((flat.numel() - length + 1, length), (1, 1))
        extent = (rows - 1) * self.sh * self.padded_w + (self.out_w - 1) * self.sw + 1
        return flat.as_strided(
            (flat.numel() - extent + 1, rows, self.out_w), (1, self.sh * self.padded_w, self.sw)
        )

    def band_pixels(self, row: int, rows: int) -> tuple[int, int]:
        """First pixel and pixel count of output rows [row, row + rows) of one image."""
        start = row * self.row_pitch
        end = self.pixels if row + rows == self.out_h else (row + rows) * self.row_pitch
        return start, end - start


def _band_size(grid: _ConvGrid, gathered_rows: int, tile_bytes: int, item: int) -> tuple[int, int]:
    """(images, rows) per tile, so that a tile's gathered columns take about tile_bytes.

    Bands are balanced (an image of 14 rows in two tiles is 7 + 7, not 13 + 1), rounded to the
    nearest count, and at least _MIN_TILE_PIXELS wide: a thinner GEMM runs well below speed."""
    image_bytes = gathered_rows * grid.pixels * item
    bands = max(1, round(image_bytes / max(tile_bytes, 1)))
    bands = min(bands, grid.out_h, max(1, grid.pixels // _MIN_TILE_PIXELS))
    if bands > 1:
        return 1, -(-grid.out_h // bands)
    images = max(1, round(tile_bytes / max(image_bytes, 1)))
    return max(1, min(grid.batch, images)), grid.out_h


def gather_conv_columns(
    x: torch.Tensor, columns: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """Reordered im2col: ``(B, len(columns), OH, OW)``, column n holding im2col row columns[n]."""
    _, _, sh, sw, top, bottom, left, right, _, _ = geometry
    batch, channels, height, width = x.shape
    out_h, out_w = conv_output_size(height, width, geometry)
    if batch == 0:
        return x.new_empty(0, columns.numel(), out_h, out_w)
    flat = _padded_flat(x, geometry)
    padded_h, padded_w = height + top + bottom, width + left + right
    offsets = _column_offsets(columns.reshape(-1), geometry, padded_h, padded_w)
    image = channels * padded_h * padded_w
    extent = (out_h - 1) * sh * padded_w + (out_w - 1) * sw + 1
    windows = flat.as_strided((flat.numel() - extent + 1, out_h, out_w), (1, sh * padded_w, sw))
    starts = (torch.arange(batch, device=x.device) * image)[:, None] + offsets[None, :]
    if x.device.type == "cpu":
        # index_select along dim 0 copies each window as a block; advanced indexing would
        # copy element by element, and index_select on dim 1 materializes the overlapping view
        return windows.index_select(0, starts.reshape(-1)).view(batch, -1, out_h, out_w)
    return windows[starts]


def _epilogue(out: torch.Tensor, relu: bool) -> torch.Tensor:
    return out.relu_() if relu else out


def _shortcut(out: torch.Tensor, residual: torch.Tensor, relu: bool) -> torch.Tensor:
    """out = relu?(out + residual), in place: one pass."""
    if relu:
        return torch.ops.aten._add_relu_(out, residual)
    return out.add_(residual)


def _store(
    source: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None, relu: bool
) -> None:
    """target = relu?(source + bias?): one pass, into a strided view of the output."""
    if bias is not None:
        if relu:
            torch.ops.aten._add_relu.out(source, bias, out=target)
        else:
            torch.add(source, bias, out=target)
    elif relu:
        torch.clamp(source, min=0, out=target)
    else:
        target.copy_(source)


def grouped_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
    *,
    tile_bytes: int = _TILE_BYTES,
    wide: bool | None = None,
    use_native: bool | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-sparse conv2d: ``(B, C, H, W)`` (NCHW or channels_last) -> contiguous NCHW
    ``(B, groups*G, OH, OW)``; ``residual``, shaped as the output, is added before the ReLU
    (in the native kernel's epilogue; after the GEMM otherwise).

    Float32 runs the native fused kernel (``native.py``) where it is available
    (``use_native=None``: whenever it is; True: insist; False: never); the rest of this
    docstring describes the torch-ops kernel that runs otherwise.

    Tiled over bands of output pixels: each band's kept columns (all groups) are gathered into
    a buffer of about ``tile_bytes``, then one batched GEMM computes every group's rows of that
    band. A tile that is one whole image is written by the GEMM straight into the output;
    other tiles go through a small contiguous buffer (torch runs a batched GEMM as one MKL
    call only into a contiguous result; into a strided one it loops over the groups, each
    GEMM threaded on its own) and reach the output in the same pass that adds the bias and
    applies the ReLU. ``wide`` forces the wide (True) or narrow (False) grid (see
    ``_ConvGrid``); by default it is picked from the shape.

    >>> x = torch.randn(1, 8, 10, 10)
    >>> columns = torch.stack([torch.randperm(72)[:18].sort().values for _ in range(2)])
    >>> weight = torch.randn(2, 4, 18)  # 2 groups of 4 output channels, 18 kept columns each
    >>> grouped_conv2d(x, weight, columns, None, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)).shape
    torch.Size([1, 8, 10, 10])
    """
    if use_native is None:
        use_native = native_ready(x, weight)
    if use_native:
        return _native_conv2d(x, weight, columns, bias, geometry, relu, residual)
    if residual is not None:
        out = grouped_conv2d(x, weight, columns, bias, geometry, False, use_native=False)
        return _shortcut(out, residual, relu)
    groups, group_rows, kept = weight.shape
    grid = _ConvGrid(x.shape, geometry, wide)
    batch, pixels, out_h, out_w = grid.batch, grid.pixels, grid.out_h, grid.out_w
    channels = groups * group_rows
    flat = _padded_flat(x, geometry)
    offsets = memo(
        (columns,),
        ("offsets", tuple(geometry), grid.padded_h, grid.padded_w),
        lambda: _column_offsets(columns.reshape(-1), geometry, grid.padded_h, grid.padded_w),
    )
    item = x.element_size()
    images, rows = _band_size(grid, groups * kept, tile_bytes, item)
    # a band can be no thinner than _MIN_TILE_PIXELS: when one is still far above tile_bytes
    # (small images, many kept columns), the tile also splits the groups
    band_pixels = images * pixels if rows == out_h else min(rows * grid.row_pitch, pixels)
    chunks = min(groups, max(1, round(groups * kept * band_pixels * item / max(tile_bytes, 1))))
    chunk = -(-groups // chunks)
    # whole images, one per tile: the GEMM writes (groups, G, pixels) of the output in place
    in_place = images == 1 and rows == out_h
    junk = grid.wide and grid.padded_w != out_w
    if in_place:
        out = x.new_empty(batch, groups, group_rows, pixels)
        result = out if not junk else x.new_empty(batch, channels, out_h, out_w)
    else:
        result = x.new_empty(batch, channels, out_h, out_w)
    result5 = result.view(batch, groups, group_rows, out_h, out_w)
    bias5 = None if bias is None else bias.view(1, groups, group_rows, 1, 1)
    band_views: dict[tuple[int, bool], torch.Tensor] = {}
    for image in range(0, batch, images):
        count = min(images, batch - image)
        for row in range(0, out_h, rows):
            band = min(rows, out_h - row)
            last = row + band == out_h
            windows = band_views.get((band, last))
            if windows is None:
                windows = band_views[(band, last)] = grid.windows(flat, band, last)
            base = image * grid.image + row * grid.sh * grid.padded_w
            length = grid.band_pixels(row, band)[1] if count == 1 else count * pixels
            for first in range(0, groups, chunk):
                size = min(chunk, groups - first)
                part = offsets if size == groups else offsets[first * kept : (first + size) * kept]
                if count == 1:
                    index = part + base if base else part
                else:
                    starts = base + torch.arange(count, device=x.device) * grid.image
                    index = (part[:, None] + starts).view(-1)
                gathered = windows.index_select(0, index).view(size, kept, length)
                part_weight = weight if size == groups else weight[first : first + size]
                if in_place:
                    torch.bmm(part_weight, gathered, out=out[image, first : first + size])
                    continue
                tile = torch.bmm(part_weight, gathered)  # (size, G, count * band pixels)
                source = tile.as_strided(
                    (count, size, group_rows, band, out_w),
                    (length // count, group_rows * length, length, grid.row_pitch, 1),
                )
                target = result5[image : image + count, first : first + size, :, row : row + band]
                part_bias = None if bias5 is None else bias5[:, first : first + size]
                _store(source, target, part_bias, relu)
    if not in_place:
        return result
    if junk:
        source = out.as_strided(
            (batch, groups, group_rows, out_h, out_w),
            (channels * pixels, group_rows * pixels, pixels, grid.padded_w, 1),
        )
        _store(source, result5, bias5, relu)
        return result
    result = out.view(batch, channels, out_h, out_w)
    if bias is None:
        return _epilogue(result, relu)
    if relu:
        return torch.ops.aten._add_relu_(result, bias.view(-1, 1, 1))
    return result.add_(bias.view(-1, 1, 1))


def native_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The one place that decides between the native kernel and the torch-ops one."""
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and native.library() is not None
    )


# the compiler's question (ops.two_grouped_kernels): native and torch-ops kernels both run
two_grouped_kernels = native_ready


def _tile_pixels(pixels: int) -> int:
    """24 pixels per microkernel call (4 x 24), or 16 (6 x 16) where that computes 5% fewer
    pixels: 7x7 and 14x14 images, whose wide grids are 63 and 224 pixels. Both tiles side by
    side, 512 channels 3x3 at 75%: 7x7 0.82 ms with 16 against 0.95 with 24, 14x14 3.02
    against 3.16; 24 stays ahead on 28x28 and 56x56 (``python tools/bench_layers.py
    --conv-tiles``)."""
    def padded(tile: int) -> int:
        return -(-pixels // tile) * tile

    return 16 if padded(16) < 0.95 * padded(24) else 24


def _native_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grouped_conv2d`` by the native kernel: stride-1 convs on the wide grid (each tile of
    pixels is one contiguous run of every column), others on the narrow one. The kernel's
    arguments are built once per layer and input shape (``_prepared_conv``)."""
    call, out_shape = memo(
        (weight, columns, bias),
        ("conv", tuple(geometry), relu, tuple(x.shape)),
        lambda: _prepared_conv(x.shape, weight, columns, bias, geometry, relu),
    )
    if call.unpadded:  # the kernel pads as it gathers
        flat = x.contiguous().view(-1)
    else:
        flat = _padded_flat(x, geometry, use_native=True)
    out = x.new_empty(out_shape)
    return call(flat, out, None if residual is None else residual.contiguous())


def _prepared_conv(
    shape: torch.Size,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool,
) -> tuple[native.ConvCall, tuple[int, ...]]:
    groups, group_rows, _ = weight.shape
    grid = _ConvGrid(shape, geometry, wide=True)
    taps = grid.channels * geometry[0] * geometry[1]
    if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= taps):
        raise IndexError(f"columns must index the layer's {taps} im2col columns")
    offsets = _column_offsets(columns.reshape(-1), geometry, grid.padded_h, grid.padded_w)
    if grid.wide:
        mapping = (grid.padded_w, grid.padded_w, 1)
    else:
        mapping = (grid.out_w, grid.sh * grid.padded_w, grid.sw)
    out_shape = (grid.batch, groups * group_rows, grid.out_h, grid.out_w)
    pixels = grid.pixels
    tile = _tile_pixels(pixels)
    taps = None
    # the kernel's masks cover row and column shifts spanning fewer than 64
    kh, kw, dh, dw = geometry[0], geometry[1], geometry[8], geometry[9]
    if grid.wide and max((kh - 1) * dh, (kw - 1) * dw) < 64 and UNPADDED_GATHER != "off":
        flat = grid.out_h * grid.out_w
        if grid.out_w == grid.width and (
            UNPADDED_GATHER == "flat" or (UNPADDED_GATHER == "auto" and flat <= FLAT_MAX_PIXELS)
        ):
            # tiles run across output rows, no junk: the grid is the output itself
            pixels, mapping = flat, (grid.out_w, grid.out_w, 1)
            tile = FLAT_TILE or _tile_pixels(flat)
            taps = _unpadded_taps(columns, geometry, grid)
        elif grid.padded_w == tile:
            taps = _unpadded_taps(columns, geometry, grid)
    call = native.ConvCall(
        offsets.to(torch.int64).contiguous(),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        batch=grid.batch,
        image=grid.channels * grid.height * grid.width if taps is not None else grid.image,
        out_image=groups * group_rows * grid.out_h * grid.out_w,
        pixels=pixels,
        grid=mapping,
        valid_w=grid.out_w,
        dst_row=grid.out_w,
        out_channel=grid.out_h * grid.out_w,
        relu=relu,
        tile=tile,
        taps=taps,
        in_hw=(grid.height, grid.width) if taps is not None else (0, 0),
    )
    return call, out_shape


# Where the native conv pads in its gather (masked loads from the unpadded input) rather
# than reading a padded copy. "auto": on a flat grid (tiles of output pixels running across
# rows, no junk columns) for stride-1 convs whose output rows are as wide as the input's and
# whose images have at most FLAT_MAX_PIXELS output pixels, else on the wide grid where one of
# its rows is one tile. "flat" and "rows": each wherever it applies; "off": never (the last
# three for comparison: python tools/bench_layers.py --gather-pad, 2 threads, 3x3 at 75/90%:
# flat against rows 14% / 18% less time on 512-channel 14x14, 14% / 20% on 7x7; against the
# padded copy, flat is 1-17% slower on 28x28 and 56x56).
UNPADDED_GATHER = "auto"
FLAT_MAX_PIXELS = 256
FLAT_TILE: int | None = None  # pixels a flat tile; None: _tile_pixels' choice


def _unpadded_taps(columns: torch.Tensor, geometry: ConvGeometry, grid: _ConvGrid) -> torch.Tensor:
    """``(groups, k, 3)`` int64: for each kept im2col column, its channel's plane start in
    the unpadded image and its tap's row and column shift (``ky*dh - top``, ``kx*dw - left``)."""
    kh, kw, _, _, top, _, left, _, dh, dw = geometry
    flat = columns.to(torch.int64)
    channel, tap = flat // (kh * kw), flat % (kh * kw)
    plane = channel * grid.height * grid.width
    return torch.stack(
        [plane, (tap // kw) * dh - top, (tap % kw) * dw - left], dim=-1
    ).contiguous()


def k_major(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(groups, G, k)``, stored k-major: each group's ``(k, G)`` block contiguous,
    the layout the torch-ops kernel's bmm reads. Plans of linear layers hold their weights so
    (the native kernel packs its own copy once: ``blocked_linear_weight``)."""
    return weight.transpose(1, 2).contiguous().transpose(1, 2)


# what memo() remembers: key -> (weak references to its tensors, their stamps, value)
_MEMO: dict[tuple, tuple[tuple, list, object]] = {}
_MEMO_LIMIT = 4096


def memo(tensors: tuple[torch.Tensor | None, ...], extra: tuple, build):
    """``build()``, remembered per layer: keyed by the identities of ``tensors`` (a plan's
    weights, kept columns, bias: the same tensor objects on every call) and ``extra``, and
    built again after an in-place change to one of them (its version counter moves) or when
    one is collected. Tensors without a version counter (inference tensors) are never
    remembered: ``build()`` runs on every call."""
    stamps = []
    for tensor in tensors:
        if tensor is None:
            stamps.append(None)
            continue
        try:
            stamps.append((tensor._version, tensor.data_ptr()))
        except RuntimeError:
            return build()
    key = (*(id(tensor) for tensor in tensors), *extra)
    hit = _MEMO.get(key)
    if (
        hit is not None
        and hit[1] == stamps
        and all(ref is None or ref() is t for ref, t in zip(hit[0], tensors, strict=True))
    ):
        return hit[2]
    value = build()
    forget = lambda _, key=key, table=_MEMO: table.pop(key, None)  # (at exit too)
    refs = tuple(None if t is None else weakref.ref(t, forget) for t in tensors)
    if len(_MEMO) >= _MEMO_LIMIT:
        _MEMO.clear()
    _MEMO[key] = (refs, stamps, value)
    return value


def blocked_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(groups, G, k)`` as the native linear kernel reads it: ``(groups,
    ceil(G / 16), k, 16)``, each block of 16 features' weights one sequential stream, zero rows
    past G (reading k-major rows 16 at a time instead took 9-13% longer on BERT's linears at
    75%). Packed once per weight tensor while it lives unchanged (``memo``)."""
    return memo((weight,), ("blocked",), lambda: _blocked(weight))


def _blocked(weight: torch.Tensor) -> torch.Tensor:
    groups, rows, kept = weight.shape
    blocks = -(-rows // 16)
    padded = weight.new_zeros(groups, blocks * 16, kept)
    padded[:, :rows] = weight
    return padded.view(groups, blocks, 16, kept).transpose(2, 3).contiguous()


def _native_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    chunk: int = _NATIVE_LINEAR_CHUNK,
) -> torch.Tensor:
    """``grouped_linear`` by the native kernel: tokens as they are, (tokens, features) out.
    The kernel's arguments are built once per layer (``memo``)."""
    call = memo(
        (weight, columns, bias),
        ("linear", relu, chunk),
        lambda: native.LinearCall(
            columns.to(torch.int64).contiguous(),
            _blocked(weight),
            None if bias is None else bias.contiguous(),
            group_rows=weight.shape[1],
            relu=relu,
            chunk=chunk,
        ),
    )
    features = x.shape[-1]
    tokens = x.reshape(-1, features)
    if not tokens.is_contiguous():
        tokens = tokens.contiguous()
    out = x.new_empty(tokens.shape[0], call.features)
    call(tokens, out)
    return out.view(*x.shape[:-1], call.features)


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
    *,
    gather: str = "auto",
    tile_bytes: int = _TILE_BYTES,
    use_native: bool | None = None,
) -> torch.Tensor:
    """Group-sparse linear: ``(..., K)`` -> contiguous ``(..., groups*G)``.

    Float32 runs the native fused kernel where it is available (``use_native`` as for
    ``grouped_conv2d``); the rest of this docstring describes the torch-ops kernel.

    Tiled over tokens so that a tile's gathered columns take about ``tile_bytes`` (but at least
    _MIN_TILE_PIXELS tokens per tile, for the GEMM's sake). One batched GEMM per tile computes
    every group's ``(tokens, G)`` block into a contiguous buffer (so that torch runs it as one
    MKL batched call), and one pass moves it into the output's columns with the bias and
    ReLU. ``gather``:

    - ``"columns"``: ``x.index_select(1, ...)``, one serial pass over the kept columns;
    - ``"rows"``: transpose x, then copy whole rows of x^T (a parallel memcpy per kept
      column); pays a transpose of x, so it wins when the kept columns outnumber K;
    - ``"auto"``: "rows" when the groups keep at least twice K columns in all (four times on
      one thread), else "columns".

    >>> x = torch.randn(2, 5, 16)
    >>> columns = torch.stack([torch.randperm(16)[:4].sort().values for _ in range(3)])
    >>> grouped_linear(x, torch.randn(3, 8, 4), columns, None).shape  # 3 groups of 8 rows
    torch.Size([2, 5, 24])
    """
    if gather not in ("auto", "rows", "columns"):
        raise ValueError(f"gather must be 'auto', 'rows' or 'columns'; got {gather!r}")
    if use_native is None:
        use_native = native_ready(x, weight)
    if use_native:
        return _native_linear(x, weight, columns, bias, relu)
    groups, group_rows, kept = weight.shape
    features = x.shape[-1]
    tokens = x.reshape(-1, features)
    count = tokens.shape[0]
    flat_columns = columns.reshape(-1)
    if gather == "auto":
        # the transpose is serial, the row copies parallel: with one thread, rows pay off
        # only when the kept columns outnumber K four to one (measured on BERT's linears)
        ratio = 2 if torch.get_num_threads() > 1 else 4
        gather = "rows" if groups * kept >= ratio * features else "columns"
    out = x.new_empty(count, groups, group_rows)
    bias3 = None if bias is None else bias.view(groups, group_rows)
    weight_t = weight.transpose(1, 2)
    item = x.element_size()
    step = max(_MIN_TILE_PIXELS, tile_bytes // max(groups * kept * item, 1))
    # too many kept columns for even _MIN_TILE_PIXELS tokens: the tile also splits the groups
    chunks = min(
        groups, max(1, round(groups * kept * min(step, count) * item / max(tile_bytes, 1)))
    )
    chunk = -(-groups // chunks)
    for first in range(0, count, step):
        part = tokens[first : first + step] if step < count else tokens
        size = part.shape[0]
        source = part.t().contiguous() if gather == "rows" else part
        for group in range(0, groups, chunk):
            width = min(chunk, groups - group)
            whole = width == groups
            wanted = flat_columns if whole else flat_columns[group * kept : (group + width) * kept]
            if gather == "rows":
                gathered = source.index_select(0, wanted).view(width, kept, size).transpose(1, 2)
            else:
                gathered = source.index_select(1, wanted).view(size, width, kept).transpose(0, 1)
            tile = torch.bmm(gathered, weight_t if whole else weight_t[group : group + width])
            target = (
                out if whole and size == count else out[first : first + size, group : group + width]
            )
            part_bias = bias3 if bias3 is None or whole else bias3[group : group + width]
            _store(tile.transpose(0, 1), target, part_bias, relu)
    return out.view(*x.shape[:-1], groups * group_rows)


def grouped_conv2d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grouped_conv2d`` on the torch-ops kernel, whatever the native one could do (the
    compiler picks it per layer where it times faster)."""
    return grouped_conv2d(
        x, weight, columns, bias, geometry, relu, use_native=False, residual=residual
    )


def grouped_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """``grouped_linear`` on the torch-ops kernel (see ``grouped_conv2d_torch``)."""
    return grouped_linear(x, weight, columns, bias, relu, use_native=False)


def loop_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The earlier implementation: per group, its own gather and its own GEMM, one after another
    (a ``residual`` is added afterwards, before the ReLU)."""
    groups, group_rows, _ = weight.shape
    outputs = []
    for group in range(groups):
        gathered = gather_conv_columns(x, columns[group], geometry)  # (B, k, OH, OW)
        batch, kept, out_h, out_w = gathered.shape
        part = torch.matmul(weight[group], gathered.reshape(batch, kept, out_h * out_w))
        if bias is not None:
            part = part + bias[group * group_rows : (group + 1) * group_rows, None]
        outputs.append(part.view(batch, group_rows, out_h, out_w))
    out = torch.cat(outputs, dim=1)
    return _epilogue(out, relu) if residual is None else _shortcut(out, residual, relu)


def loop_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """The earlier implementation for linear layers: one gather and one GEMM per group."""
    groups, group_rows, _ = weight.shape
    tokens = x.reshape(-1, x.shape[-1])
    outputs = []
    for group in range(groups):
        part = tokens[:, columns[group]] @ weight[group].t()
        if bias is not None:
            part = part + bias[group * group_rows : (group + 1) * group_rows]
        outputs.append(part)
    return _epilogue(torch.cat(outputs, dim=1), relu).view(*x.shape[:-1], groups * group_rows)


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> int:
    """One spatial size of a max-pool's output, by torch's rule (a ceil_mode window must start
    inside the input or its left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def max_pool2d(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``F.max_pool2d`` (values only), by the native kernel on contiguous NCHW float32 CPU
    tensors, where torch's own walks each window element by element (10.9 ms against 1.3 for
    VGG-16's first pool on 2 threads: ``python tools/bench_layers.py --pools``); anything else
    (channels_last, where torch is fast, other dtypes and devices) goes to torch."""
    if not (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() in (3, 4)
        and x.is_contiguous()
        and native.library() is not None
    ):
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    out_h, out_w = (
        pool_output_size(x.shape[-2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
        for i in range(2)
    )
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1] or min(out_h, out_w) < 1:
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)  # torch's error
    out = x.new_empty(*x.shape[:-2], out_h, out_w)
    if out.numel() == 0:
        return out
    return native.max_pool2d(
        x, out, kernel=kernel, stride=stride, padding=padding, dilation=dilation
    )
