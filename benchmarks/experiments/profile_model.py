"""Where the time goes inside one compiled model: a model pruned group-wise as the models
suite prunes it, compiled with compile_sparse (and, with --torch-compile, through
torch.compile(backend="groupsparse")), timed side by side against dense eager, then
torch.profiler's per-op table over a few calls of the compiled model.

    python -m benchmarks.experiments.profile_model resnet50 0.9 [--torch-compile] [--runs 10]

Finding (README, "Whole models"; as tools/profile_model.py, 2-core AMD EPYC): ResNet-50 at
75% spent its time in small convs (25-60 MFLOP each), 30 of 52 on the torch-ops kernel with
about 0.13 ms of Python a call, and the dense 7x7 first conv; under torch.compile, Dynamo's
guard check took 0.8 ms a call and the compiled graph's own Python 2.6 ms.
"""

from __future__ import annotations

import argparse
import sys

import torch

import groupsparse as gs
from benchmarks.models import build, excluded_layers, prune
from benchmarks.timing import interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", help="a model spec (benchmarks.models): vgg16, resnet50, bert-base, ..."
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
    dense, example = build(args.model)
    pruned = prune(dense, "group", args.sparsity, args.group_size, excluded_layers(dense))
    fast = gs.compile_sparse(pruned, example)
    runs = {"dense eager": lambda: dense(*example), "compile_sparse": lambda: fast(*example)}
    profiled = fast
    if args.torch_compile:
        compiled = torch.compile(pruned, backend="groupsparse")
        runs["torch.compile(groupsparse)"] = lambda: compiled(*example)
        profiled = compiled
    times = {name: stats.median_ms for name, stats in interleaved(runs, args.runs).items()}
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
