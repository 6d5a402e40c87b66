"""The zoo suite: many architectures from transformers, each pruned group-wise and compiled, to
show which models ``compile_sparse`` captures and speeds up, which layers it leaves dense and
why, and what the compiled model's state_dict weighs.

    python -m benchmarks zoo                          # every architecture of benchmarks/zoo.py
    python -m benchmarks zoo --models bert resnet     # some of them
    python -m benchmarks zoo --quick                  # tiny configs, 3 runs: checks the suite

Models (``benchmarks.zoo``): transformers' model classes from configs with the published
models' widths and fewer layers (each entry says which model it stands for), random weights
with batch norms calibrated on the model's own activations
(``benchmarks.zoo.calibrate_batch_norm``: from a config, EfficientNet's output is 0),
batch 1; 128 tokens for text, 224x224 images (MobileViT 256, Segformer 512), 10 s of audio
for Whisper's encoder; decoders run one forward over the prompt, without a KV cache.

For each model:

1. prune a copy with magnitude, one shot, 75% (``--sparsity``), group-wise, each layer with
   the largest group size of ``--group-sizes`` (64 32 16) that divides its rows (M), or the
   first where none does (the last group is then smaller); the first conv and any
   pooler/classifier stay dense (``benchmarks.models.excluded_layers``), and ``gs.prune``
   leaves dense the layers the compiler cannot speed up (depthwise, grouped, conv1d; their
   reasons are recorded); the pruned model's batch norms are calibrated again;
2. ``gs.compile_sparse(pruned, example)`` (``decide="time"``: each layer is rewritten only
   where its kernel beats dense on the example input); the report's rows are recorded;
3. check it against the masked (pruned, eager) model on fresh inputs: max relative error
   under 1e-4 in float32 over every tensor of the output (``benchmarks.checks``), on an
   output that has not vanished (max |y| >= 1e-3);
4. time it against the dense model in eager PyTorch, in blocks of ``--block`` calls
   (``benchmarks.timing.blocks``);
5. the bytes of ``torch.save(state_dict)``, dense against compiled, also without the
   embedding tables (which neither prunes).

A model that fails at any step is recorded with the step and the error, and the sweep goes
on. Goals (issue 21): every model compiles or says why; none slower than 0.95x of dense eager;
the median at least 1.8x (float32, 75%).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import re
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import fresh_inputs, output_tensors, relative_error, verdict
from ..models import excluded_layers
from ..results import ResultFile
from ..timing import OtherLoad, blocks
from ..zoo import ZOO, build, calibrate_batch_norm, config_of

__all__ = ["GOALS", "QUICK_MODELS", "decision_kind", "main", "markdown_table", "summary"]

QUICK_MODELS = ("bert", "gpt2", "vit", "resnet", "mobilenet-v2")
FLOAT32_TOLERANCE = 1e-4
# an output tensor whose largest value is below this is "vanished": no check can pass on it
MIN_OUTPUT_SCALE = 1e-3
# issue 21's goals: against dense eager, float32, 75%
GOALS = {"floor": 0.95, "median": 1.8}


def decision_kind(row: dict[str, Any]) -> str:
    """A report row's decision in a few words: "sparse", or why the layer stayed dense."""
    if row["decision"] == "sparse":
        return "sparse"
    reason = row["reason"]
    for prefix, kind in (
        ("would be slower", "not faster"),
        ("nothing is pruned", "not pruned"),
        ("grouped/depthwise", "depthwise/grouped"),
        ("conv1d", "conv1d"),
        ("excluded", "excluded"),
    ):
        if reason.startswith(prefix):
            return kind
    return re.sub(r"\d+(\.\d+)?", "#", re.split(r"[:(]", reason)[0]).strip()


def _group_sizes(
    model: nn.Module, exclude: list[str], choices: Sequence[int]
) -> tuple[dict[str, int], dict[str, str]]:
    """({layer: group size} for the layers gs.prune would prune, {layer: why left dense} for
    those it leaves dense because the compiler cannot speed them up)."""
    import groupsparse as gs

    with warnings.catch_warnings():  # the skipped layers are recorded, not printed
        warnings.simplefilter("ignore", UserWarning)
        probe = gs.Pruner(model, "group", 0.0, exclude=exclude)  # prunes nothing
    probe.remove()
    modules = dict(model.named_modules())
    sizes = {}
    for key in probe.masks:
        layer = key.removesuffix(".weight")
        rows = gs.gemm_view(modules[layer].weight, kind=modules[layer]).shape[0]
        sizes[layer] = next((g for g in choices if rows % g == 0), choices[0])
    return sizes, probe.skipped


def _prune(model: nn.Module, sparsity: float, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place, each layer of ``sizes`` with its group size."""
    import groupsparse as gs

    masks = {}
    for group_size in sorted(set(sizes.values()), reverse=True):
        chosen = {layer for layer, size in sizes.items() if size == group_size}
        masks.update(
            gs.prune(model, "group", sparsity, group_size=group_size,
                     exclude=lambda name, _module, chosen=chosen: name not in chosen)
        )  # fmt: skip
    return masks


def _state_dict_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def _embedding_bytes(model: nn.Module) -> int:
    """Bytes of the embedding tables, each counted once (T5's encoder and its ``shared`` hold
    one table; torch.save writes it once)."""
    tables = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(table.numel() * table.element_size() for table in tables.values())


def _decisions(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(decision_kind(row) for row in rows).most_common())


def dense_time_by_decision(
    model: nn.Module, example: tuple[torch.Tensor, ...], rows: list[dict[str, Any]], runs: int
) -> dict[str, float]:
    """Where the dense eager model's time goes: median ms per call in its conv/linear layers,
    summed by what the compiler decided for each (``decision_kind`` of its report row:
    "sparse", "depthwise/grouped", "not pruned", ...), the rest (attention, norms,
    activations, padding: ``"other ops"``) and the ``"total"``. Timed by module hooks over
    ``runs`` calls; the share a rewrite cannot touch bounds the model's speedup.

        >>> dense_time_by_decision(model, example, fast.report.to_dicts(), runs=5)
        {'sparse': 61.2, 'depthwise/grouped': 8.1, 'other ops': 24.9, 'total': 94.2}
    """
    import groupsparse as gs

    kinds: dict[str, str] = {}
    for row in rows:
        kinds.setdefault(row["name"], decision_kind(row))
    started: dict[str, float] = {}
    spent: Counter[str] = Counter()
    handles = []
    for name, module in gs.prunable_layers(model):
        kind = kinds.get(name, "not in the compiled graph")

        def before(_module, _inputs, name=name) -> None:
            started[name] = time.perf_counter()

        def after(_module, _inputs, _output, name=name, kind=kind) -> None:
            spent[kind] += time.perf_counter() - started[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    samples: list[dict[str, float]] = []
    try:
        with torch.no_grad():
            model(*example)
            for _ in range(runs):
                spent.clear()
                start = time.perf_counter()
                model(*example)
                total = time.perf_counter() - start
                samples.append({**spent, "other ops": total - sum(spent.values()), "total": total})
    finally:
        for handle in handles:
            handle.remove()
    keys = list(dict.fromkeys(key for sample in samples for key in sample))
    return {key: statistics.median(s.get(key, 0.0) for s in samples) * 1e3 for key in keys}


def run_model(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """One model through every step; a failing step ends it with ``error`` and ``failed_at``."""
    import groupsparse as gs

    torch._dynamo.reset()
    entry, config, input_size = config_of(spec, args.quick)
    record: dict[str, Any] = {
        "model": spec, "family": entry.family, "model_class": entry.model_class,
        "config_class": entry.config_class, "stands_for": entry.stands_for, "config": config,
        "input": entry.inputs, "input_size": input_size, "notes": list(entry.notes),
        "error": None, "failed_at": None,
    }  # fmt: skip
    step = "build"
    try:
        model, example = build(spec, tiny=args.quick, seed=args.seed)
        record["input_shapes"] = [list(x.shape) for x in example]
        record["parameters"] = sum(p.numel() for p in model.parameters())
        record["attention"] = getattr(model.config, "_attn_implementation", None)

        step = "prune"
        pruned = copy.deepcopy(model)
        exclude = excluded_layers(pruned)
        sizes, skipped = _group_sizes(pruned, exclude, args.group_sizes)
        _prune(pruned, args.sparsity, sizes)
        # the pruned model's batch norms see its own, smaller activations (as after pruning,
        # before fine-tuning): without it a deep CNN's output shrinks towards 0
        record["batch_norm_calibrated"] = calibrate_batch_norm(pruned, example, args.seed + 1)
        record.update(
            excluded_layers=exclude,
            # {group size: how many layers}, largest first (JSON keys are strings)
            group_sizes={
                str(g): n for g, n in sorted(Counter(sizes.values()).items(), reverse=True)
            },
            layer_group_sizes=sizes,
            left_dense_by_prune=skipped,
        )

        step = "compile"
        start = time.perf_counter()
        fast = gs.compile_sparse(pruned, example)
        record["compile_s"] = round(time.perf_counter() - start, 2)
        rows = fast.report.to_dicts()
        record.update(
            capture=fast.report.capture,
            layers=rows,
            decisions=_decisions(rows),
            flops_dense=fast.report.flops_dense,
            flops_sparse=fast.report.flops_sparse,
        )

        step = "check"
        inputs = fresh_inputs(example, args.seed + 1)
        with torch.no_grad():
            expected = pruned(*inputs)
            error = relative_error(fast(*inputs), expected)
        record["check"] = verdict(error, FLOAT32_TOLERANCE, "masked eager")
        # a relative error says nothing of an output that is ~0 (vanished activations)
        scale = min(float(t.abs().max()) for t in output_tensors(expected))
        record["check"]["output_max_abs"] = scale
        if not scale >= MIN_OUTPUT_SCALE:
            record["check"].update(passed=False, why=f"the masked model's output is ~0 "
                                   f"(max |y| = {scale:.1e} < {MIN_OUTPUT_SCALE})")  # fmt: skip

        step = "time"
        with OtherLoad() as load:
            stats = blocks(
                {"dense-eager": lambda: model(*example), "groupsparse": lambda: fast(*example)},
                args.runs,
                args.block,
                args.warmup,
            )
        record["times"] = {name: value.as_dict() for name, value in stats.items()}
        record["speedup"] = stats["dense-eager"].median_ms / stats["groupsparse"].median_ms
        record["other_load"] = load.share

        step = "breakdown"
        record["dense_ms_by_decision"] = dense_time_by_decision(
            model, example, rows, max(3, args.runs // 3)
        )

        step = "size"
        embeddings = _embedding_bytes(model)
        dense_bytes, compiled_bytes = _state_dict_bytes(model), _state_dict_bytes(fast)
        record["state_dict_bytes"] = {
            "dense": dense_bytes,
            "compiled": compiled_bytes,
            "embeddings": embeddings,
            "compiled_over_dense": compiled_bytes / dense_bytes,
            "compiled_over_dense_without_embeddings": (compiled_bytes - embeddings)
            / max(dense_bytes - embeddings, 1),
        }
    except Exception as error:  # noqa: BLE001 (recorded with its step; the sweep goes on)
        record["error"] = f"{type(error).__name__}: {error}"
        record["failed_at"] = step
        record["traceback"] = traceback.format_exc()
        print(f"\n{spec}: {step} failed\n{record['traceback']}", file=sys.stderr)
    finally:
        gc.collect()
    return record


def _line(record: dict[str, Any]) -> str:
    if record["error"]:
        return f"{record['model']}: {record['failed_at']} FAILED: {record['error'][:300]}"
    times = record["times"]
    sizes = record["state_dict_bytes"]
    return (
        f"{record['model']}: dense {times['dense-eager']['median_ms']:.1f} ms, groupsparse "
        f"{times['groupsparse']['median_ms']:.1f} ms ({record['speedup']:.2f}x), "
        f"check {record['check']['max_relative_error']:.1e}, {record['decisions']}, state_dict "
        f"{sizes['dense'] / 1e6:.1f} -> {sizes['compiled'] / 1e6:.1f} MB, compile "
        f"{record['compile_s']:.1f} s"
    )


# ---------------------------------------------------------------------------------------------
# tables


def _decisions_text(decisions: dict[str, int]) -> str:
    total = sum(decisions.values())
    sparse = decisions.get("sparse", 0)
    dense = ", ".join(f"{count} {kind}" for kind, count in decisions.items() if kind != "sparse")
    return f"{sparse}/{total} sparse" + (f"; dense: {dense}" if dense else "")


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f}"


def _rewritten_share(record: dict[str, Any]) -> str:
    """The share of the dense model's time spent in the layers that were rewritten."""
    split = record.get("dense_ms_by_decision") or {}
    return f"{split.get('sparse', 0.0) / split['total']:.0%}" if split.get("total") else ""


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, then the median and the goals."""
    rows = []
    for record in records:
        row: dict[str, Any] = {"model": record["model"], "family": record["family"]}
        if record["error"]:
            row["speedup"] = f"{record['failed_at']} failed: {record['error'][:160]}"
            rows.append(row)
            continue
        sizes = record["state_dict_bytes"]
        row.update({
            "G": "/".join(record["group_sizes"]) or "-",
            "decisions": _decisions_text(record["decisions"]),
            "dense ms": record["times"]["dense-eager"]["median_ms"],
            "groupsparse ms": record["times"]["groupsparse"]["median_ms"],
            "speedup": f"{record['speedup']:.2f}x",
            "dense time in rewritten layers": _rewritten_share(record),
            "state_dict MB": f"{_mb(sizes['dense'])} -> {_mb(sizes['compiled'])}",
            "without embeddings": f"{sizes['compiled_over_dense_without_embeddings']:.2f}x",
            "check": f"{record['check']['max_relative_error']:.1e}"
            + ("" if record["check"]["passed"] else " FAILED"),
        })  # fmt: skip
        rows.append(row)
    speedups = [r["speedup"] for r in records if not r["error"]]
    if speedups:
        median = statistics.median(speedups)
        slowest = min(records, key=lambda r: r.get("speedup", float("inf")))
        rows.append({
            "model": f"median of {len(speedups)}",
            "speedup": f"{median:.2f}x (goal {GOALS['median']}x: "
            f"{'met' if median >= GOALS['median'] else 'MISSED'})",
            "decisions": f"slowest {slowest['model']} {slowest['speedup']:.2f}x (floor "
            f"{GOALS['floor']}x: {'met' if slowest['speedup'] >= GOALS['floor'] else 'MISSED'})",
            "check": f"{sum(1 for r in records if r.get('check', {}).get('passed'))} of "
            f"{len(records)} passed",
        })  # fmt: skip
    return rows


def markdown_table(records: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The sweep's table: one row per model (family, what its config stands for, decisions,
    times, speedup, state_dict sizes, check), the goals, then the failures with their step."""
    lines = [
        (
            f"Group-wise {settings['sparsity']:.0%} (magnitude, one shot, G = the largest of "
            f"{'/'.join(map(str, settings['group_sizes']))} that divides a layer's rows), "
            f"float32, batch 1, {settings['threads']} thread(s); median ms of {settings['runs']} "
            f"calls in blocks of {settings['block']}, the compiled model against the dense "
            "model in eager PyTorch. Decisions: the compiled model's report, one row per "
            "conv/linear call. Rewritten share: of the dense model's time, the part spent in "
            "the layers that were rewritten (module hooks). state_dict: torch.save bytes, "
            "dense -> compiled, and compiled/dense without the embedding tables."
        ),
        "",
        (
            "| model | stands for | family | G | decisions | dense ms | groupsparse ms | "
            "speedup | rewritten share | state_dict MB | w/o embeddings | max rel. error |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for record in records:
        head = f"| {record['model']} | {record['stands_for']} | {record['family']} |"
        if record["error"]:
            failures.append(f"{record['model']} ({record['failed_at']}): {record['error']}")
            lines.append(f"{head} | {record['failed_at']} failed [{len(failures)}] |" + " |" * 7)
            continue
        sizes, check = record["state_dict_bytes"], record["check"]
        sizes_text = f"{_mb(sizes['dense'])} -> {_mb(sizes['compiled'])}"
        lines.append(
            f"{head} {'/'.join(record['group_sizes'])} | "
            f"{_decisions_text(record['decisions'])} | "
            f"{record['times']['dense-eager']['median_ms']:.1f} | "
            f"{record['times']['groupsparse']['median_ms']:.1f} | {record['speedup']:.2f}x | "
            f"{_rewritten_share(record)} | {sizes_text} | {sizes['compiled_over_dense_without_embeddings']:.2f}x | "
            f"{check['max_relative_error']:.1e}{'' if check['passed'] else ' FAILED'} |"
        )
    speedups = [r["speedup"] for r in records if not r["error"]]
    lines.append("")
    if speedups:
        median, slowest = statistics.median(speedups), min(speedups)
        lines.append(
            f"Median speedup {median:.2f}x over {len(speedups)} models (goal {GOALS['median']}x: "
            f"{'met' if median >= GOALS['median'] else 'MISSED'}); slowest {slowest:.2f}x "
            f"(floor {GOALS['floor']}x: {'met' if slowest >= GOALS['floor'] else 'MISSED'}); "
            f"{len(records) - len(speedups)} of {len(records)} failed."
        )
    lines += [""] + [f"[{i}] {text}  " for i, text in enumerate(failures, 1)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=(
        f"check the suite: tiny configs, 3 runs, {' '.join(QUICK_MODELS)} unless --models; "
        "written under out/benchmarks/"
    ))  # fmt: skip
    parser.add_argument("--models", nargs="+", metavar="SPEC",
                        help=f"zoo names with config overrides, 'bert:num_hidden_layers=2' "
                        f"(default: all of {', '.join(ZOO)})")  # fmt: skip
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[64, 32, 16],
                        help="each layer gets the first that divides its rows (default: "
                        "%(default)s)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch's threads (default 1)")
    parser.add_argument("--runs", type=int, help="timed calls of each (default 30, quick 3)")
    parser.add_argument("--block", type=int, default=5, help="consecutive calls per block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results folder (default: by machine)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else ZOO)
    args.runs = args.runs or (3 if args.quick else 30)
    for spec in args.models:
        config_of(spec)  # an unknown name fails before anything runs
    torch.set_num_threads(args.threads)
    settings = {
        key: getattr(args, key)
        for key in ("models", "sparsity", "group_sizes", "threads", "runs", "block", "warmup",
                    "seed", "quick")
    }  # fmt: skip
    settings.update(
        criterion="magnitude", dtype="float32", batch=1, decide="time",
        timing="benchmarks.timing.blocks", tolerance=FLOAT32_TOLERANCE,
    )  # fmt: skip
    result = ResultFile("zoo", argv, settings, threads=args.threads, out=args.out, quick=args.quick)
    print(f"zoo: {len(args.models)} models, {args.sparsity:.0%}, {args.threads} thread(s); "
          f"writing {result.path}", flush=True)  # fmt: skip
    for spec in args.models:
        record = run_model(spec, args)
        result.add(record)
        print(_line(record), flush=True)
    path = result.finish(summary(result.records), markdown_table(result.records, settings))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    failed = [r["model"] for r in result.records if r["error"] or not r["check"]["passed"]]
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0
