"""The layers suite: single conv and linear layers pruned group-wise, dense against every
compiler kernel, through the public path, timed side by side in one process.

    python -m benchmarks layers                   # the CPU layer set, G = 32/64/128, 0-90%
    python -m benchmarks layers --quick           # G = 64 at 75% and 90%
    python -m benchmarks layers --dtype bfloat16
    python -m benchmarks layers --device cuda     # the GPU layer set, float16, batch 32

Each layer is an ``nn.Sequential`` of one ``nn.Conv2d`` (k x k, "same" padding) or
``nn.Linear``, pruned by ``gs.prune(pattern="group", group_size=G)`` (magnitude, balanced:
every group keeps the same columns count), then cast to ``--dtype``. Variants:

    dense             the layer itself, eager
    dense-copy        a copy of it, timed the same way: this machine's noise floor
    dense-nhwc        (convs on a GPU) the same conv with input and weight channels_last
    compiled          gs.compile_sparse(layer, (x,)): what a user gets (decide="time": the
                      layer stays dense where no kernel wins; issue 3's "never slower")
    kernel:<name>     gs.compile_sparse(layer, (x,), decide="always", kernel=<name>) for each
                      of the compiler's kernels (benchmarks.runtimes.compiler_kernels)

The times include the compiled module's call (the custom op's dispatch): the kernels are not
called directly. At 0% nothing is pruned and the kernels are not run. Each output is checked
against the layer in float32 (``benchmarks.checks``). "bound" is the FLOP bound of
dense / kernel (all columns / kept columns). The goals (G = 64, against dense in the same
precision, kernel:grouped): float32 3x at 75% and 6x at 90% (issue 3), bfloat16 2.5x and 5x
(issue 19, on AMX); every layer 1.2x faster than the loop kernel (issue 3); compiled never
slower than dense (0.97x).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import DTYPES, relative_error, tolerance, verdict
from ..results import ResultFile, markdown_table
from ..runtimes import compiler_kernels
from ..timing import OtherLoad, graph_replays, interleaved

__all__ = ["LAYER_SETS", "Layer", "main", "measure_layer", "measure_module", "parse_shape"]


@dataclass(frozen=True)
class Layer:
    """A conv (in, out channels, ``kernel`` x ``kernel``, "same" padding, on size x size
    images) or a linear (in, out features, over ``size`` tokens)."""

    name: str
    kind: str
    in_features: int
    out_features: int
    size: int
    kernel: int = 3

    def module(self) -> nn.Module:
        if self.kind == "conv":
            conv = nn.Conv2d(self.in_features, self.out_features, self.kernel,
                             padding=self.kernel // 2)  # fmt: skip
            return nn.Sequential(conv)
        return nn.Sequential(nn.Linear(self.in_features, self.out_features))

    def input(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "conv":
            shape = (batch, self.in_features, self.size, self.size)
        else:
            shape = (batch, self.size, self.in_features)
        return torch.randn(shape, generator=generator)


LAYER_SETS: dict[str, tuple[Layer, ...]] = {
    # issue 3's layers, and VGG-16's first classifier linear at batch 1 (one token)
    "cpu": (
        Layer("vgg16 conv 256->256 3x3 56x56", "conv", 256, 256, 56),
        Layer("conv 512->512 3x3 14x14", "conv", 512, 512, 14),
        Layer("bert linear 768->3072 x128", "linear", 768, 3072, 128),
        Layer("bert linear 3072->768 x128", "linear", 3072, 768, 128),
        Layer("bert linear 768->768 x128", "linear", 768, 768, 128),
        Layer("vgg16 linear 25088->4096 x1", "linear", 25088, 4096, 1),
    ),
    # the GPU's shapes (batch 32: BERT's linears see 32 x 128 tokens)
    "gpu": (
        Layer("bert 768->3072", "linear", 768, 3072, 128),
        Layer("bert 3072->768", "linear", 3072, 768, 128),
        Layer("bert 768->768", "linear", 768, 768, 128),
        Layer("resnet 1x1 256->64 56", "conv", 256, 64, 56, kernel=1),
        Layer("resnet 1x1 64->256 56", "conv", 64, 256, 56, kernel=1),
        Layer("resnet 1x1 1024->256 14", "conv", 1024, 256, 14, kernel=1),
        Layer("resnet 1x1 512->2048 7", "conv", 512, 2048, 7, kernel=1),
        Layer("vgg 3x3 256 56", "conv", 256, 256, 56),
        Layer("vgg 3x3 512 28", "conv", 512, 512, 28),
        Layer("resnet 3x3 256 14", "conv", 256, 256, 14),
    ),
}
DEFAULTS = {  # device -> (layer set, dtype, batch, group sizes)
    "cpu": ("cpu", "float32", 1, (32, 64, 128)),
    "cuda": ("gpu", "float16", 32, (32, 64)),
}
SPARSITIES = (0.0, 0.3, 0.5, 0.75, 0.9)
QUICK_SPARSITIES = (0.75, 0.9)
GOALS = {("float32", 0.75): 3.0, ("float32", 0.9): 6.0,
         ("bfloat16", 0.75): 2.5, ("bfloat16", 0.9): 5.0}  # fmt: skip
LOOP_GOAL = 1.2
NEVER_SLOWER = 0.97
FLOAT32_TOLERANCE = 1e-4


def parse_shape(spec: str) -> Layer:
    """``conv:IN:OUT:SIZE[:K]`` or ``linear:IN:OUT:TOKENS`` -> a Layer.

    >>> parse_shape("conv:16:32:8:1")
    Layer(name='conv 16->32 1x1 8x8', kind='conv', in_features=16, out_features=32, size=8, kernel=1)
    """
    kind, *numbers = spec.split(":")
    values = [int(n) for n in numbers]
    if kind == "conv" and len(values) in (3, 4):
        kernel = values[3] if len(values) == 4 else 3
        name = f"conv {values[0]}->{values[1]} {kernel}x{kernel} {values[2]}x{values[2]}"
        return Layer(name, "conv", *values[:3], kernel=kernel)
    if kind == "linear" and len(values) == 3:
        return Layer(f"linear {values[0]}->{values[1]} x{values[2]}", "linear", *values)
    raise ValueError(f"shape {spec!r}: write conv:IN:OUT:SIZE[:K] or linear:IN:OUT:TOKENS")


@contextlib.contextmanager
def _exact_float32():
    """float32 as float32 (no TF32 in cuBLAS or cuDNN) for the references."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _variants(
    kind: str, module: nn.Module, x: torch.Tensor, device: str
) -> tuple[dict[str, Callable[[], Any]], dict[str, dict[str, Any]]]:
    """{variant: call} and {variant: what compile_sparse did} for one pruned layer."""
    import groupsparse as gs

    copy_ = copy.deepcopy(module)
    calls: dict[str, Callable[[], Any]] = {
        "dense": lambda: module(x),
        "dense-copy": lambda: copy_(x),
    }
    if device == "cuda" and kind == "conv":
        nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        calls["dense-nhwc"] = lambda: nhwc(x_nhwc)
    compiled: dict[str, dict[str, Any]] = {}
    options = {"compiled": {}} | {f"kernel:{k}": {"decide": "always", "kernel": k}
                                  for k in compiler_kernels(device)}  # fmt: skip
    for name, keywords in options.items():
        try:
            fast = gs.compile_sparse(module, (x,), **keywords)
        except Exception as error:  # noqa: BLE001 (recorded; the other variants run)
            compiled[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        row = fast.report.rows[0]
        compiled[name] = {
            "decision": row.decision, "kernel": row.kernel, "reason": row.reason,
            "kept_fraction": row.kept_fraction,
        }  # fmt: skip
        if name == "compiled" or row.decision == "sparse":  # a kernel that did not run: not timed
            calls[name] = lambda fast=fast: fast(x)
    return calls, compiled


def measure_module(
    kind: str, module32: nn.Module, x32: torch.Tensor, *, dtype: str, runs: int, device: str
) -> dict[str, Any]:
    """Every variant of one pruned one-layer module (``kind`` "conv" or "linear", float32, on
    ``device``) in ``dtype``, checked against it in float32 and timed side by side (and, on a
    GPU, replayed from CUDA graphs)."""
    with torch.no_grad(), _exact_float32():
        expected = module32(x32)
    low = module32 if dtype == "float32" else copy.deepcopy(module32).to(DTYPES[dtype])
    x = x32.to(DTYPES[dtype])
    calls, compiled = _variants(kind, low, x, device)
    with torch.no_grad():
        outputs = {name: call() for name, call in calls.items()}
    eager_error = None if dtype == "float32" else relative_error(outputs["dense"], expected)
    limit = tolerance(dtype, FLOAT32_TOLERANCE, eager_error)
    checks = {
        name: verdict(relative_error(out, expected), limit, "the float32 layer")
        for name, out in outputs.items()
    }
    with OtherLoad() as load:
        stats = interleaved(calls, runs)
    graphs, not_captured = graph_replays(calls, runs) if device == "cuda" else ({}, {})
    dense_ms = stats["dense"].median_ms
    kept = next((c["kept_fraction"] for c in compiled.values() if "kept_fraction" in c), None)
    record: dict[str, Any] = {
        "input_shape": list(x.shape), "kept_fraction": kept,
        "flop_bound": 1 / kept if kept else None,
        "variants": {
            name: {**stats[name].as_dict(), "check": checks[name], **compiled.get(name, {}),
                   **({"graph": graphs[name].as_dict()} if name in graphs else {})}
            for name in calls
        },
        "not_run": {name: info for name, info in compiled.items() if name not in calls},
        "not_captured": not_captured,
        "dense_over": {name: dense_ms / s.median_ms for name, s in stats.items()},
        "other_load": load.share,
    }  # fmt: skip
    if "dense" in graphs:
        graph_dense = graphs["dense"].median_ms
        record["graph_dense_over"] = {n: graph_dense / s.median_ms for n, s in graphs.items()}
    return record


def measure_layer(
    layer: Layer,
    group_size: int,
    sparsity: float,
    *,
    dtype: str,
    batch: int,
    runs: int,
    device: str = "cpu",
    channels_last: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """One record: ``layer`` pruned to ``sparsity`` in groups of ``group_size``, measured by
    ``measure_module``, with the goals it can be judged by."""
    import groupsparse as gs

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module = layer.module().eval()
    gs.prune(module, pattern="group", sparsity=sparsity, group_size=group_size)
    x32 = layer.input(batch, generator).to(device)
    if channels_last and layer.kind == "conv":
        x32 = x32.contiguous(memory_format=torch.channels_last)
    measured = measure_module(
        layer.kind, module.to(device), x32, dtype=dtype, runs=runs, device=device
    )
    record: dict[str, Any] = {
        "layer": layer.name, **{k: v for k, v in asdict(layer).items() if k != "name"},
        "group_size": group_size, "sparsity": sparsity, "dtype": dtype, "batch": batch,
        "device": device, "channels_last": channels_last, **measured,
    }  # fmt: skip
    record["goals"] = _goals(record)
    return record


def _goals(record: dict[str, Any]) -> dict[str, Any]:
    """The goals this record can be judged by, each with its figure and verdict."""
    goals: dict[str, Any] = {}
    ratio = record["dense_over"]
    compiled = ratio.get("compiled")
    if compiled is not None and record["device"] == "cpu":
        goals["never slower"] = {"goal": NEVER_SLOWER, "measured": compiled,
                                 "met": compiled >= NEVER_SLOWER}  # fmt: skip
    target = GOALS.get((record["dtype"], record["sparsity"]))
    grouped = ratio.get("kernel:grouped")
    if record["group_size"] == 64 and target and grouped and record["device"] == "cpu":
        goals["dense/grouped"] = {"goal": target, "measured": grouped, "met": grouped >= target}
        loop = ratio.get("kernel:loop")
        if loop:
            over_loop = grouped / loop
            goals["loop/grouped"] = {"goal": LOOP_GOAL, "measured": over_loop,
                                     "met": over_loop >= LOOP_GOAL}  # fmt: skip
    return goals


def _line(record: dict[str, Any]) -> str:
    ratios = " ".join(f"{name.removeprefix('kernel:')} {value:.2f}x"
                      for name, value in record["dense_over"].items() if name != "dense")  # fmt: skip
    goals = ", ".join(
        f"{name} {'met' if g['met'] else 'MISSED'}" for name, g in record["goals"].items()
    )
    bound = f"bound {record['flop_bound']:.1f}x" if record["flop_bound"] else "not pruned"
    load = record["other_load"]
    return (f"{record['layer']:32s} G={record['group_size']:<3d} {record['sparsity']:4.2f} "
            f"dense {record['variants']['dense']['median_ms']:8.3f} ms | dense/: {ratios} | {bound}"
            + (f" | busy {load:.0%}" if load is not None else "") + (f" | {goals}" if goals else ""))  # fmt: skip


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layer, group size and sparsity: dense ms and dense / each variant."""
    rows = []
    for record in records:
        row = {
            "layer": record["layer"], "G": record["group_size"],
            "sparsity": f"{record['sparsity']:.0%}", "dtype": record["dtype"],
            "dense ms": record["variants"]["dense"]["median_ms"],
        }  # fmt: skip
        for name, value in record["dense_over"].items():
            if name != "dense":
                row[f"dense/{name.removeprefix('kernel:')}"] = f"{value:.2f}x"
        row["compiled runs"] = record["variants"].get("compiled", {}).get("kernel")
        row["bound"] = record["flop_bound"] and f"{record['flop_bound']:.1f}x"
        row["goals"] = "; ".join(
            f"{name} {g['goal']}x {'met' if g['met'] else 'MISSED'}"
            for name, g in record["goals"].items()
        )
        failed = [name for name, v in record["variants"].items() if v["check"]["passed"] is False]
        failed += [f"{name} ({info['error']})" for name, info in record["not_run"].items()
                   if "error" in info]  # fmt: skip
        row["check"] = "FAILED: " + ", ".join(failed) if failed else "passed"
        rows.append(row)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks layers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="G = 64 at 75%% and 90%%, 12 runs; written under out/benchmarks/")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="default float32 (CPU), float16 (GPU)")  # fmt: skip
    parser.add_argument("--layer-set", choices=list(LAYER_SETS),
                        help="default: cpu on the CPU, gpu on a GPU")  # fmt: skip
    parser.add_argument("--layers", help="comma-separated parts of layer names to keep")
    parser.add_argument("--shape", action="append", default=[], metavar="SPEC", type=parse_shape,
                        help="instead of the layer set: conv:IN:OUT:SIZE[:K] or "
                        "linear:IN:OUT:TOKENS (repeatable)")  # fmt: skip
    parser.add_argument("--group-sizes", help="comma-separated (default 32,64,128; GPU 32,64)")
    parser.add_argument("--sparsities", help="comma-separated (default 0,0.3,0.5,0.75,0.9)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--batch", type=int, help="images / sequences (default 1; GPU 32)")
    parser.add_argument("--channels-last", action="store_true", help="conv inputs channels_last")
    parser.add_argument("--runs", type=int, help="timed calls per variant (default 30, quick 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results folder (default: by machine)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("layers: --device cuda needs a CUDA GPU; there is none here")
        return 2
    layer_set, dtype, batch, group_sizes = DEFAULTS[args.device]
    args.dtype = args.dtype or dtype
    args.batch = args.batch or batch
    layers = tuple(args.shape) or LAYER_SETS[args.layer_set or layer_set]
    if args.layers:
        layers = tuple(l for l in layers if any(k in l.name for k in args.layers.split(",")))
    group_sizes = (64,) if args.quick else group_sizes
    if args.group_sizes:
        group_sizes = tuple(int(v) for v in args.group_sizes.split(","))
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    if args.sparsities:
        sparsities = tuple(float(v) for v in args.sparsities.split(","))
    runs = args.runs or (12 if args.quick else 30)
    torch.set_num_threads(args.threads)
    settings = {
        "device": args.device, "dtype": args.dtype, "batch": args.batch, "threads": args.threads,
        "layers": [asdict(layer) for layer in layers], "group_sizes": list(group_sizes),
        "sparsities": list(sparsities), "runs": runs, "channels_last": args.channels_last,
        "seed": args.seed, "kernels": list(compiler_kernels(args.device)), "quick": args.quick,
        "timed": "through gs.compile_sparse of a one-layer model (the module call included)",
        "timing": "benchmarks.timing.interleaved" + (" and graph_replays" if args.device == "cuda" else ""),
    }  # fmt: skip
    result = ResultFile(
        "layers", argv, settings, threads=args.threads, device=args.device, out=args.out,
        quick=args.quick,
    )  # fmt: skip
    print(f"layers: {len(layers)} layers x G {list(group_sizes)} x {list(sparsities)}, "
          f"{args.dtype}, batch {args.batch}, {args.device}; writing {result.path}", flush=True)  # fmt: skip
    for layer in layers:
        for group_size in group_sizes:
            for sparsity in sparsities:
                record = measure_layer(
                    layer, group_size, sparsity, dtype=args.dtype, batch=args.batch, runs=runs,
                    device=args.device, channels_last=args.channels_last, seed=args.seed,
                )  # fmt: skip
                result.add(record)
                print(_line(record), flush=True)
    rows = summary(result.records)
    path = result.finish(rows, "\n".join(markdown_table(rows)) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    failed = [r for r in rows if r["check"] != "passed"]
    return 1 if failed else 0
