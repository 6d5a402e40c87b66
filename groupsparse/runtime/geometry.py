"""A conv2d layer's geometry, as every kernel reads it, and the output sizes it gives."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ConvGeometry", "conv_output_size", "pool_output_size"]


class ConvGeometry(NamedTuple):
    """Kernel, stride, padding (each side) and dilation of a conv2d. A NamedTuple so that it
    passes through the ops' schemas as ``int[]`` (``list(geometry)``) and back
    (``ConvGeometry(*values)``)."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    top: int
    bottom: int
    left: int
    right: int
    dilation_h: int
    dilation_w: int

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(OH, OW) of the conv on an (H, W) image."""
        return conv_output_size(height, width, self)

    @property
    def padded(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)


def conv_output_size(height: int, width: int, geometry) -> tuple[int, int]:
    """(OH, OW) of a conv with ``geometry`` (a ConvGeometry or its 10 integers) on (H, W)."""
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    return out_h, out_w


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
