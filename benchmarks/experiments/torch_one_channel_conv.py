"""torch's own CPU conv2d against float64 on one-channel inputs with NHWC strides: the
upstream wrong result behind fuzz spec 4245 (docs/decisions/one-channel-conv.md).

    python -m benchmarks.experiments.torch_one_channel_conv

Prints, for each memory format of a (N, 1, H, W) input, how many geometries of a small
sweep torch computes wrongly (max relative error over 1e-4 against float64), with oneDNN on
and off, then one failing case in full. Needs nothing but torch.
"""

from __future__ import annotations

import itertools
import platform

import torch
import torch.nn.functional as F


def _error(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> float:
    want = F.conv2d(x.double(), weight.double(), stride=stride)
    got = F.conv2d(x, weight, stride=stride)
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _sweep(channels_last: bool) -> tuple[int, int, tuple | None]:
    wrong, total, example = 0, 0, None
    for batch, out_channels, height, width, kw, sh, sw in itertools.product(
        (1, 2, 5), (1, 4), (2, 10), (2, 3, 4, 5), (1, 2, 3), (1, 2), (1, 2, 3)
    ):
        if width < kw:
            continue
        x = torch.randn(batch, 1, height, width)
        if channels_last:  # strides (H*W, 1, W, 1): the same bytes, NHWC strides
            x = torch.randn(batch, height, width, 1).permute(0, 3, 1, 2)
        weight = torch.randn(out_channels, 1, 1, kw)
        error = _error(x, weight, (sh, sw))
        total += 1
        if error > 1e-4:
            wrong += 1
            example = example or (tuple(x.shape), x.stride(), tuple(weight.shape), (sh, sw), error)
    return wrong, total, example


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn):
            for channels_last in (False, True):
                wrong, total, example = _sweep(channels_last)
                strides = "NHWC strides" if channels_last else "NCHW strides"
                print(f"oneDNN {'on ' if onednn else 'off'} {strides}: {wrong} of {total} wrong")
                if example and onednn:
                    shape, stride, weight, conv_stride, error = example
                    print(f"  e.g. input {shape} strides {stride}, weight {weight}, "
                          f"stride {conv_stride}: relative error {error:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
