"""A layer's mask as a heatmap PNG on the (M, K) view, with its group boundaries drawn.

Uses matplotlib's Agg canvas directly, so the caller's pyplot backend is left alone."""

from __future__ import annotations

import io

import torch

__all__ = ["BOUNDARY_COLOR", "KEPT_COLOR", "PRUNED_COLOR", "mask_png"]

KEPT_COLOR = "#1b5e20"
PRUNED_COLOR = "#f1f3f5"
BOUNDARY_COLOR = "#e03131"


def mask_png(mask: torch.Tensor, group_size: int, title: str) -> bytes:
    """PNG bytes of the (M, K) boolean ``mask``: kept weights dark, pruned light, a red line
    between consecutive groups of ``group_size`` rows (none when one group spans all rows).

    Example::

        >>> png = mask_png(torch.rand(64, 288) > 0.5, 16, "features.3")
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    rows, columns = mask.shape
    width = 5.5
    height = min(3.0, max(1.6, width * rows / columns + 1.0))
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(
        mask.to(torch.float32).numpy(), cmap=ListedColormap([PRUNED_COLOR, KEPT_COLOR]), vmin=0, vmax=1,
        aspect="auto", interpolation="antialiased",
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
