"""Issue 3's "never slower" check: layers pruned group-wise to low sparsity (0% and 30%),
compiled with the default decide="time", timed side by side against the dense layer.

    python tools/never_slower.py [--runs 20] [--threads 2] [--repeats 1]

Prints, per layer and sparsity, the decision compile_sparse made and dense ms / compiled ms
(the goal: at least 0.97x, i.e. the compiled module is never slower). With ``--repeats N``
the timing runs N times: the median ratio, then the lowest and highest. The last column
times the dense layer against a copy of itself, the same way: this machine's noise, which is
what a kept-dense row's spread is too (both sides run the same operator).
"""

from __future__ import annotations

import argparse
import statistics
from copy import deepcopy

import torch
from torch import nn

import groupsparse as gs
from groupsparse.cli import time_side_by_side
from groupsparse.layers import gemm_view

LAYERS = {
    "vgg16 conv 256->256 3x3 56x56": (lambda: nn.Conv2d(256, 256, 3, padding=1), (1, 256, 56, 56)),
    "conv 512->512 3x3 14x14": (lambda: nn.Conv2d(512, 512, 3, padding=1), (1, 512, 14, 14)),
    "bert linear 768->3072 x128": (lambda: nn.Linear(768, 3072), (1, 128, 768)),
    "bert linear 3072->768 x128": (lambda: nn.Linear(3072, 768), (1, 128, 3072)),
    "bert linear 768->768 x128": (lambda: nn.Linear(768, 768), (1, 128, 768)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'layer':32s} sparsity  decision  dense/compiled (range)   dense/its copy (range)")
    for name, (build, shape) in LAYERS.items():
        for sparsity in (0.0, 0.3):
            layer = build().eval()
            pattern = gs.GroupWise(group_size=args.group_size)
            matrix = gemm_view(layer.weight.data)
            matrix.mul_(pattern.mask(matrix.abs(), sparsity))
            x = torch.randn(shape)
            fast = gs.compile_sparse(layer, x)
            decision = fast.report.rows[0].decision
            copy = deepcopy(layer)  # the same operator again: this machine's noise floor
            runs = {
                "dense": lambda layer=layer, x=x: layer(x),
                "compiled": lambda fast=fast, x=x: fast(x),
                "copy": lambda copy=copy, x=x: copy(x),
            }
            ratios: dict[str, list[float]] = {"compiled": [], "copy": []}
            for _ in range(args.repeats):
                times = time_side_by_side(runs, args.runs)
                for other, values in ratios.items():
                    values.append(times["dense"] / times[other])
            cells = [
                f"{statistics.median(values):.3f}x"
                + (f" ({min(values):.3f}-{max(values):.3f}x)" if args.repeats > 1 else "")
                for values in ratios.values()
            ]
            print(f"{name:32s} {sparsity:8.1f}  {decision:8s}  {cells[0]:24s} {cells[1]}")


if __name__ == "__main__":
    main()
