"""Where the time goes inside one compiled model: a model pruned group-wise as tools/bench.py
prunes it, compiled with compile_sparse (and, with --torch-compile, through
torch.compile(backend="groupsparse")), timed side by side against dense eager, then
torch.profiler's per-op table over a few calls of the compiled model.

    python tools/profile_model.py resnet50 0.9 [--torch-compile] [--runs 10] [--rows 20]

The README's whole-model notes (the share of VGG-16's pools, ResNet-50's first conv, the
torch.compile path's guard cost) come from this.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/bench.py: model specs, exclusions

import bench
import groupsparse as gs
from groupsparse.models import build_model
from groupsparse.timing import time_side_by_side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", help="a tools/bench.py model spec: vgg16, resnet50, bert-base, ..."
    )
    parser.add_argument("sparsity", type=float)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20, help="profiler rows to print")
    parser.add_argument(
        "--torch-compile", action="store_true", help="profile torch.compile(backend='groupsparse')"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, model_args = bench.parse_model(args.model)
    dense, example = build_model(name, batch=1, **model_args)
    pruned = copy.deepcopy(dense)
    gs.prune(
        pruned, "group", args.sparsity, exclude=bench.excluded_layers(dense),
        group_size=args.group_size,
    )  # fmt: skip
    pruned.eval()
    fast = gs.compile_sparse(pruned, example)
    runs = {"dense eager": lambda: dense(*example), "compile_sparse": lambda: fast(*example)}
    profiled = fast
    if args.torch_compile:
        compiled = torch.compile(pruned, backend="groupsparse")
        runs["torch.compile(groupsparse)"] = lambda: compiled(*example)
        profiled = compiled
    times = time_side_by_side(runs, args.runs)
    print(f"{args.model} at {args.sparsity:.0%}, G={args.group_size}, {args.threads} threads:")
    for label, ms in times.items():
        print(f"  {label:28s} {ms:8.2f} ms  ({times['dense eager'] / ms:.2f}x of dense)")
    calls = 5
    with (
        torch.no_grad(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        for _ in range(calls):
            profiled(*example)
    print(f"torch.profiler over {calls} calls of the profiled model (divide totals by {calls}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
