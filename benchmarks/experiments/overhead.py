"""The per-model overhead of a compiled model: its end-to-end time minus the time its operators
take (issue 19, point 4: under 5% for ResNet-50 at 75% in bfloat16).

    python -m benchmarks.experiments.overhead resnet50 0.75 --dtype bfloat16 [--runs 20]

The end-to-end time is the median of ``--runs`` calls without the profiler. The operators'
time is torch.profiler's: per call, the summed wall time of every top-level operator the
graph dispatches (groupsparse's ops and aten's; time inside them, nested ops included, counts
as the operator's). What is left is the graph's own Python between the calls, argument
handling and dispatch. Prints both, the share, and the ten costliest operators.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import groupsparse as gs
from benchmarks.models import build, excluded_layers, prune
from benchmarks.provenance import describe_machine


def _operators_ms(fast, example, calls: int) -> tuple[float, dict[str, float]]:
    """(operators' time per call, ms; time per call by operator name)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fast(*example)
    by_name: dict[str, float] = {}
    total_us = 0.0
    for event in prof.events():
        if event.cpu_parent is not None or event.name.startswith("ProfilerStep"):
            continue
        duration = event.time_range.elapsed_us()
        total_us += duration
        by_name[event.name] = by_name.get(event.name, 0.0) + duration / calls / 1e3
    return total_us / calls / 1e3, by_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model spec (benchmarks.models): resnet50, vgg16, ...")
    parser.add_argument("sparsity", type=float)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense, example = build(args.model)
    pruned = prune(dense, "group", args.sparsity, args.group_size, excluded_layers(dense))
    dtype = getattr(torch, args.dtype)
    low = copy.deepcopy(pruned).to(dtype)
    example = tuple(x.to(dtype) if x.is_floating_point() else x for x in example)
    fast = gs.compile_sparse(low, example)
    with torch.no_grad():
        for _ in range(3):
            fast(*example)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            fast(*example)
            times.append((time.perf_counter() - start) * 1e3)
        wall = statistics.median(times)
        operators, by_name = _operators_ms(fast, example, max(5, args.runs // 2))
    described = describe_machine(args.threads)
    print(f"{args.model} at {args.sparsity:.0%} in {args.dtype}, G={args.group_size}, "
          f"{args.threads} threads, {described['cpu']} ({described['isa']}), torch "
          f"{torch.__version__}; {len(fast.report.rewritten)} of {len(fast.report.rows)} "
          "layers rewritten")  # fmt: skip
    print(f"  end to end       {wall:8.2f} ms (median of {args.runs})")
    print(f"  operators        {operators:8.2f} ms (torch.profiler, top-level ops)")
    print(f"  overhead         {wall - operators:8.2f} ms = {(wall - operators) / wall:.1%}")
    for name, ms in sorted(by_name.items(), key=lambda item: -item[1])[:10]:
        print(f"    {name:40s} {ms:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
