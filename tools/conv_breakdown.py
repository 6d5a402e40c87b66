"""Where the time of a group-sparse conv goes, piece by piece (the figures behind issue 3's
analysis in the README): the VGG-16 conv 256->256 3x3 on 56x56 at 75% group-wise sparsity.

    python tools/conv_breakdown.py               # G = 64 (and 128 for the GEMM), 2 threads
    python tools/conv_breakdown.py --runs 30 --threads 1

Prints the median ms (and GFLOP/s where it is a product) of, timed in turns:

    dense conv          F.conv2d, oneDNN's direct conv (the baseline)
    ours                groupsparse.runtime.cpu.grouped_conv2d, the whole kernel (the
                        native fused gather + GEMM where it builds)
    ours, torch ops     the same with use_native=False: gather to memory, then torch.bmm
    bmm G=64 / G=128    the kept GEMM alone: torch.bmm of (groups, G, k) @ (groups, k, pixels)
    mm 256 rows         the same FLOPs as one 256-row GEMM (what MKL does with more rows)
    1x1 grouped CL      the same GEMM as oneDNN's grouped 1x1 conv on channels-last data
    gather NCHW         the kernel's gather: index_select of windows of the padded input
    gather CL per tap   the gather written pixel-major (what the 1x1 conv would need),
                        one index_select per group and kernel tap
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from groupsparse.runtime import cpu
from groupsparse.timing import time_side_by_side

CHANNELS, SIZE, SPARSITY = 256, 56, 0.75
GEOMETRY = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    columns_total = CHANNELS * 9
    kept = round(columns_total * (1 - SPARSITY))
    pixels = SIZE * SIZE
    x = torch.randn(1, CHANNELS, SIZE, SIZE, generator=generator)
    dense_weight = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=generator)
    functions, flops = {"dense conv": lambda: F.conv2d(x, dense_weight, padding=1)}, {}
    flops["dense conv"] = 2 * CHANNELS * columns_total * pixels
    sparse_flops = 2 * CHANNELS * kept * pixels

    groups = CHANNELS // 64
    columns = torch.stack(
        [
            torch.randperm(columns_total, generator=generator)[:kept].sort().values
            for _ in range(groups)
        ]
    )
    packed = torch.randn(groups, 64, kept, generator=generator)
    functions["ours"] = lambda: cpu.grouped_conv2d(x, packed, columns, None, GEOMETRY)
    flops["ours"] = sparse_flops
    functions["ours, torch ops"] = lambda: cpu.grouped_conv2d(
        x, packed, columns, None, GEOMETRY, use_native=False
    )
    flops["ours, torch ops"] = sparse_flops
    for group_size in (64, 128):
        count = CHANNELS // group_size
        a = torch.randn(count, group_size, kept, generator=generator)
        b = torch.randn(count, kept, pixels, generator=generator)
        out = torch.empty(count, group_size, pixels)
        functions[f"bmm G={group_size}"] = lambda a=a, b=b, out=out: torch.bmm(a, b, out=out)
        flops[f"bmm G={group_size}"] = sparse_flops
    w256, b256 = torch.randn(CHANNELS, kept), torch.randn(kept, pixels)
    functions["mm 256 rows"] = lambda: torch.mm(w256, b256)
    flops["mm 256 rows"] = sparse_flops
    gathered_cl = torch.randn(1, groups * kept, SIZE, SIZE).contiguous(
        memory_format=torch.channels_last
    )
    w1x1 = packed.reshape(CHANNELS, kept, 1, 1)
    functions["1x1 grouped CL"] = lambda: F.conv2d(gathered_cl, w1x1, groups=groups)
    flops["1x1 grouped CL"] = sparse_flops
    functions["gather NCHW"] = lambda: cpu.gather_conv_columns(x, columns, GEOMETRY)

    # pixel-major: for each group and tap, the kept channels of the shifted padded NHWC input
    padded_w = SIZE + 2
    nhwc = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, CHANNELS).contiguous()
    rows = SIZE * padded_w  # the wide grid: each output row padded_w long
    nhwc = torch.cat([nhwc, nhwc.new_zeros(2 * padded_w + 2, CHANNELS)])
    per_tap = []
    for group in range(groups):
        channel, tap = columns[group] // 9, columns[group] % 9
        for t in range(9):
            offset = (t // 3) * padded_w + t % 3
            per_tap.append((offset, channel[tap == t]))

    def gather_cl() -> None:
        for offset, channels in per_tap:
            nhwc[offset : offset + rows].index_select(1, channels)

    functions["gather CL per tap"] = gather_cl
    with torch.no_grad():
        times = time_side_by_side(functions, args.runs)
    print(
        f"conv {CHANNELS}->{CHANNELS} 3x3 {SIZE}x{SIZE}, {SPARSITY:.0%} group-wise, kept {kept} "
        f"columns per group; {args.threads} threads, median of {args.runs} runs in turns"
    )
    for name, ms in times.items():
        rate = f"{flops[name] / ms / 1e6:7.1f} GFLOP/s" if name in flops else ""
        print(f"  {name:20s} {ms:8.2f} ms  {rate}")


if __name__ == "__main__":
    main()
