"""The torch-ops CPU kernels: a group-sparse conv2d or linear built on PyTorch's own ops
(index_select gathers, torch.bmm on MKL), for every dtype. They run where the C++ kernels
(``extension.py``) cannot (no compiler, another CPU, a dtype brgemm does not run here) and
are timed against them by the compiler, which keeps the faster. Semantics as the ops'
(``runtime/ops.py``): ``weight`` ``(groups, G, k)``, ``columns`` ``(groups, k)``; output row
``g*G + r`` is row r of group g.

How the conv kernel runs, and why:

- The gather is ``index_select`` along dim 0 of an overlapping ``as_strided`` view of the flat
  padded input whose entry o is the window starting at offset o: one block copy per kept
  column. Advanced indexing (``view[offsets]``) copies element by element and was 3-4x slower;
  ``index_select`` along any other dim first makes the overlapping view contiguous (gigabytes).
- Tiles: bands of output rows (or several whole images) whose gathered columns take about
  ``tile_bytes``, so the GEMM reads them from cache right after the gather; a band is at
  least ``min_tile_pixels`` wide, since MKL runs narrow GEMMs well below speed.
- The GEMM is ``bmm(weight, gathered, out=...)`` into a strided slice of the output: no
  scatter, no transpose. With one image per tile it writes the NCHW output in place.
- Stride-1 convs with short rows use a "wide grid" (see ``_ConvGrid``): each window is one
  contiguous run, at the price of ``(kw - 1) * dw`` junk columns per row, dropped by the
  epilogue pass, which also adds the bias and applies the ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import tuning
from ..geometry import ConvGeometry, conv_output_size
from ..weights import SparseWeights

__all__ = ["gather_conv_columns", "grouped_conv2d", "grouped_linear", "k_major", "shortcut_"]


def _padded_flat(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The zero-padded input as one flat NCHW buffer (also converts channels_last)."""
    _, _, top, bottom, left, right = geometry[2:8]
    batch, channels, height, width = x.shape
    contiguous = x.is_contiguous()
    if not (top or bottom or left or right) and contiguous:
        return x.reshape(-1)
    padded_h, padded_w = height + top + bottom, width + left + right
    if contiguous and batch * channels * padded_h * padded_w < tuning.current().pad_in_place_numel:
        # one op: fill, then copy. F.pad keeps the input's suggested memory format, which for
        # strides that fit both formats (a 1x1 image) can be channels_last: hence .contiguous()
        return F.pad(x, (left, right, top, bottom)).contiguous().view(-1)
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
            wide = self.padded_w == self.out_w or self.out_w < tuning.current().narrow_min_width
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
    nearest count, and at least ``min_tile_pixels`` wide: a thinner GEMM runs well below speed."""
    image_bytes = gathered_rows * grid.pixels * item
    bands = max(1, round(image_bytes / max(tile_bytes, 1)))
    bands = min(bands, grid.out_h, max(1, grid.pixels // tuning.current().min_tile_pixels))
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


# aten's fused add + ReLU takes float32 and float64 only
_ADD_RELU_DTYPES = (torch.float32, torch.float64)


def shortcut_(out: torch.Tensor, residual: torch.Tensor, relu: bool) -> torch.Tensor:
    """out = relu?(out + residual), in place: one pass where aten fuses it."""
    if relu and out.dtype in _ADD_RELU_DTYPES:
        return torch.ops.aten._add_relu_(out, residual)
    out.add_(residual)
    return out.relu_() if relu else out


def _bmm(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """a @ b per batch, plus a broadcast bias when given (in the GEMM: one rounding)."""
    if bias is None:
        return torch.bmm(a, b, out=out)
    return torch.baddbmm(bias, a, b, out=out)


def _store(
    source: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None, relu: bool
) -> None:
    """target = relu?(source + bias?): one pass (two for 16-bit with both), into a strided
    view of the output."""
    if bias is not None:
        if relu and source.dtype in _ADD_RELU_DTYPES:
            torch.ops.aten._add_relu.out(source, bias, out=target)
        else:
            torch.add(source, bias, out=target)
            if relu:
                target.relu_()
    elif relu:
        torch.clamp(source, min=0, out=target)
    else:
        target.copy_(source)


def grouped_conv2d(
    x: torch.Tensor,
    layer: SparseWeights,
    geometry: ConvGeometry,
    relu: bool = False,
    *,
    tile_bytes: int | None = None,
    wide: bool | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-sparse conv2d: ``(B, C, H, W)`` (NCHW or channels_last) -> contiguous NCHW
    ``(B, groups*G, OH, OW)``; ``residual``, shaped as the output, is added before the ReLU,
    after the GEMM.

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
    >>> layer = SparseWeights(weight, columns)
    >>> grouped_conv2d(x, layer, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)).shape
    torch.Size([1, 8, 10, 10])
    """
    if residual is not None:
        out = grouped_conv2d(x, layer, geometry, False, tile_bytes=tile_bytes)
        return shortcut_(out, residual, relu)
    weight, columns, bias = layer
    if tile_bytes is None:
        tile_bytes = tuning.current().tile_bytes
    groups, group_rows, kept = weight.shape
    grid = _ConvGrid(x.shape, geometry, wide)
    batch, pixels, out_h, out_w = grid.batch, grid.pixels, grid.out_h, grid.out_w
    channels = groups * group_rows
    flat = _padded_flat(x, geometry)
    offsets = _column_offsets(columns.reshape(-1), geometry, grid.padded_h, grid.padded_w)
    item = x.element_size()
    images, rows = _band_size(grid, groups * kept, tile_bytes, item)
    # a band can be no thinner than min_tile_pixels: when one is still far above tile_bytes
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
    # 16-bit types add the bias inside the GEMM, before its one rounding
    bias3 = (
        None if bias is None or x.dtype in _ADD_RELU_DTYPES else bias.view(groups, group_rows, 1)
    )
    if bias3 is not None:
        bias5 = None
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
                part_bias3 = None if bias3 is None else bias3[first : first + size]
                if in_place:
                    _bmm(part_weight, gathered, part_bias3, out=out[image, first : first + size])
                    continue
                tile = _bmm(part_weight, gathered, part_bias3)  # (size, G, count * band pixels)
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
    if bias5 is None:
        return _epilogue(result, relu)
    return shortcut_(result, bias.view(-1, 1, 1), relu)


def grouped_linear(
    x: torch.Tensor,
    layer: SparseWeights,
    relu: bool = False,
    *,
    gather: str = "auto",
    tile_bytes: int | None = None,
) -> torch.Tensor:
    """Group-sparse linear: ``(..., K)`` -> contiguous ``(..., groups*G)``.

    Tiled over tokens so that a tile's gathered columns take about ``tile_bytes`` (but at least
    ``min_tile_pixels`` tokens per tile, for the GEMM's sake). One batched GEMM per tile computes
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
    >>> grouped_linear(x, SparseWeights(torch.randn(3, 8, 4), columns)).shape  # 3 groups of 8 rows
    torch.Size([2, 5, 24])
    """
    weight, columns, bias = layer
    if gather not in ("auto", "rows", "columns"):
        raise ValueError(f"gather must be 'auto', 'rows' or 'columns'; got {gather!r}")
    if tile_bytes is None:
        tile_bytes = tuning.current().tile_bytes
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
    step = max(tuning.current().min_tile_pixels, tile_bytes // max(groups * kept * item, 1))
    # too many kept columns for even min_tile_pixels tokens: the tile also splits the groups
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
            part_bias = bias3 if bias3 is None or whole else bias3[group : group + width]
            # 16-bit types add the bias inside the GEMM, before its one rounding
            inside = part_bias is not None and x.dtype not in _ADD_RELU_DTYPES
            tile = _bmm(
                gathered,
                weight_t if whole else weight_t[group : group + width],
                part_bias[:, None, :] if inside else None,
            )
            target = (
                out if whole and size == count else out[first : first + size, group : group + width]
            )
            _store(tile.transpose(0, 1), target, None if inside else part_bias, relu)
    return out.view(*x.shape[:-1], groups * group_rows)


def k_major(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(groups, G, k)``, stored k-major: each group's ``(k, G)`` block contiguous,
    the layout the torch-ops kernel's bmm reads: its linear plans hold their weights so."""
    return weight.transpose(1, 2).contiguous().transpose(1, 2)
