"""The per-model overhead of a compiled model: its end-to-end time minus the time its operators
take (issue 19, point 4: under 5% for ResNet-50 at 75% in bfloat16).

    python -m benchmarks.experiments.overhead resnet50 0.75 --dtype bfloat16 [--runs 20]

End to end: the median of ``--runs`` calls of the compiled module. Operators: the same graph
run node by node (an fx Interpreter), each operator call (groupsparse's ops, aten's, modules)
timed on its own with perf_counter; their sum, median over the runs. What is left is what the
compiled module adds around its operators: the generated forward's Python, argument
handling, dispatch. (torch.profiler was tried first: it adds its own cost to every operator,
8-35% of this model's time, more than the quantity measured.) Prints both, the share, and the
ten costliest operators.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from torch import fx

import groupsparse as gs
from benchmarks.models import build, excluded_layers, prune
from benchmarks.provenance import describe_machine


class _TimedNodes(fx.Interpreter):
    """Runs the graph, timing each operator node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.times: dict[str, float] = {}

    def run_node(self, node: fx.Node) -> Any:
        if node.op not in ("call_function", "call_method", "call_module"):
            return super().run_node(node)
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        start = time.perf_counter()
        result = getattr(self, node.op)(node.target, args, kwargs)
        elapsed = time.perf_counter() - start
        name = str(node.target)
        self.times[name] = self.times.get(name, 0.0) + elapsed
        return result


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
    walls, sums, by_name = [], [], {}
    with torch.no_grad():
        for _ in range(3):
            fast(*example)
        for _ in range(args.runs):  # in turns: the module as users call it, then node by node
            start = time.perf_counter()
            fast(*example)
            walls.append((time.perf_counter() - start) * 1e3)
            timed = _TimedNodes(fast.graph_module)
            timed.run(*example)
            sums.append(sum(timed.times.values()) * 1e3)
            for name, seconds in timed.times.items():
                by_name[name] = by_name.get(name, 0.0) + seconds * 1e3 / args.runs
    wall, operators = statistics.median(walls), statistics.median(sums)
    described = describe_machine(args.threads)
    print(f"{args.model} at {args.sparsity:.0%} in {args.dtype}, G={args.group_size}, "
          f"{args.threads} threads, {described['cpu']} ({described['isa']}), torch "
          f"{torch.__version__}; {len(fast.report.rewritten)} of {len(fast.report.rows)} "
          "layers rewritten")  # fmt: skip
    print(f"  end to end       {wall:8.2f} ms (median of {args.runs})")
    print(f"  operators        {operators:8.2f} ms (each node timed alone, summed; median)")
    print(f"  overhead         {wall - operators:8.2f} ms = {(wall - operators) / wall:.1%}")
    for name, ms in sorted(by_name.items(), key=lambda item: -item[1])[:10]:
        print(f"    {name:40s} {ms:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
