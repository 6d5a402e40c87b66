"""The ``groupsparse`` command. ``groupsparse demo`` is the main job: prune a model built from
code, compile it, check it computes the same function, and time it against dense."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["main", "time_side_by_side"]


def time_side_by_side(functions: dict[str, Callable[[], object]], runs: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each function, timed in turns (A, B, A, B, ...) so that drift in
    the machine's speed falls on all of them alike."""
    with torch.no_grad():
        for _ in range(warmup):
            for function in functions.values():
                function()
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(runs):
            for name, function in functions.items():
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _demo(args: argparse.Namespace) -> int:
    import groupsparse as gs
    from groupsparse.models import build_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, example = build_model(args.model, batch=args.batch)
    print(f"model: {args.model}, input {tuple(example[0].shape)}, {args.threads} threads")
    masks = gs.prune(
        model, pattern="group", sparsity=args.sparsity, group_size=args.group_size, exclude="first_last"
    )
    print(f"pruned {len(masks)} layers group-wise (G={args.group_size}) to {args.sparsity:.0%} sparsity")
    fast = gs.compile_sparse(model, example)
    print(fast.report)
    fresh = tuple(torch.randn_like(x) if x.is_floating_point() else x for x in example)
    with torch.no_grad():
        expected, actual = model(*fresh), fast(*fresh)
    error = float((actual - expected).abs().max() / expected.abs().max())
    print(f"max relative error vs the masked eager model on fresh inputs: {error:.2e}")
    times = time_side_by_side({"dense eager": lambda: model(*example), "groupsparse": lambda: fast(*example)}, args.runs)
    print(
        f"dense eager {times['dense eager']:.2f} ms, groupsparse {times['groupsparse']:.2f} ms: "
        f"{times['dense eager'] / times['groupsparse']:.2f}x (median of {args.runs}, side by side)"
    )
    return 0 if error < 1e-4 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupsparse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="prune, compile, check and time a model built from code")
    demo.add_argument("--model", default="demo-cnn", help="a built-in model name (default: demo-cnn)")
    demo.add_argument("--sparsity", type=float, default=0.75)
    demo.add_argument("--group-size", type=int, default=64)
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--threads", type=int, default=2)
    demo.add_argument("--runs", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
