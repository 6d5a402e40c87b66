"""A layer's mask as a heatmap PNG on the (M, K) view, with its group boundaries drawn.

Uses matplotlib's Agg canvas directly, so the caller's pyplot backend is left alone."""

from __future__ import annotations

import io

import torch

__all__ = ["BOUNDARY_COLOR", "KEPT_COLOR", "PRUNED_COLOR", "mask_png"]

KEPT_COLOR = "#1b5e20"
PRUNED_COLOR = "#f1f3f5"
BOUNDARY_COLOR = "#e03131"


_MAX_PIXELS = (1024, 2048)  # (rows, columns) drawn; larger masks are averaged into cells


def _kept_density(mask: torch.Tensor) -> torch.Tensor:
    """The mask as float32, averaged over blocks of rows and columns when it is larger than
    _MAX_PIXELS (VGG-16's first linear is 4096 x 25088), so drawing stays small and fast."""
    rows, columns = mask.shape
    row_step, column_step = (-(-size // limit) for size, limit in zip(mask.shape, _MAX_PIXELS))
    if row_step == column_step == 1:
        return mask.to(torch.float32)
    padded = torch.zeros(
        -(-rows // row_step) * row_step, -(-columns // column_step) * column_step, dtype=torch.uint8
    )
    padded[:rows, :columns] = mask
    blocks = padded.reshape(
        padded.shape[0] // row_step, row_step, padded.shape[1] // column_step, column_step
    )
    # the last block of rows or columns may be partial: divide by the weights each block covers
    rows_in = torch.arange(0, padded.shape[0], row_step).clamp(max=rows)
    columns_in = torch.arange(0, padded.shape[1], column_step).clamp(max=columns)
    row_counts = (rows_in + row_step).clamp(max=rows) - rows_in
    column_counts = (columns_in + column_step).clamp(max=columns) - columns_in
    return blocks.sum(dim=(1, 3)).to(torch.float32) / torch.outer(row_counts, column_counts).to(
        torch.float32
    )


def mask_png(mask: torch.Tensor, group_size: int, title: str) -> bytes:
    """PNG bytes of the (M, K) boolean ``mask``: kept weights dark, pruned light (shades of
    the kept share where a pixel covers many weights), a red line between consecutive groups
    of ``group_size`` rows (none when one group spans all rows).

    Example::

        >>> png = mask_png(torch.rand(64, 288) > 0.5, 16, "features.3")
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    try:
        from matplotlib.colors import LinearSegmentedColormap
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "drawing masks needs matplotlib: pip install 'groupsparse[viz]'"
        ) from error

    rows, columns = mask.shape
    width = 5.5
    height = min(3.0, max(1.6, width * rows / columns + 1.0))
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(
        _kept_density(mask).numpy(), cmap=LinearSegmentedColormap.from_list("kept", [PRUNED_COLOR, KEPT_COLOR]),
        vmin=0, vmax=1, aspect="auto", interpolation="antialiased",
        extent=(-0.5, columns - 0.5, rows - 0.5, -0.5),  # axes in the mask's rows and columns
    )  # fmt: skip
    boundaries = range(group_size, rows, group_size)
    line_width = 1.2 if len(boundaries) <= 32 else 0.4
    for boundary in boundaries:
        axes.axhline(boundary - 0.5, color=BOUNDARY_COLOR, linewidth=line_width)
    axes.set_title(title, fontsize=9)
    axes.set_xlabel(f"K = {columns} input columns", fontsize=8)
    axes.set_ylabel(f"M = {rows} output rows", fontsize=8)
    axes.tick_params(labelsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
