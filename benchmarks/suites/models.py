"""The models suite: whole models on the CPU, dense in the runtimes users deploy against the
pruned model compiled by groupsparse, in one precision, timed side by side in one process.

    python -m benchmarks models                     # five models at 75% and 90%, float32
    python -m benchmarks models --dtype bfloat16    # every variant in bf16
    python -m benchmarks models --quick             # reduced models, 75%: checks the suite
    python -m benchmarks models --variants dense-eager dense-inductor csr bsr vector loop \\
        groupsparse groupsparse-compile --sparsities 0.5 0.75 0.9    # issue 4's comparison

Models (``benchmarks.models``; random weights, batch 1): the in-repo VGG-16 and ResNet-50 and
transformers' BertModel (base, 128 tokens), ViTModel (B/16) and ResNetModel (ResNet-50), from
configs. Each is pruned with magnitude, one shot, the first conv and the classifier dense
(``excluded_layers``), G = ``--group-size`` (64).

Variants (``--variants``; the default leaves out dense-inductor, csr, bsr, vector and loop):

    dense-eager              the unpruned model, PyTorch eager
    dense-inductor           torch.compile (Inductor, default mode)
    dense-inductor-freezing  torch.compile with torch._inductor.config.freezing = True
    dense-openvino           ov.convert_model of the same float32 model, INFERENCE_PRECISION_HINT
                             f32 or bf16, PERFORMANCE_HINT=LATENCY, the same thread count
    csr                      element-wise pruning, torch.sparse CSR (convs: F.unfold + CSR)
    bsr                      block-wise 16x16 pruning, torch.sparse BSR
    vector                   N:M pruning (2:4 at 50%, 1:4 at 75%, 1:10 at 90%), run dense:
                             torch has no N:M kernel for CPU tensors (probed at start)
    loop                     group-wise, compile_sparse(kernel="loop", decide="always")
    groupsparse              group-wise, compile_sparse(model.to(dtype), example.to(dtype))
    groupsparse-compile      group-wise, torch.compile(backend="groupsparse")

Every variant is checked on fresh inputs against the float32 eager model it computes (the
dense model, or the masked pruned model) by the rule of ``benchmarks.checks``. Speed-ups are
against dense eager and against the fastest dense runtime that passed its check, in the same
precision. Timing: single calls in turns (``time_side_by_side``) while every variant runs on
torch's thread pool; blocks of ``--block`` calls once OpenVINO, with its own pool, is among
them.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import DTYPES, cast_inputs, fresh_inputs, relative_error, tolerance, verdict
from ..models import BSR_BLOCK, build, excluded_layers, nm_pattern, parse_model, prune
from ..results import ResultFile
from ..runtimes import Runtime, Unavailable, dense_runtime, torch_runtime
from ..timing import OtherLoad, blocks, interleaved

__all__ = ["DEFAULT_VARIANTS", "MODELS", "VARIANTS", "main", "markdown_table"]

MODELS = ("vgg16", "resnet50", "bert-base", "vit-b16", "hf-resnet50")
QUICK_MODELS = (
    "vgg16:image_size=64",
    "resnet50:image_size=64",
    "bert-base:num_layers=2",
    "vit-b16:num_layers=2",
    "hf-resnet50:image_size=64",
)
SPARSITIES = (0.75, 0.9)
# variant -> (label, the pattern it prunes with, or None for the dense model)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "dense-eager": ("dense eager", None),
    "dense-inductor": ("dense, Inductor", None),
    "dense-inductor-freezing": ("dense, Inductor + freezing", None),
    "dense-openvino": ("dense, OpenVINO", None),
    "csr": ("element, CSR", "element"),
    "bsr": (f"block {BSR_BLOCK}x{BSR_BLOCK}, BSR", "block"),
    "vector": ("vector N:M", "vector"),
    "loop": ("group, loop", "group"),
    "groupsparse": ("group, groupsparse", "group"),
    "groupsparse-compile": ("group, groupsparse + torch.compile", "group"),
}
DEFAULT_VARIANTS = (
    "dense-eager",
    "dense-inductor-freezing",
    "dense-openvino",
    "groupsparse",
    "groupsparse-compile",
)
# float32 tolerance against the float32 eager model: torch.sparse sums in another order
FLOAT32_TOLERANCE = {"csr": 1e-3, "bsr": 1e-3}
DEFAULT_FLOAT32_TOLERANCE = 1e-4
# issue 19's end-to-end goals: groupsparse / the fastest dense runtime, same precision
GOALS = {0.75: 1.5, 0.9: 2.5}


@dataclass
class Variant:
    """One timed way of running the model, and what its check found."""

    runtime: Runtime | None
    check: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    error: str | None = None  # it failed: the run is FAILED
    unavailable: str | None = None  # it cannot run here (a missing package): recorded only


class Reference:
    """The float32 eager model a variant must match, its outputs on fresh inputs, and eager's
    own error in the run's precision (the half-precision rule's yardstick)."""

    def __init__(
        self, model: nn.Module, low: nn.Module, example: tuple, dtype: str, seed: int
    ) -> None:
        self.inputs, self.dtype = fresh_inputs(example, seed), dtype
        with torch.no_grad():
            self.expected = model(*self.inputs)
            self.eager_error = None
            if dtype != "float32":
                low_output = low(*cast_inputs(self.inputs, DTYPES[dtype]))
                self.eager_error = relative_error(low_output, self.expected)

    def check(self, runtime: Runtime, float32_tolerance: float, against: str) -> dict[str, Any]:
        error = relative_error(runtime.run(*self.inputs), self.expected)
        limit = tolerance(self.dtype, float32_tolerance, self.eager_error)
        return {**verdict(error, limit, against), "eager_error_in_dtype": self.eager_error}


def _attempt(name: str, build_variant: Callable[[], Variant]) -> Variant:
    """Build one variant; a failure is a result too, and the run goes on."""
    start = time.perf_counter()
    try:
        variant = build_variant()
    except Unavailable as why:
        return Variant(runtime=None, unavailable=str(why))
    except Exception as error:  # noqa: BLE001 (recorded in the results; the run goes on)
        text = f"building {name}: {type(error).__name__}: {error}"
        print(f"\n{text}\n{traceback.format_exc()}", file=sys.stderr)
        return Variant(runtime=None, error=text)
    variant.setup_s = round(time.perf_counter() - start, 2)
    return variant


def _dense_variant(
    name: str, model: nn.Module, example: tuple, reference: Reference, args: argparse.Namespace
) -> Variant:
    runtime = dense_runtime(name.removeprefix("dense-"), model, example, args.dtype, args.threads)
    return Variant(runtime, reference.check(runtime, DEFAULT_FLOAT32_TOLERANCE, "dense eager"))


def _sparse_variant(
    name: str,
    pruned: nn.Module,
    low: nn.Module,
    example: tuple,
    exclude: list[str],
    reference: Reference,
    context: dict[str, Any],
    record: dict[str, Any],
) -> Variant:
    """``pruned``: the float32 masked model; ``low``: the same in the run's precision."""
    import groupsparse as gs

    from ..sparse_formats import to_sparse_layout

    dtype = reference.dtype
    low_example = cast_inputs(example, DTYPES[dtype])
    notes: list[str] = []
    match name:
        case "csr" | "bsr":
            missing = [op for op in (f"{name} sparse.mm", f"{name} addmm")
                       if context["kernels"].get(op) != "ok"]  # fmt: skip
            if missing:
                return Variant(None, unavailable=f"no {name.upper()} CPU matmul: {missing}")
            names = [layer for layer, _ in gs.prunable_layers(low) if layer not in exclude]
            sparse, how = to_sparse_layout(low, names, name, (BSR_BLOCK, BSR_BLOCK))
            notes = [f"{layer} stays {why}" for layer, why in how.items() if why != name]
            implementation = (
                f"torch.sparse {name.upper()} ({len(how) - len(notes)} of {len(how)} pruned layers)"
            )
            runtime = torch_runtime(sparse, example, dtype, implementation)
        case "vector":
            why = context["nm_kernel"]  # None when torch has a CPU N:M kernel (not in 2.13)
            notes = [why] if why else []
            runtime = torch_runtime(low, example, dtype, "dense (no N:M CPU kernel)")
        case "loop":
            loop = gs.compile_sparse(low, low_example, kernel="loop", decide="always")
            implementation = f"compile_sparse(kernel='loop', decide='always'): {len(loop.report.rewritten)} of {len(loop.report)} layers"
            runtime = torch_runtime(loop, example, dtype, implementation)
        case "groupsparse":
            fast = gs.compile_sparse(low, low_example)
            record["layers"] = fast.report.to_dicts()
            implementation = f"compile_sparse(decide='time'): {len(fast.report.rewritten)} of {len(fast.report)} layers"
            runtime = torch_runtime(fast, example, dtype, implementation)
        case "groupsparse-compile":
            reports: list[Any] = []
            compiled = torch.compile(low, backend="groupsparse", options={"report": reports})
            runtime = torch_runtime(compiled, example, dtype, "")  # compiles
            record["layers_torch_compile"] = [report.to_dicts() for report in reports]
            rewritten = sum(len(report.rewritten) for report in reports)
            total = sum(len(report) for report in reports)
            runtime.implementation = f"torch.compile(backend='groupsparse'): {len(reports)} graph(s), {rewritten} of {total} layers"
        case _:
            raise ValueError(f"unknown variant {name!r}")
    tolerance_ = FLOAT32_TOLERANCE.get(name, DEFAULT_FLOAT32_TOLERANCE)
    return Variant(runtime, reference.check(runtime, tolerance_, "masked eager"), notes=notes)


def _dynamo_frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def _time(variants: dict[str, Variant], args: argparse.Namespace) -> tuple[dict, str]:
    timed = {name: v.runtime.timed for name, v in variants.items() if v.runtime is not None}
    pools = {v.runtime.pool for v in variants.values() if v.runtime is not None}
    if pools <= {"torch"}:
        return interleaved(timed, args.runs, args.warmup), "interleaved single calls"
    return (
        blocks(timed, args.runs, args.block, args.warmup),
        f"blocks of {args.block} calls ({' and '.join(sorted(pools))} thread pools)",
    )


def _speedups(entries: dict[str, dict[str, Any]]) -> str | None:
    """Add speedup_vs_dense_eager and speedup_vs_fastest_dense to every timed entry; returns
    the fastest dense runtime that passed its check."""
    dense = {
        name: entry["median_ms"]
        for name, entry in entries.items()
        if VARIANTS[name][1] is None and "median_ms" in entry and entry["check"].get("passed")
    }
    fastest = min(dense, key=dense.get) if dense else None
    eager = entries.get("dense-eager", {}).get("median_ms")
    for entry in entries.values():
        if "median_ms" not in entry:
            continue
        if eager:
            entry["speedup_vs_dense_eager"] = eager / entry["median_ms"]
        if fastest:
            entry["speedup_vs_fastest_dense"] = dense[fastest] / entry["median_ms"]
    return fastest


def run_model(spec: str, args: argparse.Namespace, result: ResultFile, context: dict) -> None:
    """Every variant of one model at every sparsity, recorded cell by cell."""
    torch._dynamo.reset()
    name, model_args = parse_model(spec)
    torch.manual_seed(args.seed)
    model, example = build(spec, batch=args.batch)
    exclude = excluded_layers(model)
    dense_names = [v for v in args.variants if VARIANTS[v][1] is None]
    eager = model if args.dtype == "float32" else copy.deepcopy(model).to(DTYPES[args.dtype])
    reference = Reference(model, eager, example, args.dtype, args.seed)
    dense = {
        variant: _attempt(
            variant, functools.partial(_dense_variant, variant, model, example, reference, args)
        )
        for variant in dense_names
    }
    for sparsity in args.sparsities:
        record: dict[str, Any] = {
            "model": spec, "model_name": name, "model_args": model_args, "dtype": args.dtype,
            "sparsity": sparsity, "input_shapes": [list(x.shape) for x in example],
            "excluded_layers": exclude,
        }  # fmt: skip
        variants = dict(dense)
        for pattern in dict.fromkeys(VARIANTS[v][1] for v in args.variants if VARIANTS[v][1]):
            try:
                pruned = prune(model, pattern, sparsity, args.group_size, exclude)
                low = (
                    pruned
                    if args.dtype == "float32"
                    else copy.deepcopy(pruned).to(DTYPES[args.dtype])
                )
                masked = Reference(pruned, low, example, args.dtype, args.seed + 1)
            except Exception as error:  # noqa: BLE001 (recorded; the run goes on)
                failed = Variant(None, error=f"pruning {pattern}: {type(error).__name__}: {error}")
                variants.update({v: failed for v in args.variants if VARIANTS[v][1] == pattern})
                continue
            if pattern == "vector":
                record["nm"] = nm_pattern(sparsity)
            for variant in (v for v in args.variants if VARIANTS[v][1] == pattern):
                variants[variant] = _attempt(
                    variant,
                    functools.partial(
                        _sparse_variant,
                        variant,
                        pruned,
                        low,
                        example,
                        exclude,
                        masked,
                        context,
                        record,
                    ),
                )
        frames = _dynamo_frames()
        with OtherLoad() as load:
            stats, timing = _time(variants, args)
        entries = {}
        for variant_name, variant in variants.items():
            runtime = variant.runtime
            entry: dict[str, Any] = {
                "implementation": runtime.implementation if runtime else None,
                "pool": runtime.pool if runtime else None,
                "details": runtime.details if runtime else {},
                "check": variant.check, "notes": variant.notes, "setup_s": variant.setup_s,
                "error": variant.error, "unavailable": variant.unavailable,
            }  # fmt: skip
            if variant_name in stats:
                entry.update(stats[variant_name].as_dict())
            entries[variant_name] = entry
        record.update(
            variants=entries,
            fastest_dense=_speedups(entries),
            timing=timing,
            compiles_during_timing=_dynamo_frames() - frames,  # included in the times
            other_load=load.share,
        )
        result.add(record)
        print(_line(record), flush=True)


def _line(record: dict[str, Any]) -> str:
    cells = []
    for name, entry in record["variants"].items():
        if "median_ms" in entry:
            ratio = entry.get("speedup_vs_fastest_dense")
            cells.append(
                f"{name} {entry['median_ms']:.1f} ms" + (f" ({ratio:.2f}x)" if ratio else "")
            )
        else:
            cells.append(f"{name} {entry['error'] or entry['unavailable']}")
    return f"{record['model']} {record['sparsity']:.0%} {record['dtype']}: " + "; ".join(cells)


def _failed(spec: str, sparsities: Sequence[float], error: Exception) -> list[dict[str, Any]]:
    text = f"building {spec}: {type(error).__name__}: {error}"
    print(f"\n{text}\n{traceback.format_exc()}", file=sys.stderr)
    return [{"model": spec, "sparsity": s, "error": text, "variants": {}} for s in sparsities]


# ---------------------------------------------------------------------------------------------
# tables


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and sparsity: groupsparse against the fastest dense runtime."""
    rows = []
    for record in records:
        variants = record.get("variants", {})
        ours = variants.get("groupsparse", {})
        fastest = record.get("fastest_dense")
        goal = GOALS.get(record["sparsity"])
        ratio = ours.get("speedup_vs_fastest_dense")
        rows.append({
            "model": record["model"], "dtype": record.get("dtype"),
            "sparsity": f"{record['sparsity']:.0%}",
            "fastest dense": fastest and f"{fastest.removeprefix('dense-')} {variants[fastest]['median_ms']:.1f} ms",
            "groupsparse ms": ours.get("median_ms"),
            "vs fastest dense": ratio and f"{ratio:.2f}x",
            "vs dense eager": ours.get("speedup_vs_dense_eager") and f"{ours['speedup_vs_dense_eager']:.2f}x",
            "goal (issue 19)": goal and ratio and f"{goal}x " + ("met" if ratio >= goal else "MISSED"),
            "check": ours.get("check", {}).get("passed"),
        })  # fmt: skip
    return rows


def markdown_table(records: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """model x sparsity rows, one column per variant: median ms (speedup vs the fastest dense
    runtime that passed its check), with footnotes for errors and failed checks."""
    names = [v for v in VARIANTS if any(v in r.get("variants", {}) for r in records)]
    lines = [
        (
            f"Median ms of {settings['runs']} runs side by side (speedup vs the fastest dense "
            f"runtime), {settings['dtype']}, batch {settings['batch']}, group size "
            f"{settings['group_size']}."
        ),
        "",
        "| model | sparsity | fastest dense | " + " | ".join(VARIANTS[v][0] for v in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    notes: list[str] = []
    for record in records:
        row = [record["model"], f"{record['sparsity']:.0%}", record.get("fastest_dense") or ""]
        if record.get("error"):
            notes.append(f"{record['model']}: {record['error']}")
            lines.append("| " + " | ".join(row + [f"error [{len(notes)}]"] * len(names)) + " |")
            continue
        for name in names:
            entry = record["variants"].get(name)
            if entry is None:
                row.append("")
            elif entry.get("error") or entry.get("unavailable"):
                notes.append(f"{record['model']} {record['sparsity']:.0%} {name}: "
                             f"{entry['error'] or entry['unavailable']}")  # fmt: skip
                row.append(f"{'error' if entry.get('error') else 'n/a'} [{len(notes)}]")
            else:
                text = f"{entry['median_ms']:.1f}"
                if entry.get("speedup_vs_fastest_dense"):
                    text += f" ({entry['speedup_vs_fastest_dense']:.2f}x)"
                if name == "vector" and record.get("nm"):
                    text += f" {record['nm']}"
                check = entry["check"]
                if check.get("passed") is False:
                    notes.append(
                        f"{record['model']} {record['sparsity']:.0%} {name}: check FAILED, max "
                        f"relative error {check['max_relative_error']:.1e} > {check['tolerance']:.1e}"
                    )
                    text += f" FAILED [{len(notes)}]"
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"[{i}] {text}  " for i, text in enumerate(notes, 1)]
    recompiled = [
        f"{r['model']} {r['sparsity']:.0%}" for r in records if r.get("compiles_during_timing")
    ]
    if recompiled:
        lines.append(
            "torch.compile compiled again while timing (the times include it): "
            + ", ".join(recompiled)
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=(
        f"check the suite: sparsity 0.75, 3 runs, the models reduced ({' '.join(QUICK_MODELS)}); "
        "written under out/benchmarks/"
    ))  # fmt: skip
    parser.add_argument("--models", nargs="+", help=f"model specs (default: {' '.join(MODELS)})")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(DEFAULT_VARIANTS), metavar="VARIANT",
                        help=f"of {', '.join(VARIANTS)} (default: %(default)s)")  # fmt: skip
    parser.add_argument("--sparsities", nargs="+", type=float, help="default 0.75 0.9")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch's and OpenVINO's threads")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, help="timed calls per variant (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each first")
    parser.add_argument("--block", type=int, default=5,
                        help="calls per block when runtimes with their own thread pools are "
                        "timed (OpenVINO)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results folder (default: by machine)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..sparse_formats import nm_cpu_kernel, probe_cpu_kernels

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.sparsities = args.sparsities or ([0.75] if args.quick else list(SPARSITIES))
    args.runs = args.runs or (3 if args.quick else 10)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta state")
    settings = {
        key: getattr(args, key)
        for key in ("models", "variants", "sparsities", "dtype", "group_size", "threads",
                    "batch", "runs", "warmup", "block", "seed", "quick")
    }  # fmt: skip
    settings.update(criterion="magnitude", bsr_block=BSR_BLOCK, timing="benchmarks.timing")
    result = ResultFile(
        "models", argv, settings, threads=args.threads, out=args.out, quick=args.quick
    )
    context = {"kernels": probe_cpu_kernels(), "nm_kernel": nm_cpu_kernel()}
    result.data.update(cpu_sparse_kernels=context["kernels"], nm_cpu_kernel=context["nm_kernel"])
    print(f"models: {', '.join(args.models)} x {args.sparsities}, {args.dtype}, "
          f"{args.threads} threads; writing {result.path}", flush=True)  # fmt: skip
    for spec in args.models:
        try:
            run_model(spec, args, result, context)
        except Exception as error:  # noqa: BLE001 (recorded; the next model runs)
            for record in _failed(spec, args.sparsities, error):
                result.add(record)
    path = result.finish(summary(result.records), markdown_table(result.records, settings))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    failed = [
        (r["model"], r["sparsity"], name)
        for r in result.records
        for name, entry in r.get("variants", {}).items()
        if entry.get("error") or entry["check"].get("passed") is False
    ]
    if failed or any(r.get("error") for r in result.records):
        print(f"FAILED: {failed or 'model build'}")
        return 1
    return 0
