"""The paper's CPU evaluation (issue 4) in one command: every model, pattern and sparsity,
timed side by side in one process against dense and the other sparse formats.

    python tools/bench.py                      # the full run (see --help for the estimate)
    python tools/bench.py --quick              # a few minutes: smaller inputs, one sparsity

For each model and sparsity, the model is pruned with each pattern (magnitude, one shot;
the first conv and the classifier stay dense, see ``excluded_layers``) and these are timed
in turns, in one process (``groupsparse.cli.time_side_by_side``), after each sparse variant's
output has been checked against its own masked eager model on fresh inputs:

    dense                dense eager (the unpruned model)
    dense-compile        the same under torch.compile (Inductor, default mode)
    csr                  element-wise pruning, torch.sparse CSR (convs: F.unfold + CSR matmul)
    bsr                  block-wise 16x16 pruning, torch.sparse BSR (convs: F.unfold + BSR matmul)
    vector               vector-wise N:M pruning (2:4 at 50%, 1:4 at 75%, 1:10 at 90%), run
                         dense: torch has no N:M kernel for CPU tensors (probed at start)
    loop                 group-wise, the earlier per-group implementation
                         (compile_sparse(kernel="loop", decide="always"))
    groupsparse          group-wise, compile_sparse(decide="time")
    groupsparse-compile  group-wise, torch.compile(backend="groupsparse")

Writes to ``--out`` (default ``bench/results/<machine>/``, ``.../quick/`` with ``--quick``):
``results.json`` (machine, settings, every median and spread, checks, per-layer reports;
rewritten after every model and sparsity), ``table.md`` (the README table), ``latency.png``
(latency against sparsity, one panel per model, one line per method) and
``layers_<model>.png`` (per-layer dense vs groupsparse milliseconds from compile_sparse's
report).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/baselines.py, run or imported

from baselines import nm_cpu_kernel, probe_cpu_kernels, to_sparse_layout

__all__ = ["METHODS", "excluded_layers", "main", "nm_pattern", "parse_model"]

REPO = Path(__file__).resolve().parents[1]
MODELS = ("vgg16", "resnet50", "bert-base", "vit-b16")
PATTERNS = ("element", "block", "vector", "group")
SPARSITIES = (0.5, 0.75, 0.9)
BSR_BLOCK = 16

# method -> (label for tables and plots, the pattern it needs or None for the dense model)
METHODS: dict[str, tuple[str, str | None]] = {
    "dense": ("dense eager", None),
    "dense-compile": ("dense, Inductor", None),
    "csr": ("element, CSR", "element"),
    "bsr": (f"block {BSR_BLOCK}x{BSR_BLOCK}, BSR", "block"),
    "vector": ("vector N:M", "vector"),
    "loop": ("group, loop", "group"),
    "groupsparse": ("group, groupsparse", "group"),
    "groupsparse-compile": ("group, groupsparse + torch.compile", "group"),
}
# max relative error against the variant's own masked eager model (torch.sparse sums in
# another order, hence the looser bound)
TOLERANCE = {"csr": 1e-3, "bsr": 1e-3}
DEFAULT_TOLERANCE = 1e-4

# --quick: the same architectures on smaller inputs or with fewer layers, one sparsity
QUICK_MODELS = (
    "vgg16:image_size=64",
    "resnet50:image_size=64",
    "bert-base:num_layers=2",
    "vit-b16:num_layers=2",
)
QUICK_SPARSITIES = (0.75,)
QUICK_RUNS = 3

# Wall seconds, all patterns, batch 1, 2 threads: (building the model and compiling it dense,
# once; pruning, compiling and checking, per sparsity; one timed round of every method).
# From this script on a 2-core AMD EPYC shared with other jobs: --quick took 6.9 min at load
# average ~3.5; the full-size figures come from --sparsities 0.9 --runs 2 (30.5 min at load
# ~7, when --quick took 21 min), scaled by 6.9/21, with rounds x1.3 for the lower sparsities.
_COST_S: dict[str, tuple[float, float, float]] = {
    "vgg16": (17.0, 125.0, 10.4),
    "resnet50": (17.0, 50.0, 5.0),
    "bert-base": (17.0, 138.0, 6.9),
    "vit-b16": (17.0, 135.0, 8.2),
    "vgg16:image_size=64": (7.0, 134.0, 2.8),
    "resnet50:image_size=64": (7.0, 86.0, 2.7),
    "bert-base:num_layers=2": (7.0, 65.0, 3.7),
    "vit-b16:num_layers=2": (7.0, 41.0, 3.0),
}
_SMALL_MODEL_COST_S = (20.0, 30.0, 0.05)


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``"bert-base:num_layers=2,seq_len=64"`` -> ("bert-base", {"num_layers": 2, "seq_len": 64});
    the arguments go to ``build_model``."""
    name, _, arguments = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"model {spec!r}: write builder arguments as key=value; got {item!r}")
        for kind in (int, float):
            try:
                kwargs[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def nm_pattern(sparsity: float) -> str:
    """The N:M string with at least M = 4 whose sparsity is ``sparsity``: 0.5 -> "2:4",
    0.75 -> "1:4", 0.9 -> "1:10"."""
    kept = Fraction(1 - sparsity).limit_denominator(32)
    n, m = kept.numerator, kept.denominator
    while m < 4:
        n, m = 2 * n, 2 * m
    return f"{n}:{m}"


def excluded_layers(model: nn.Module) -> list[str]:
    """The layers left dense: the first conv and the classifier.

    For the CNNs that is the first and the last conv/linear (``exclude="first_last"``). For
    transformers models the last layer is the pooler, and BERT's first layer is an attention
    projection, not a conv: there the pooler and any classifier stay dense, and the first
    layer only when it is a conv (ViT's patch embedding).
    """
    import groupsparse as gs

    layers = list(gs.prunable_layers(model))
    if not hasattr(model, "config"):  # not a transformers model
        return [layers[0][0], layers[-1][0]]
    excluded = [name for name, _ in layers if {"pooler", "classifier"} & set(name.split("."))]
    if isinstance(layers[0][1], nn.Conv2d):
        excluded.insert(0, layers[0][0])
    return excluded


# ---------------------------------------------------------------------------------------------
# outputs, inputs, checks


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, a tuple, or a transformers ModelOutput."""
    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _fresh_inputs(example: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like the example, with new values (token ids stay within the example's
    range, which is within the vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    fresh = []
    for x in example:
        if x.is_floating_point():
            fresh.append(torch.randn(x.shape, generator=generator, dtype=x.dtype))
        else:
            fresh.append(
                torch.randint(0, int(x.max()) + 1, x.shape, generator=generator, dtype=x.dtype)
            )
    return tuple(fresh)


def _relative_error(actual: Any, expected: Any) -> float:
    """max |a - e| / max |e| over the output's tensors (the design document's measure)."""
    pairs = list(zip(_tensors(actual), _tensors(expected), strict=True))
    if not pairs:
        raise ValueError("the model's output holds no tensors to compare")
    return max(
        float((a.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-12))
        for a, e in pairs
    )


# ---------------------------------------------------------------------------------------------
# variants


@dataclass
class Variant:
    """One timed way of running the model, and what its check found."""

    run: Callable[[], Any] | None  # calls the model on the example inputs; None when it failed
    implementation: str
    check: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    setup_s: float = 0.0  # building (compiling) and checking, not pruning
    error: str | None = None


def _checked(
    name: str,
    model: Callable[..., Any],
    reference: Callable[..., Any] | None,
    example: tuple,
    seed: int,
) -> dict[str, Any]:
    """Compare ``model`` with ``reference`` on fresh inputs (this call also compiles lazy models)."""
    tolerance = TOLERANCE.get(name, DEFAULT_TOLERANCE)
    if reference is None:
        return {"against": "itself (runs the masked eager model)", "passed": True}
    fresh = _fresh_inputs(example, seed)
    with torch.no_grad():
        error = _relative_error(model(*fresh), reference(*fresh))
    return {"max_relative_error": error, "tolerance": tolerance, "passed": error < tolerance}


def _pruned(
    model: nn.Module, pattern: str, sparsity: float, args: argparse.Namespace, exclude: list[str]
) -> nn.Module:
    import groupsparse as gs

    pruned = copy.deepcopy(model)
    match pattern:
        case "element":
            gs.prune(pruned, "element", sparsity, exclude=exclude)
        case "block":
            gs.prune(pruned, "block", sparsity, exclude=exclude, block=(BSR_BLOCK, BSR_BLOCK))
        case "vector":
            gs.prune(pruned, nm_pattern(sparsity), sparsity, exclude=exclude)
        case "group":
            gs.prune(pruned, "group", sparsity, exclude=exclude, group_size=args.group_size)
        case _:
            raise ValueError(f"unknown pattern {pattern!r}; allowed: {PATTERNS}")
    return pruned.eval()


def _layout_variant(
    name: str,
    layout: str,
    pruned: nn.Module,
    exclude: list[str],
    example: tuple,
    kernels: dict[str, str],
    seed: int,
) -> Variant:
    import groupsparse as gs

    missing = [op for op in (f"{layout} sparse.mm", f"{layout} addmm") if kernels.get(op) != "ok"]
    if missing:  # fall back to running the pruned model dense, and say so
        return Variant(
            run=lambda: pruned(*example),
            implementation=f"dense (no {layout.upper()} CPU matmul: {', '.join(f'{op}: {kernels.get(op)}' for op in missing)})",
            check=_checked(name, pruned, None, example, seed),
        )
    names = [layer for layer, _ in gs.prunable_layers(pruned) if layer not in exclude]
    sparse, how = to_sparse_layout(pruned, names, layout, (BSR_BLOCK, BSR_BLOCK))
    dense = {layer: why for layer, why in how.items() if why.startswith("dense")}
    variant = Variant(
        run=lambda: sparse(*example),
        implementation=f"torch.sparse {layout.upper()} ({len(how) - len(dense)} of {len(how)} pruned layers)",
        check=_checked(name, sparse, pruned, example, seed),
    )
    variant.notes += [f"{layer} stays {why}" for layer, why in dense.items()]
    return variant


@dataclass
class Cell:
    """Everything built for one model at one sparsity."""

    variants: dict[str, Variant]
    layers: list[dict] | None = None  # compile_sparse's report
    layers_torch_compile: list[list[dict]] | None = None  # the backend's, one list per graph
    nm: str | None = None
    prune_s: dict[str, float] = field(default_factory=dict)


def _build_cell(
    dense: nn.Module,
    dense_compiled: Callable[..., Any],
    example: tuple,
    sparsity: float,
    args: argparse.Namespace,
    exclude: list[str],
    context: dict[str, Any],
    progress: Any,
) -> Cell:
    seed = args.seed + int(sparsity * 1000)
    cell = Cell(
        variants={
            "dense": Variant(
                run=lambda: dense(*example),
                implementation="eager",
                check={"against": "itself", "passed": True},
            ),
            "dense-compile": Variant(
                run=lambda: dense_compiled(*example),
                implementation="torch.compile (Inductor, default mode)",
                check=context["dense_compile_check"],
            ),
        }
    )
    for pattern in args.patterns:
        progress.set_postfix_str(f"{pattern}: prune, build, check")
        methods = [method for method, (_, needs) in METHODS.items() if needs == pattern]
        start = time.perf_counter()
        try:
            pruned = _pruned(dense, pattern, sparsity, args, exclude)
        except Exception as error:  # noqa: BLE001 (recorded in the results; the run goes on)
            for method in methods:
                cell.variants[method] = _failed(f"pruning {pattern}", error)
            progress.update(1)
            continue
        cell.prune_s[pattern] = round(time.perf_counter() - start, 2)
        for method in methods:
            start = time.perf_counter()
            try:
                variant = _build_variant(
                    method, pruned, example, exclude, args, context, cell, seed
                )
            except Exception as error:  # noqa: BLE001 (recorded in the results; the run goes on)
                variant = _failed(f"building {method}", error)
            variant.setup_s = time.perf_counter() - start
            cell.variants[method] = variant
        progress.update(1)
    if "vector" in args.patterns:
        cell.nm = nm_pattern(sparsity)
    return cell


def _build_variant(
    method: str,
    pruned: nn.Module,
    example: tuple,
    exclude: list[str],
    args: argparse.Namespace,
    context: dict[str, Any],
    cell: Cell,
    seed: int,
) -> Variant:
    import groupsparse as gs

    match method:
        case "csr" | "bsr":
            return _layout_variant(
                method, method, pruned, exclude, example, context["kernels"], seed
            )
        case "vector":
            why = context["nm_kernel"]  # None when torch has a CPU N:M kernel (not in 2.13)
            return Variant(
                run=lambda: pruned(*example),
                implementation="dense (no N:M CPU kernel)" if why else "dense (N:M kernel unused)",
                check=_checked(method, pruned, None, example, seed),
                notes=[why] if why else [],
            )
        case "loop":
            loop = gs.compile_sparse(pruned, example, kernel="loop", decide="always")
            return Variant(
                run=lambda: loop(*example),
                implementation=f"compile_sparse(kernel='loop', decide='always'): {len(loop.report.rewritten)} of {len(loop.report)} layers",
                check=_checked(method, loop, pruned, example, seed),
            )
        case "groupsparse":
            fast = gs.compile_sparse(pruned, example, decide="time")
            cell.layers = fast.report.to_dicts()
            return Variant(
                run=lambda: fast(*example),
                implementation=f"compile_sparse(decide='time'): {len(fast.report.rewritten)} of {len(fast.report)} layers",
                check=_checked(method, fast, pruned, example, seed),
            )
        case "groupsparse-compile":
            reports: list[Any] = []
            compiled = torch.compile(pruned, backend="groupsparse", options={"report": reports})
            check = _checked(method, compiled, pruned, example, seed)  # compiles
            cell.layers_torch_compile = [report.to_dicts() for report in reports]
            rewritten = sum(len(report.rewritten) for report in reports)
            total = sum(len(report) for report in reports)
            return Variant(
                run=lambda: compiled(*example),
                implementation=f"torch.compile(backend='groupsparse'): {len(reports)} graph(s), {rewritten} of {total} layers",
                check=check,
            )
    raise ValueError(f"unknown method {method!r}")


def _failed(stage: str, error: Exception) -> Variant:
    text = f"{stage}: {type(error).__name__}: {error}"
    print(f"\n{text}\n{traceback.format_exc()}", file=sys.stderr)
    return Variant(run=None, implementation="failed", error=text)


# ---------------------------------------------------------------------------------------------
# timing


def _time(
    functions: dict[str, Callable[[], Any]], runs: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median and spread (quartiles, min, max) of each function in ms, called in turns."""
    from groupsparse.cli import time_side_by_side

    samples: dict[str, list[float]] = {name: [] for name in functions}

    def recorded(name: str, function: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            start = time.perf_counter()
            result = function()
            samples[name].append(time.perf_counter() - start)
            return result

        return call

    # time_side_by_side drives the calls in turns; the statistics come from each call's own
    # clock, so that the median and the spread describe the same samples
    time_side_by_side({name: recorded(name, f) for name, f in functions.items()}, runs, warmup)
    stats = {}
    for name in functions:
        timed = sorted(1e3 * value for value in samples[name][warmup:])
        q1, median, q3 = (
            statistics.quantiles(timed, n=4, method="inclusive")
            if len(timed) > 1
            else [timed[0]] * 3
        )
        stats[name] = {
            "median_ms": median,
            "q1_ms": q1,
            "q3_ms": q3,
            "min_ms": timed[0],
            "max_ms": timed[-1],
            "runs": len(timed),
        }
    return stats


def _dynamo_frames() -> int:
    """How many frames Dynamo has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


# ---------------------------------------------------------------------------------------------
# machine, estimate


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_slug(info: dict[str, Any]) -> str:
    """A folder name for the machine: "amd-epyc-2c"."""
    name = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", info["cpu"].lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    return f"{name}-{info['cores']}c"


def estimate_s(args: argparse.Namespace) -> float:
    """Rough wall time of this run: _COST_S scaled to the runs, sparsities and patterns."""
    total = 0.0
    pattern_share = (2 + 2 * len(args.patterns)) / 10  # dense, dense-compile, then 2 per pattern
    rounds = args.runs + args.warmup  # the check's call counts in the setup
    for spec in args.models:
        cost = _COST_S.get(spec) or _COST_S.get(parse_model(spec)[0], _SMALL_MODEL_COST_S)
        build, setup, per_round = cost
        total += build + len(args.sparsities) * pattern_share * (setup + rounds * per_round)
    return total


# ---------------------------------------------------------------------------------------------
# report: table and figures


def _label(method: str, results: dict[str, Any]) -> str:
    label = METHODS[method][0]
    if method == "vector":
        label += f", {results['nm_cpu_kernel_label']}"
    return label


def _commands(results: dict[str, Any]) -> list[str]:
    """The commands that made the cells present, each once (a merged file holds several runs)."""
    made = [cell.get("command", results["settings"]["command"]) for cell in results["cells"]]
    return list(dict.fromkeys(made)) or [results["settings"]["command"]]


def markdown_table(results: dict[str, Any]) -> str:
    """model x sparsity rows, one column per method: median ms and speedup vs dense eager."""
    methods = [m for m in METHODS if any(m in cell["methods"] for cell in results["cells"])]
    settings, machine = results["settings"], results["machine"]
    lines = [
        (
            f"CPU latency, median ms of {settings['runs']} runs side by side (speedup vs dense "
            f"eager); {machine['cpu']}, {settings['threads']} threads, batch {settings['batch']}, "
            f"float32, group size {settings['group_size']}, torch {machine['torch']}."
        ),
        "Commands: " + ", ".join(f"`{command}`" for command in _commands(results)),
        "",
        "| model | sparsity | " + " | ".join(_label(m, results) for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    footnotes: list[str] = []
    for cell in results["cells"]:
        dense_ms = cell["methods"].get("dense", {}).get("median_ms")
        row = [cell["model"], f"{cell['sparsity']:.0%}"]
        if cell.get("error"):
            footnotes.append(f"{cell['model']}: {cell['error']}")
            lines.append(
                "| " + " | ".join(row + [f"error [{len(footnotes)}]"] * len(methods)) + " |"
            )
            continue
        for method in methods:
            entry = cell["methods"].get(method)
            if entry is None:
                row.append("")
                continue
            if entry.get("error"):
                footnotes.append(
                    f"{cell['model']} {cell['sparsity']:.0%} {method}: {entry['error']}"
                )
                row.append(f"error [{len(footnotes)}]")
                continue
            text = f"{entry['median_ms']:.1f}"
            if method != "dense" and dense_ms:
                text += f" ({dense_ms / entry['median_ms']:.2f}x)"
            if method == "vector" and cell.get("nm"):
                text += f" {cell['nm']}"
            if not entry["check"].get("passed", False):
                footnotes.append(
                    f"{cell['model']} {cell['sparsity']:.0%} {method}: check FAILED, max relative "
                    f"error {entry['check'].get('max_relative_error', float('nan')):.1e} > {entry['check'].get('tolerance')}"
                )
                text += f" FAILED [{len(footnotes)}]"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    if results.get("nm_cpu_kernel"):
        notes.append(f"vector N:M runs dense: {results['nm_cpu_kernel']}.")
    recompiled = [
        f"{c['model']} {c['sparsity']:.0%}"
        for c in results["cells"]
        if c.get("compiles_during_timing")
    ]
    if recompiled:
        notes.append(
            f"torch.compile compiled again while timing (times include it): {', '.join(recompiled)}."
        )
    fallbacks = sorted(
        {
            note
            for cell in results["cells"]
            for m in ("csr", "bsr")
            for note in cell["methods"].get(m, {}).get("notes", [])
        }
    )
    if fallbacks:
        notes.append(
            f"Layers kept dense by the CSR/BSR baselines: {'; '.join(fallbacks[:6])}{' ...' if len(fallbacks) > 6 else ''}."
        )
    if notes:
        lines += [""] + [note + "  " for note in notes]
    return "\n".join(lines) + "\n"


def draw_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """latency.png (latency vs sparsity per model) and layers_<model>.png (per-layer bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    models = list(dict.fromkeys(cell["model"] for cell in results["cells"]))
    if not models:
        return written
    columns = min(2, len(models))
    rows = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
    for axis, model in zip(axes.flat, models):
        cells = sorted(
            (c for c in results["cells"] if c["model"] == model), key=lambda c: c["sparsity"]
        )
        for index, method in enumerate(METHODS):
            dodge = (index - (len(METHODS) - 1) / 2) * 0.4  # keep the error bars apart
            points = [
                (c["sparsity"] * 100, c["methods"][method]) for c in cells
                if method in c["methods"] and not c["methods"][method].get("error")
            ]  # fmt: skip
            if not points:
                continue
            x = [p + dodge for p, _ in points]
            y = [e["median_ms"] for _, e in points]
            spread = [
                [e["median_ms"] - e["q1_ms"] for _, e in points],
                [e["q3_ms"] - e["median_ms"] for _, e in points],
            ]
            style = "--" if method.startswith("dense") else "-"
            axis.errorbar(
                x,
                y,
                yerr=spread,
                marker="o",
                linestyle=style,
                capsize=3,
                label=_label(method, results),
            )
        axis.set_title(model)
        axis.set_xticks([c["sparsity"] * 100 for c in cells])
        axis.set_xlabel("sparsity (%)")
        axis.set_ylabel("latency (ms, median, IQR bars)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    machine, settings = results["machine"], results["settings"]
    figure.suptitle(
        f"CPU latency vs sparsity: {machine['cpu']}, {settings['threads']} threads, batch {settings['batch']}, "
        f"group size {settings['group_size']}",
        fontsize=10,
    )
    figure.tight_layout()
    path = out / "latency.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    written.append(path)

    for model in models:
        cells = [c for c in results["cells"] if c["model"] == model and c.get("layers")]
        cells.sort(key=lambda c: c["sparsity"])
        if not cells:
            continue
        layer_count = max(len(c["layers"]) for c in cells)
        figure, axes = plt.subplots(
            len(cells),
            1,
            figsize=(max(8.0, 0.22 * layer_count + 2), 3.6 * len(cells)),
            squeeze=False,
        )
        for axis, cell in zip(axes[:, 0], cells):
            layers = cell["layers"]
            x = range(len(layers))
            dense = [row["dense_ms"] or 0.0 for row in layers]
            chosen = [
                (row["sparse_ms"] if row["decision"] == "sparse" else row["dense_ms"]) or 0.0
                for row in layers
            ]
            axis.bar([i - 0.2 for i in x], dense, width=0.4, label="dense")
            bars = axis.bar(
                [i + 0.2 for i in x], chosen, width=0.4, label="groupsparse (kept dense: hatched)"
            )
            for bar, row in zip(bars, layers):
                if row["decision"] != "sparse":
                    bar.set_hatch("//")
                    bar.set_alpha(0.5)
            axis.set_xticks(list(x))
            axis.set_xticklabels([row["name"] for row in layers], rotation=90, fontsize=6)
            axis.set_ylabel("ms (compile-time timing)")
            total_dense, total_chosen = sum(dense), sum(chosen)
            axis.set_title(
                f"{model} at {cell['sparsity']:.0%}: prunable layers {total_dense:.1f} ms dense -> "
                f"{total_chosen:.1f} ms groupsparse",
                fontsize=9,
            )
            axis.legend(fontsize=7)
        figure.tight_layout()
        path = out / f"layers_{re.sub(r'[^a-zA-Z0-9]+', '-', model).strip('-')}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# driver


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=(
        f"a short run that checks the tool: sparsity {QUICK_SPARSITIES[0]}, {QUICK_RUNS} runs, and "
        f"the models reduced: {' '.join(QUICK_MODELS)}"
    ))  # fmt: skip
    parser.add_argument("--models", nargs="+", default=None, help=(
        f"model names, each with optional build_model arguments, like bert-base:seq_len=384 "
        f"(default: {' '.join(MODELS)}; --quick: {' '.join(QUICK_MODELS)})"
    ))  # fmt: skip
    parser.add_argument(
        "--patterns",
        nargs="+",
        default=list(PATTERNS),
        choices=PATTERNS,
        help="patterns (default: all)",
    )
    parser.add_argument(
        "--sparsities",
        nargs="+",
        type=float,
        default=None,
        help="default 0.5 0.75 0.9 (--quick: 0.75)",
    )
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"timed runs per method (default 10, --quick: {QUICK_RUNS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls before timing, besides the check's call",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models' and sparsities' results already in --out (same settings)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default bench/results/<machine>/ (--quick: .../quick/)",
    )
    return parser


def _merge_earlier(results: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    """Keep the cells of an earlier results.json in ``out`` that this run does not redo, so a
    long run can be split by model; refuses results made with other settings."""
    path = out / "results.json"
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    keys = ("threads", "batch", "group_size", "bsr_block", "runs", "warmup")
    differs = [key for key in keys if earlier["settings"].get(key) != results["settings"][key]]
    differs += [
        key for key in ("cpu", "torch") if earlier["machine"].get(key) != results["machine"][key]
    ]
    if differs:
        raise SystemExit(
            f"bench: --merge: {path} was made with another {', '.join(differs)}; use another --out"
        )
    redone = {(spec, sparsity) for spec in args.models for sparsity in args.sparsities}
    results["cells"] = [c for c in earlier["cells"] if (c["model"], c["sparsity"]) not in redone]
    for cell in results["cells"]:
        cell.setdefault("command", earlier["settings"]["command"])
    print(f"bench: --merge keeps {len(results['cells'])} model/sparsity results from {path}")


def _write(results: dict[str, Any], out: Path) -> None:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    import groupsparse as gs  # noqa: F401 (fail early when the package is missing)
    from groupsparse.models import build_model

    args = _parser().parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.sparsities = args.sparsities or list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    args.runs = args.runs or (QUICK_RUNS if args.quick else 10)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta state")
    machine = machine_info(args.threads)
    out = args.out or REPO / "bench" / "results" / machine_slug(machine) / (
        "quick" if args.quick else ""
    )
    out.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    kernels = probe_cpu_kernels()
    nm_kernel = nm_cpu_kernel()
    results: dict[str, Any] = {
        "machine": machine,
        "settings": {
            "command": command.strip(), "quick": args.quick, "models": args.models, "patterns": args.patterns,
            "sparsities": args.sparsities, "group_size": args.group_size, "bsr_block": BSR_BLOCK,
            "threads": args.threads, "batch": args.batch, "runs": args.runs, "warmup": args.warmup,
            "dtype": "float32", "criterion": "magnitude", "timing": "groupsparse.cli.time_side_by_side",
        },
        "cpu_sparse_kernels": kernels,
        "nm_cpu_kernel": nm_kernel,
        "nm_cpu_kernel_label": "dense (no N:M CPU kernel)" if nm_kernel else "dense (N:M kernel unused)",
        "methods": {name: label for name, (label, _) in METHODS.items()},
        "cells": [],
    }  # fmt: skip
    if args.merge:
        _merge_earlier(results, out, args)
    estimate = estimate_s(args)
    print(
        f"bench: {', '.join(args.models)} x sparsity {args.sparsities} x patterns {args.patterns}; "
        f"{args.runs} runs, {args.threads} threads, batch {args.batch}, group size {args.group_size}\n"
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; out: {out}\n"
        f"estimated wall time: about {estimate / 60:.0f} min (calibrated on a 2-core machine at half "
        "load; the progress bar's ETA follows the real pace)",
        flush=True,
    )
    started = time.perf_counter()
    steps = len(args.models) * (1 + len(args.sparsities) * (len(args.patterns) + 1))
    with tqdm(total=steps, desc="bench", unit="step", dynamic_ncols=True) as progress:
        for spec in args.models:
            progress.set_description(spec)
            progress.set_postfix_str("build, dense torch.compile")
            torch._dynamo.reset()
            try:
                torch.manual_seed(args.seed)
                model_name, model_args = parse_model(spec)
                dense, example = build_model(model_name, batch=args.batch, **model_args)
                exclude = excluded_layers(dense)
                dense_compiled = torch.compile(dense)
                context = {
                    "kernels": kernels,
                    "nm_kernel": nm_kernel,
                    "dense_compile_check": _checked(
                        "dense-compile", dense_compiled, dense, example, args.seed
                    ),
                }
            except Exception as error:  # noqa: BLE001 (recorded in the results; the run goes on)
                failed = _failed(f"building {spec}", error)
                for sparsity in args.sparsities:
                    results["cells"].append(
                        {
                            "model": spec,
                            "command": command.strip(),
                            "sparsity": sparsity,
                            "error": failed.error,
                            "methods": {},
                        }
                    )
                progress.update(1 + len(args.sparsities) * (len(args.patterns) + 1))
                continue
            progress.update(1)
            for sparsity in args.sparsities:
                progress.set_description(f"{spec} {sparsity:.0%}")
                cell = _build_cell(
                    dense, dense_compiled, example, sparsity, args, exclude, context, progress
                )
                progress.set_postfix_str(f"timing {len(cell.variants)} methods x {args.runs} runs")
                timed = {name: v.run for name, v in cell.variants.items() if v.run is not None}
                start, frames = time.perf_counter(), _dynamo_frames()
                stats = _time(timed, args.runs, args.warmup)
                timing_s = time.perf_counter() - start
                # every compiled variant compiled during its check; a compile now is in the times
                compiles_during_timing = _dynamo_frames() - frames
                progress.update(1)
                dense_ms = stats.get("dense", {}).get("median_ms")
                methods = {}
                for name, variant in cell.variants.items():
                    entry: dict[str, Any] = {
                        "implementation": variant.implementation, "check": variant.check, "notes": variant.notes,
                        "setup_s": round(variant.setup_s, 2), "error": variant.error,
                    }  # fmt: skip
                    if name in stats:
                        entry.update(stats[name])
                        if dense_ms:
                            entry["speedup_vs_dense"] = dense_ms / stats[name]["median_ms"]
                    methods[name] = entry
                results["cells"].append({
                    "model": spec, "command": command.strip(), "model_name": model_name, "model_args": model_args, "sparsity": sparsity, "nm": cell.nm,
                    "input_shapes": [list(x.shape) for x in example], "excluded_layers": exclude,
                    "prune_s": cell.prune_s, "timing_s": round(timing_s, 1), "compiles_during_timing": compiles_during_timing, "methods": methods, "layers": cell.layers,
                    "layers_torch_compile": cell.layers_torch_compile,
                })  # fmt: skip
                results["wall_s"] = round(time.perf_counter() - started, 1)
                _write(results, out)
                del cell, timed
            del dense, dense_compiled, example, context
    results["wall_s"] = round(time.perf_counter() - started, 1)
    _write(results, out)
    table = markdown_table(results)
    (out / "table.md").write_text(table)
    figures = draw_figures(results, out)
    print()
    print(table)
    print(f"wall time {results['wall_s'] / 60:.1f} min (estimated {estimate / 60:.0f} min)")
    print(
        f"wrote {out / 'results.json'}, {out / 'table.md'}, " + ", ".join(str(f) for f in figures)
    )
    failed = [
        (cell["model"], cell["sparsity"], name)
        for cell in results["cells"]
        for name, entry in cell["methods"].items()
        if entry.get("error") or not entry["check"].get("passed", False)
    ]
    if failed or any(cell.get("error") for cell in results["cells"]):
        print(f"FAILED: {failed or 'model build'} (see table.md notes and results.json)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
