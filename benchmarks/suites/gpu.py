"""The gpu suite (issue 5): whole models on an NVIDIA GPU, dense against group-sparse, float16,
end to end and per layer.

    python -m benchmarks gpu --models resnet50 --group-size 64     # on a GPU machine
    python -m benchmarks gpu --dry-run                             # the harness on this CPU
    bash tools/gpu_lease.sh                                        # on a lent GPU machine

Models: VGG-16 and ResNet-50 (batch 32, 224x224), BERT-base (batch 32, 128 tokens), ViT-B/16
(batch 32), group-pruned (every layer; each pruned weight scaled back to its dense norm, so
that half precision keeps its scale) at ``--sparsities``. Variants (``--variants``):

    dense                 the unpruned model (cuDNN / cuBLAS), eager
    dense-compile         torch.compile (Inductor)
    dense-compile-graph   torch.compile(mode="reduce-overhead"): Inductor with CUDA graphs
    dense-max-autotune    torch.compile(mode="max-autotune"): Inductor's tuned kernels with
                          CUDA graphs (the GPU baseline DESIGN.md names)
    dense-graph           the eager model replayed from a CUDA graph
    dense-nhwc-graph      the same, channels_last (CNNs: cuDNN's fast half-precision layout)
    csr, bsr              element-wise / block-wise 16x16 pruning, torch.sparse (cuSPARSE)
    2:4                   2:4 on the linear layers, to_sparse_semi_structured (50% only)
    loop                  group-wise, compile_sparse(kernel="loop", decide="always")
    groupsparse           group-wise, compile_sparse(..., backend="cuda")
    groupsparse-graph     compile_sparse(..., cuda_graph=True): layers chosen by GPU time,
                          the model replayed from CUDA graphs
    groupsparse-compile   torch.compile(backend="groupsparse") (against dense-compile)
    groupsparse-compile-graph  the same with options={"cudagraphs": True}
    layers                every distinct pruned layer on the input it sees in the model: the
                          layers suite's variants (dense, each compiler kernel), eager and
                          replayed from CUDA graphs

Times: ``benchmarks.timing.alone`` (torch.utils.benchmark's blocked_autorange, CUDA
synchronized), median of blocks; the GPU's dense GEMM rate and copy bandwidth first
("ceilings"). Checks: against the float32 model (TF32 off) on the same inputs, by the
half-precision rule of ``benchmarks.checks``. ``--dry-run`` runs the same harness on the
CPU (small models, batch 2, float32, no compile, graphs or 2:4) to check it without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import functools
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import DTYPES, relative_error, tolerance, verdict
from ..models import BSR_BLOCK, build, prune_keeping_scale
from ..provenance import REPO
from ..results import ResultFile, markdown_table
from ..sparse_formats import to_sparse_layout
from ..timing import Stats, alone
from .layers import _exact_float32, measure_module

__all__ = ["VARIANTS", "main", "record_layer_inputs"]

MODELS = ("vgg16", "resnet50", "bert-base", "vit-b16")
DRY_RUN_MODELS = ("small-cnn", "tiny-bert")
SPARSITIES = (0.5, 0.75, 0.9)
VARIANTS = (
    "dense", "dense-compile", "dense-compile-graph", "dense-max-autotune", "dense-graph",
    "dense-nhwc-graph", "csr", "bsr", "2:4", "loop", "groupsparse", "groupsparse-graph",
    "groupsparse-compile", "groupsparse-compile-graph", "layers",
)  # fmt: skip
GPU_ONLY = {"dense-compile", "dense-compile-graph", "dense-max-autotune", "dense-graph",
            "dense-nhwc-graph", "2:4", "groupsparse-graph", "groupsparse-compile",
            "groupsparse-compile-graph"}  # fmt: skip


class Reference:
    """A model's float32 output (TF32 off) on the inputs, and eager's own error in the run's
    precision."""

    def __init__(self, model32: nn.Module, low: nn.Module, inputs32: tuple, inputs: tuple,
                 dtype: str) -> None:  # fmt: skip
        with torch.inference_mode(), _exact_float32():
            self.expected = model32(*inputs32)
        self.dtype = dtype
        self.eager_error = None
        if dtype != "float32":
            with torch.inference_mode():
                self.eager_error = relative_error(low(*inputs), self.expected)

    def check(self, output: Any) -> dict[str, Any]:
        error = relative_error(output, self.expected)
        limit = tolerance(self.dtype, 1e-4, self.eager_error)
        return {
            **verdict(error, limit, "the float32 model"),
            "eager_error_in_dtype": self.eager_error,
        }


def _graphed(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` captured in a CUDA graph (warm-up on a side stream first); returns replay."""
    from groupsparse.timing import capture_cuda_graph

    with torch.inference_mode():
        return capture_cuda_graph(call, warmup=3)[0].replay


def _timed(call: Callable[[], Any], args: argparse.Namespace) -> dict[str, Any]:
    with torch.inference_mode():
        for _ in range(args.warmup):
            call()
        stats: Stats = alone(call, args.min_run_time)
    return {"ms": stats.median_ms, **stats.as_dict()}


def _end_to_end(model, inputs, args, reference=None, report=None) -> dict[str, Any]:
    values = _timed(functools.partial(model, *inputs), args)
    if reference is not None:
        with torch.inference_mode():
            values["check"] = reference.check(model(*inputs))
    if report is not None:
        values.update(
            rewritten_layers=len(report.rewritten), layers=len(report),
            flops_dense=report.flops_dense, flops_sparse=report.flops_sparse,
            report=report.to_dicts(),  # each layer's decision and its reason
        )  # fmt: skip
    return values


def _compile_sparse(gs, model, inputs, args, reference, backend, **options) -> dict[str, Any]:
    """compile_sparse (``cuda_graph=True``: layers chosen by their kernels' GPU time, the
    model replayed from CUDA graphs, input copy and output clone included in the time)."""
    fast = gs.compile_sparse(model, inputs, backend=backend, **options)
    return _end_to_end(fast, inputs, args, reference, fast.report)


def _graphed_end_to_end(model, inputs, args) -> dict[str, Any]:
    replay = _graphed(functools.partial(model, *inputs))
    return _timed(replay, args)


def _dense_graph(gs, model, inputs, args) -> dict[str, Any]:
    """The dense model from a CUDA graph; where eager code cannot be captured (transformers'
    mask building copies a host scalar), the graph groupsparse captures with every layer
    kept dense (``min_speedup=inf``): the same computation, as groupsparse-graph runs it."""
    try:
        return _graphed_end_to_end(model, inputs, args)
    except RuntimeError as error:
        if "during CUDA graph capture" not in str(error):
            raise
    torch.cuda.synchronize()
    captured = gs.compile_sparse(model, inputs, min_speedup=float("inf"))
    return {**_graphed_end_to_end(captured, inputs, args), "captured": "compile_sparse, all dense"}


def _nhwc_graph(model, inputs, args) -> dict[str, Any]:
    """The dense model with its weights and image input channels_last (NHWC), from a graph."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    inputs = tuple(t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)
    return _graphed_end_to_end(model, inputs, args)


def _compiled(model, inputs, args, reference, mode: str | None) -> dict[str, Any]:
    torch._dynamo.reset()
    compiled = torch.compile(model, mode=mode)
    with torch.inference_mode():
        compiled(*inputs)  # compiles
    values = _end_to_end(compiled, inputs, args, reference)
    torch._dynamo.reset()
    return values


def _groupsparse_compile(model, inputs, args, reference, cudagraphs: bool) -> dict[str, Any]:
    """torch.compile(backend="groupsparse"): layers rewritten as in compile_sparse, the rest
    of each Dynamo graph compiled by Inductor; with ``cudagraphs``, Inductor's CUDA graphs and
    layers decided by GPU time."""
    from groupsparse import Report

    torch._dynamo.reset()
    reports: list = []
    fast = torch.compile(
        model, backend="groupsparse", options={"report": reports, "cudagraphs": cudagraphs}
    )
    with torch.inference_mode():
        fast(*inputs)  # compiles, timing its layers on these inputs
    merged = Report([row for report in reports for row in report], capture="dynamo")
    values = _end_to_end(fast, inputs, args, reference, merged)
    torch._dynamo.reset()
    return values


def _semi_structured(module: nn.Module) -> nn.Module | None:
    from torch.sparse import to_sparse_semi_structured

    rows, columns = module.weight.shape
    if rows % 64 or columns % 64:
        return None  # cuSPARSELt / CUTLASS need multiples of 64 here
    module.weight = nn.Parameter(
        to_sparse_semi_structured(module.weight.detach()), requires_grad=False
    )
    return module


def _two_four(gs, base, cpu_inputs, args) -> dict[str, Any]:
    model = copy.deepcopy(base)
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    masks = gs.prune(model, pattern="2:4", exclude=convs)
    model32, inputs32 = _on_device(copy.deepcopy(model), cpu_inputs, args, "float32")
    model, inputs = _on_device(model, cpu_inputs, args, args.dtype)
    reference = Reference(model32, model, inputs32, inputs, args.dtype)
    del model32
    swapped = 0
    for name in (key.removesuffix(".weight") for key in masks):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = _semi_structured(getattr(parent, child))
        if replacement is not None:
            setattr(parent, child, replacement)
            swapped += 1
    return {**_end_to_end(model, inputs, args, reference), "sparse_layers": swapped}


def _sparse_format(gs, base, cpu_inputs, pattern, sparsity, args) -> dict[str, Any]:
    model = copy.deepcopy(base)
    pattern_args = {"block": (BSR_BLOCK, BSR_BLOCK)} if pattern == "block" else {}
    masks = gs.prune(model, pattern=pattern, sparsity=sparsity, **pattern_args)
    model32, inputs32 = _on_device(copy.deepcopy(model), cpu_inputs, args, "float32")
    model, inputs = _on_device(model, cpu_inputs, args, args.dtype)
    reference = Reference(model32, model, inputs32, inputs, args.dtype)
    del model32
    layout = "csr" if pattern == "element" else "bsr"
    names = [key.removesuffix(".weight") for key in masks]
    model, how = to_sparse_layout(model, names, layout, (BSR_BLOCK, BSR_BLOCK))
    swapped = sum(value == layout for value in how.values())
    return {**_end_to_end(model, inputs, args, reference), "sparse_layers": swapped}


def record_layer_inputs(
    model: nn.Module, inputs: tuple, names: list[str]
) -> dict[str, torch.Tensor]:
    """The input each named layer sees in one forward pass."""
    recorded: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, arguments, name=name: recorded.setdefault(name, arguments[0].detach())
        )
        for name in names
    ]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return recorded


def _layers(model_name, model, inputs, names, sparsity, args, result) -> None:
    """Per layer, once per distinct shape: the layers suite's measurement of the pruned layer
    on its recorded input (dense and each compiler kernel; graphs on a GPU)."""
    recorded = record_layer_inputs(model, inputs, names)
    seen: dict[tuple, str] = {}
    for name in names:
        module = model.get_submodule(name)
        if name not in recorded or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        x = recorded[name]
        extra = (
            (module.stride, module.padding, module.dilation)
            if isinstance(module, nn.Conv2d)
            else ()
        )
        signature = (type(module).__name__, tuple(module.weight.shape), tuple(x.shape), *extra)
        record = {"model": model_name, "variant": "layers", "layer": name, "sparsity": sparsity}
        if signature in seen:
            result.add({**record, "same_as": seen[signature]})
            continue
        seen[signature] = name
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        # x is an inference tensor: a clone outside inference mode can be saved by the kernels
        with torch.inference_mode(False):
            module32 = nn.Sequential(copy.deepcopy(module)).float()
            x32 = x.float().clone()
        try:
            measured = measure_module(kind, module32, x32, dtype=args.dtype,
                                      runs=args.layer_runs, device=args.device)  # fmt: skip
            record.update(kind=kind, weight_shape=list(module.weight.shape), **measured)
        except Exception as failure:  # noqa: BLE001 (record it and go on with the next layer)
            record["error"] = f"{type(failure).__name__}: {failure}"
        result.add(record)


def _on_device(model: nn.Module, cpu_inputs: tuple, args, dtype: str) -> tuple:
    model = model.to(device=args.device, dtype=DTYPES[dtype]).eval()
    moved = tuple(
        t.to(device=args.device, dtype=DTYPES[dtype] if t.is_floating_point() else t.dtype)
        for t in cpu_inputs
    )
    return model, moved


def run_model(name: str, args: argparse.Namespace, result: ResultFile) -> None:
    """Every variant of one model, end to end and per layer, recorded as it goes."""
    import groupsparse as gs

    base, cpu_inputs = build(name, batch=args.batch)
    backend = "cuda" if args.device == "cuda" else "cpu"
    gpu = args.device == "cuda"

    def record(variant: str, sparsity: float | None, measure: Callable, *arguments: Any) -> None:
        """Run ``measure(*arguments)`` and record its values, or its error."""
        if variant not in args.variants or (variant in GPU_ONLY and not gpu):
            return
        started = time.time()
        try:
            values, error = measure(*arguments), None
        except Exception as failure:  # noqa: BLE001 (a variant that cannot run is a result)
            if args.verbose:
                traceback.print_exc()
            values, error = {}, f"{type(failure).__name__}: {failure}"
        shown = f"{values['ms']:.3f} ms" if values else error
        print(f"  {name:10s} {variant:26s} s={sparsity}  {shown}  [{time.time() - started:.0f}s]",
              flush=True)  # fmt: skip
        result.add({"model": name, "variant": variant, "sparsity": sparsity, "error": error,
                    **values})  # fmt: skip

    dense32, inputs32 = _on_device(copy.deepcopy(base), cpu_inputs, args, "float32")
    dense, inputs = _on_device(copy.deepcopy(base), cpu_inputs, args, args.dtype)
    reference = Reference(dense32, dense, inputs32, inputs, args.dtype)
    del dense32
    record("dense", None, _end_to_end, dense, inputs, args, reference)
    record("dense-compile", None, _compiled, dense, inputs, args, reference, None)
    record("dense-compile-graph", None, _compiled, dense, inputs, args, reference,
           "reduce-overhead")  # fmt: skip
    record("dense-graph", None, _dense_graph, gs, dense, inputs, args)
    if any(t.dim() == 4 for t in inputs):
        record("dense-nhwc-graph", None, _nhwc_graph, dense, inputs, args)
    record("2:4", 0.5, _two_four, gs, base, cpu_inputs, args)

    for sparsity in args.sparsities:
        grouped = copy.deepcopy(base)
        masks = prune_keeping_scale(grouped, sparsity, args.group_size)
        grouped32, _ = _on_device(copy.deepcopy(grouped), cpu_inputs, args, "float32")
        grouped, _ = _on_device(grouped, cpu_inputs, args, args.dtype)
        masked = Reference(grouped32, grouped, inputs32, inputs, args.dtype)
        del grouped32

        compiled = functools.partial(_compile_sparse, gs, grouped, inputs, args, masked, backend)
        record("groupsparse", sparsity, compiled)
        record("groupsparse-graph", sparsity, functools.partial(compiled, cuda_graph=True))
        record("groupsparse-compile", sparsity, _groupsparse_compile, grouped, inputs, args,
               masked, False)  # fmt: skip
        record("groupsparse-compile-graph", sparsity, _groupsparse_compile, grouped, inputs,
               args, masked, True)  # fmt: skip
        record("loop", sparsity, functools.partial(compiled, kernel="loop", decide="always"))
        if "layers" in args.variants:
            names = [key.removesuffix(".weight") for key in masks]
            _layers(name, grouped, inputs, names, sparsity, args, result)
        del grouped, masked
        record("csr", sparsity, _sparse_format, gs, base, cpu_inputs, "element", sparsity, args)
        record("bsr", sparsity, _sparse_format, gs, base, cpu_inputs, "block", sparsity, args)
        if gpu:
            torch.cuda.empty_cache()
    # last: max-autotune's compile can take minutes, and a device call's time limit would
    # otherwise cut the group-sparse variants
    record("dense-max-autotune", None, _compiled, dense, inputs, args, reference, "max-autotune")


def measure_ceilings(args: argparse.Namespace) -> dict[str, float]:
    """The device's measured dense GEMM rate and device-to-device copy bandwidth."""
    size = 8192 if args.device == "cuda" else 512
    a = torch.randn(size, size, device=args.device).to(DTYPES[args.dtype])
    b = torch.randn(size, size, device=args.device).to(DTYPES[args.dtype])
    gemm_ms = alone(lambda: a @ b, args.min_run_time).median_ms
    source = torch.randn(256 * 2**20 // 4 if args.device == "cuda" else 2**20, device=args.device)
    target = torch.empty_like(source)
    copy_ms = alone(lambda: target.copy_(source), args.min_run_time).median_ms
    return {
        "gemm_size": size,
        "dense_gemm_tflops": 2 * size**3 / gemm_ms / 1e9,
        "copy_gbps": 2 * source.numel() * 4 / copy_ms / 1e6,
    }


def run_tests(folder: Path) -> dict[str, Any]:
    """pytest tests/cuda; its log beside the results."""
    command = [sys.executable, "-m", "pytest", "tests/cuda", "-q", "-p", "no:cacheprovider"]
    print("$", " ".join(command), flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    (folder / "tests_cuda.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    print(summary, flush=True)
    return {"returncode": done.returncode, "summary": summary, "seconds": time.time() - started}


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """End to end: one row per model and variant, ms at each sparsity (dense rows: one)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record.get("variant") in (None, "layers"):
            continue
        row = rows.setdefault((record["model"], record["variant"]),
                              {"model": record["model"], "variant": record["variant"]})  # fmt: skip
        key = "ms" if record["sparsity"] is None else f"ms at {record['sparsity']:.0%}"
        row[key] = record["ms"] if "ms" in record else f"error: {record['error'][:60]}"
        if record.get("check", {}).get("passed") is False:
            row["check"] = "FAILED"
    return list(rows.values())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma list (default: %(default)s)"
    )
    parser.add_argument("--sparsities", type=lambda text: tuple(map(float, text.split(","))),
                        default=SPARSITIES, help="comma list (default 0.5,0.75,0.9)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--dtype", choices=list(DTYPES), help="default float16 (dry run: float32)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma list of what to measure (default all)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each first")
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds torch.utils.benchmark times each variant for")  # fmt: skip
    parser.add_argument("--layer-runs", type=int, default=20,
                        help="calls per variant in the per-layer measurement")  # fmt: skip
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms per shape, for every variant")  # fmt: skip
    parser.add_argument("--run-tests", action="store_true", help="pytest tests/cuda first")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the harness on the CPU: small models, batch 2, float32")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="print failed variants' tracebacks")
    parser.add_argument("--out", type=Path, help="results folder (default: by machine)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    args.models = tuple(m for m in args.models.split(",") if m)
    args.variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if args.dry_run:
        if args.models == MODELS:
            args.models = DRY_RUN_MODELS
        args.batch, args.min_run_time, args.layer_runs = min(args.batch, 2), 0.05, 2
        args.device, args.dtype = "cpu", args.dtype or "float32"
    else:
        args.device, args.dtype = "cuda", args.dtype or "float16"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu: no CUDA GPU here; use --dry-run to check the harness on the CPU")
        return 2
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    settings = {
        key: getattr(args, key)
        for key in ("models", "sparsities", "batch", "group_size", "dtype", "variants", "warmup",
                    "min_run_time", "layer_runs", "cudnn_benchmark", "dry_run", "device")
    }  # fmt: skip
    settings["timing"] = "benchmarks.timing.alone (torch.utils.benchmark, CUDA synchronized)"
    result = ResultFile("gpu", argv, settings, threads=torch.get_num_threads(),
                        device=args.device, out=args.out, quick=args.dry_run)  # fmt: skip
    print(f"gpu: {', '.join(args.models)} on {args.device}; writing {result.path}", flush=True)
    if args.run_tests:
        result.data["tests"] = run_tests(result.folder)
    result.data["ceilings"] = measure_ceilings(args)
    result.save()
    print("ceilings:", result.data["ceilings"], flush=True)
    for name in args.models:
        print(f"== {name}", flush=True)
        try:
            run_model(name, args, result)
        except Exception as failure:  # noqa: BLE001 (recorded; the next model runs)
            traceback.print_exc()
            result.add({"model": name, "error": f"{type(failure).__name__}: {failure}"})
    rows = summary(result.records)
    path = result.finish(rows, "\n".join(markdown_table(rows)) + "\n")
    print(f"wrote {path}")
    tests = result.data.get("tests")
    if tests and tests["returncode"] != 0:
        print(f"gpu: tests/cuda FAILED ({tests['summary']}); see tests_cuda.log")
        return 1
    return 0
