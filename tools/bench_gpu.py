"""The GPU benchmark of issue 5, in one command.

    python tools/bench_gpu.py --out bench/results/<card>/

On a GPU machine with no network it installs nothing. It runs ``pytest tests/cuda``, measures
the card's dense GEMM rate and copy bandwidth, then times per layer and end to end (VGG-16 and
ResNet-50 at batch 32, 224x224; BERT-base at batch 32, 128 tokens; ViT-B/16 at batch 32;
float16) at sparsity 0.5, 0.75 and 0.9:

    dense            the unpruned model (cuDNN / cuBLAS), eager
    dense-compile    the same under torch.compile (Inductor)
    dense-compile-graph  torch.compile(mode="reduce-overhead"): Inductor with CUDA graphs
    dense-graph      the same replayed from a CUDA graph
    dense-nhwc-graph   the same, channels_last (CNNs only: cuDNN's fast half-precision layout)
    csr              element-wise pruning, torch.sparse CSR (cuSPARSE); convs as im2col + SpMM
    bsr              block-wise pruning (16x16), torch.sparse BSR; convs as im2col + SpMM
    2:4              2:4 on the linear layers, torch.sparse.to_sparse_semi_structured (50% only)
    loop             group-wise, one gather and one GEMM per group (compile_sparse kernel="loop")
    groupsparse      group-wise, compile_sparse(..., backend="cuda")
    groupsparse-graph  compile_sparse(..., cuda_graph=True): layers chosen by GPU time, the model
                       replayed from CUDA graphs
    groupsparse-compile  torch.compile(backend="groupsparse"): the group-sparse layers
                       rewritten, the rest compiled by Inductor (against dense-compile)
    groupsparse-compile-graph  the same with options={"cudagraphs": True}: layers decided by
                       GPU time, Inductor's CUDA graphs (against dense-compile-graph)

Timing: CUDA events around each call, the median of ``--runs`` calls after ``--warmup``.
Results go to ``<out>/results.json`` (updated after every step, merged with what is already
there, so models can be run in separate calls), ``<out>/end_to_end.png``,
``<out>/layers.png`` and ``<out>/tests_cuda.log``.

On this workplace's lent GPU machines (no network, python 3.12, torch with CUDA 13,
cuda-bindings but no nvmath-python): download the missing wheels here once, into an ignored
folder that travels with ``carry``::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl nvmath-python==1.0.0 cuda-pathfinder==1.9.1

then, per call (carry ``.whl``; one model per call keeps each under the 10-minute limit;
results.json merges across calls when the folder's earlier files are in the working tree)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
    PYTHONUNBUFFERED=1 python3 tools/bench_gpu.py --out bench/results/h100 --models vgg16
    cp bench/results/h100/* $OUT/

``tools/gpu_lease.sh`` does all of that in one call (with ``tools/gpu_kernels.py`` and the
tests, each under its own time limit); it is how bench/results/nvidia-h200/ was made.

``--dry-run`` runs the same harness on this machine's CPU with two small models, batch 2,
float32 and two timed runs (no GPU variants), to check the script itself; ``--plot-only``
redraws the plots from an existing results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing
sys.path.insert(
    0, str(REPO / "tools")
)  # tools/baselines.py: the CSR / BSR layers, shared with bench.py

from baselines import to_sparse_layout

MODELS = ("vgg16", "resnet50", "bert-base", "vit-b16")
DRY_RUN_MODELS = ("small-cnn", "tiny-bert")
SPARSITIES = (0.5, 0.75, 0.9)
GROUP_SIZE = 32
BSR_BLOCK = 16
VARIANTS = (
    "dense", "dense-compile", "dense-compile-graph", "dense-graph", "dense-nhwc-graph",
    "csr", "bsr", "2:4", "loop",
    "groupsparse", "groupsparse-graph", "groupsparse-compile", "groupsparse-compile-graph",
)  # fmt: skip


def _groupsparse() -> Any:
    """The package, or a message saying how to make it importable."""
    try:
        import groupsparse
        from groupsparse.models import build_model  # noqa: F401 (checked here, used later)
    except ImportError as error:
        raise SystemExit(
            f"bench_gpu: cannot import groupsparse ({error}); run from the repository root or "
            "`pip install -e .`"
        ) from error
    if not hasattr(groupsparse, "compile_sparse"):
        raise SystemExit("bench_gpu: this groupsparse has no compile_sparse yet")
    return groupsparse


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


class Timer:
    """Median milliseconds of a call: CUDA events on a GPU, the host clock on the CPU."""

    def __init__(self, device: torch.device, runs: int, warmup: int) -> None:
        self.device, self.runs, self.warmup = device, runs, warmup

    def median_ms(self, call: Callable[[], Any]) -> float:
        with torch.inference_mode():
            for _ in range(self.warmup):
                call()
            if self.device.type != "cuda":
                times = []
                for _ in range(self.runs):
                    start = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - start) * 1e3)
                return statistics.median(times)
            pairs = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(self.runs)
            ]
            for start, end in pairs:
                start.record()
                call()
                end.record()
            torch.cuda.synchronize()
            return statistics.median(start.elapsed_time(end) for start, end in pairs)


def graphed(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` captured in a CUDA graph (groupsparse's capture: warm-up on a side stream);
    returns replay."""
    from groupsparse.timing import capture_cuda_graph

    with torch.inference_mode():
        return capture_cuda_graph(call, warmup=3)[0].replay


# ---------------------------------------------------------------------------------------------
# Baselines: torch.sparse layers that replace pruned conv / linear layers
# ---------------------------------------------------------------------------------------------


def _replace(
    model: nn.Module, names: list[str], make: Callable[[nn.Module], nn.Module | None]
) -> int:
    """Swap each named layer for ``make(layer)``; a layer it refuses (None) stays as it is
    (pruned, computed densely). Returns how many were swapped."""
    swapped = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = make(getattr(parent, child))
        if replacement is not None:
            setattr(parent, child, replacement)
            swapped += 1
    return swapped


def _semi_structured(module: nn.Module) -> nn.Module | None:
    from torch.sparse import to_sparse_semi_structured

    rows, columns = module.weight.shape
    if rows % 64 or columns % 64:
        return None  # cuSPARSELt / CUTLASS need multiples of 64 here
    module.weight = nn.Parameter(
        to_sparse_semi_structured(module.weight.detach()), requires_grad=False
    )
    return module


# ---------------------------------------------------------------------------------------------
# Per-layer kernels of the group-wise layers (the runtime called directly)
# ---------------------------------------------------------------------------------------------


def pack_groups(matrix: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pruned (M, K) matrix as the runtime's (groups, G, k) weight and (groups, k) columns;
    groups that keep fewer columns than the largest are padded with zero-weight columns."""
    rows, total = matrix.shape
    groups = -(-rows // group_size)
    padded = torch.zeros(groups * group_size, total, dtype=matrix.dtype, device=matrix.device)
    padded[:rows] = matrix
    blocks = padded.view(groups, group_size, total)
    kept = blocks.ne(0).any(dim=1)  # (groups, K)
    width = max(1, int(kept.sum(dim=1).max()))
    # kept columns first (in order), then the unused ones as padding
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :width]
    columns = order.sort(dim=1).values
    weight = torch.gather(blocks, 2, columns[:, None, :].expand(groups, group_size, width))
    return weight.contiguous(), columns.contiguous()


def _geometry(conv: nn.Conv2d) -> tuple[int, ...]:
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    return (kh, kw, sh, sw, ph, ph, pw, pw, dh, dw)


def _runtime(device: torch.device) -> Any:
    if device.type == "cuda":
        from groupsparse.runtime import cuda as runtime
    else:
        from groupsparse.runtime import cpu as runtime
    return runtime


def layer_calls(
    module: nn.Module, x: torch.Tensor, group_size: int, device: torch.device
) -> tuple[dict[str, Callable[[], Any]], int]:
    """{variant: call} of one pruned layer on its recorded input, and its kept FLOPs."""
    from groupsparse.runtime.cpu import conv_output_size

    runtime = _runtime(device)
    matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
    weight, columns = pack_groups(matrix, group_size)
    groups, rows, kept = weight.shape
    bias = None
    if module.bias is not None:
        bias = torch.zeros(groups * rows, dtype=x.dtype, device=device)
        bias[: module.bias.numel()] = module.bias.detach()
    if isinstance(module, nn.Conv2d):
        geometry = _geometry(module)
        out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
        flops = 2 * x.shape[0] * out_h * out_w * groups * rows * kept
        calls = {
            "groupsparse": lambda: runtime.grouped_conv2d(x, weight, columns, bias, geometry),
            "two-step": lambda: runtime.grouped_conv2d_torch(x, weight, columns, bias, geometry),
            "loop": lambda: runtime.loop_conv2d(x, weight, columns, bias, geometry),
        }
    else:
        flops = 2 * (x.numel() // x.shape[-1]) * groups * rows * kept
        calls = {
            "groupsparse": lambda: runtime.grouped_linear(x, weight, columns, bias),
            "two-step": lambda: runtime.grouped_linear_torch(x, weight, columns, bias),
            "loop": lambda: runtime.loop_linear(x, weight, columns, bias),
        }
    return calls, flops


def record_layer_inputs(
    model: nn.Module, inputs: tuple, names: list[str]
) -> dict[str, torch.Tensor]:
    """The input each named layer sees in one forward pass."""
    recorded: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)
        hooks.append(
            module.register_forward_pre_hook(
                lambda _m, args, name=name: recorded.setdefault(name, args[0].detach())
            )
        )
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return recorded


def _layer_signature(module: nn.Module, x: torch.Tensor) -> tuple:
    extra = (
        (module.stride, module.padding, module.dilation) if isinstance(module, nn.Conv2d) else ()
    )
    return (type(module).__name__, tuple(module.weight.shape), tuple(x.shape), *extra)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Results:
    """results.json: environment, tests, ceilings, and flat timing records; saved on every add."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"records": []}
        if path.exists():
            self.data = json.loads(path.read_text())

    def start_model(
        self, model: str, variants: tuple[str, ...], sparsities: tuple[float, ...]
    ) -> None:
        """Forget earlier records of ``model`` that this run measures again (per-layer records
        count as the variant "layers")."""

        def measured_again(record: dict) -> bool:
            variant = record.get("variant", "layers")
            sparsity = record.get("sparsity")
            return (
                record["model"] == model
                and variant in variants
                and (sparsity is None or sparsity in sparsities or variant == "2:4")
            )

        self.data["records"] = [r for r in self.data["records"] if not measured_again(r)]

    def add(self, **record: Any) -> None:
        self.data["records"].append(record)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def _output(result: Any) -> torch.Tensor:
    """The tensor a model returns (transformers' outputs hold it first)."""
    if isinstance(result, torch.Tensor):
        return result
    if hasattr(result, "last_hidden_state"):
        return result.last_hidden_state
    if isinstance(result, (tuple, list)):
        return _output(result[0])
    raise TypeError(f"cannot find the output tensor in a {type(result).__name__}")


def _relative_error(out: Any, reference: Any) -> float:
    out, reference = _output(out).double(), _output(reference).double()
    return ((out - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _prepare(model: nn.Module, inputs: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    model = model.to(device=device, dtype=dtype).eval()
    moved = tuple(
        t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in inputs
    )
    return model, moved


def run_model(name: str, args: argparse.Namespace, results: Results, gs: Any) -> None:
    """Every variant of one model, end to end and per layer, recorded as it goes."""
    from groupsparse.models import build_model

    device, dtype = torch.device(args.device), args.dtype
    timer = Timer(device, args.runs, args.warmup)
    results.start_model(name, args.variants, args.sparsities)
    base, cpu_inputs = build_model(name, batch=args.batch)
    backend = "cuda" if device.type == "cuda" else "cpu"

    def record(variant: str, sparsity: float | None, measure: Callable, *arguments: Any) -> None:
        """Run ``measure(*arguments)`` and record its values, or its error."""
        if variant not in args.variants:
            return
        started = time.time()
        values, error = _attempt(measure, *arguments, verbose=args.verbose)
        shown = f"{values['ms']:.3f} ms" if values else error
        print(f"  {name:10s} {variant:18s} s={sparsity}  {shown}  [{time.time() - started:.0f}s]",
              flush=True)  # fmt: skip
        results.add(model=name, variant=variant, sparsity=sparsity, error=error, **(values or {}))

    dense, inputs = _prepare(copy.deepcopy(base), cpu_inputs, device, dtype)
    record("dense", None, _end_to_end, dense, inputs, timer)
    if args.dry_run:
        print("  (dry run: no torch.compile, no CUDA graphs, no 2:4)")
    else:
        if "dense-compile" in args.variants:
            record("dense-compile", None, _end_to_end, torch.compile(dense), inputs, timer)
        if "dense-compile-graph" in args.variants:
            torch._dynamo.reset()
            record("dense-compile-graph", None, _end_to_end,
                   torch.compile(dense, mode="reduce-overhead"), inputs, timer)  # fmt: skip
        record("dense-graph", None, _dense_graphed_end_to_end, gs, dense, inputs, timer)
        if any(t.dim() == 4 for t in inputs):
            record("dense-nhwc-graph", None, _channels_last_graphed_end_to_end, dense, inputs,
                   timer)  # fmt: skip
        record("2:4", 0.5, _two_four_end_to_end, base, cpu_inputs, args, timer, gs)
    del dense

    for sparsity in args.sparsities:
        grouped = copy.deepcopy(base)
        masks = _prune_keeping_scale(gs, grouped, sparsity, args.group_size)
        grouped, _ = _prepare(grouped, cpu_inputs, device, dtype)
        with torch.inference_mode():
            reference = grouped(*inputs)
        fast, error = None, "not measured"
        if "groupsparse" in args.variants:
            fast, error = _attempt(
                gs.compile_sparse, grouped, inputs, backend=backend, verbose=args.verbose
            )
        if fast is None and error == "not measured":
            pass
        elif fast is None:
            results.add(model=name, variant="groupsparse", sparsity=sparsity,
                        error=f"compile_sparse: {error}")  # fmt: skip
        else:
            record(
                "groupsparse", sparsity, _end_to_end, fast, inputs, timer, reference, fast.report
            )
            del fast
        if not args.dry_run:
            record("groupsparse-graph", sparsity, _graph_compiled_end_to_end, gs, grouped, inputs,
                   timer, reference)  # fmt: skip
            record("groupsparse-compile", sparsity, _inductor_compiled_end_to_end, grouped,
                   inputs, timer, reference)  # fmt: skip
            record("groupsparse-compile-graph", sparsity, _inductor_compiled_end_to_end,
                   grouped, inputs, timer, reference, True)  # fmt: skip
        record("loop", sparsity, _loop_end_to_end, gs, grouped, inputs, backend, timer, reference)
        if "layers" in args.variants:
            _time_layers(name, grouped, inputs, _layer_names(masks), sparsity, args, timer, results)
        del grouped, reference
        record("csr", sparsity, _sparse_end_to_end, base, cpu_inputs, "element", {}, sparsity, args,
               timer, gs)  # fmt: skip
        record("bsr", sparsity, _sparse_end_to_end, base, cpu_inputs, "block",
               {"block": (BSR_BLOCK, BSR_BLOCK)}, sparsity, args, timer, gs)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _attempt(function: Callable, *arguments: Any, verbose: bool, **keywords: Any) -> tuple:
    """(function's result, None), or (None, the error as text): a variant that torch or
    groupsparse cannot run here is a result too, and the run goes on."""
    try:
        return function(*arguments, **keywords), None
    except Exception as failure:  # noqa: BLE001 (any failure of one variant is recorded)
        if verbose:
            traceback.print_exc()
        return None, f"{type(failure).__name__}: {failure}"


def _prune_keeping_scale(
    gs: Any, model: nn.Module, sparsity: float, group_size: int | None
) -> dict[str, torch.Tensor]:
    """Group-prune ``model`` in place, then scale each pruned weight back to its dense norm,
    so that a layer's outputs keep about the dense layer's scale: without it, random VGG-16
    (no batch norm) at 90% loses a factor of ~2 per layer and its half-precision output
    underflows to zero, which leaves the relative error meaningless (1.0 on the H100). The
    weights' values change no timing. Returns the masks."""
    with torch.no_grad():
        norms = {key: p.norm() for key, p in model.named_parameters() if p.dim() > 1}
        masks = gs.prune(model, pattern="group", sparsity=sparsity, group_size=group_size)
        for key in masks:
            weight = model.get_parameter(key)
            pruned = weight.norm()
            if pruned > 0:
                weight.mul_(norms[key] / pruned)
    return masks


def _layer_names(masks: dict[str, torch.Tensor]) -> list[str]:
    return [key.removesuffix(".weight") for key in masks]


def _non_linear(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def _end_to_end(model, inputs, timer, reference=None, report=None) -> dict[str, Any]:
    values: dict[str, Any] = {"ms": timer.median_ms(functools.partial(model, *inputs))}
    if reference is not None:
        with torch.inference_mode():
            values["relative_error"] = _relative_error(model(*inputs), reference)
    if report is not None:
        values["rewritten_layers"] = len(report.rewritten)
        values["layers"] = len(report)
        values["flops_dense"] = report.flops_dense
        values["flops_sparse"] = report.flops_sparse
        values["report"] = report.to_dicts()  # each layer's decision and its reason
    return values


def _graphed_end_to_end(model, inputs, timer) -> dict[str, Any]:
    return {"ms": timer.median_ms(graphed(functools.partial(model, *inputs)))}


def _channels_last_graphed_end_to_end(model, inputs, timer) -> dict[str, Any]:
    """The dense model with its weights and image input channels_last (NHWC, cuDNN's fast
    layout for half precision; Inductor picks it too), replayed from a CUDA graph."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    inputs = tuple(
        t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs
    )
    return _graphed_end_to_end(model, inputs, timer)


def _graph_compiled_end_to_end(gs, model, inputs, timer, reference) -> dict[str, Any]:
    """compile_sparse(cuda_graph=True): layers decided by their kernels' GPU time, the model
    replayed from a CUDA graph (input copy and output clone included in the time)."""
    fast = gs.compile_sparse(model, inputs, backend="cuda", cuda_graph=True)
    return _end_to_end(fast, inputs, timer, reference, fast.report)


def _inductor_compiled_end_to_end(
    model, inputs, timer, reference, cudagraphs: bool = False
) -> dict[str, Any]:
    """torch.compile(backend="groupsparse"): layers rewritten as in compile_sparse, the rest
    of each Dynamo graph compiled by Inductor (the comparison is dense-compile); with
    ``cudagraphs``, Inductor's CUDA graphs and layers decided by GPU time (the comparison is
    dense-compile-graph)."""
    torch._dynamo.reset()
    reports: list = []
    options = {"report": reports, "cudagraphs": cudagraphs}
    fast = torch.compile(model, backend="groupsparse", options=options)
    with torch.inference_mode():
        fast(*inputs)  # compiles, timing its layers on these inputs
    from groupsparse.compiler.report import Report

    merged = Report([row for report in reports for row in report], capture="dynamo")
    values = _end_to_end(fast, inputs, timer, reference, merged)  # every graph's layers
    torch._dynamo.reset()
    return values


def _dense_graphed_end_to_end(gs, model, inputs, timer) -> dict[str, Any]:
    """The dense model from a CUDA graph; where eager code cannot be captured (transformers'
    mask building copies a host scalar), the graph groupsparse captures with every layer
    kept dense (``min_speedup=inf``: every layer is planned and timed, none can win):
    the same computation, as groupsparse-graph runs it."""
    try:
        return _graphed_end_to_end(model, inputs, timer)
    except RuntimeError as error:
        if "during CUDA graph capture" not in str(error):
            raise
    torch.cuda.synchronize()
    captured = gs.compile_sparse(model, inputs, min_speedup=float("inf"))
    return {**_graphed_end_to_end(captured, inputs, timer), "captured": "compile_sparse, all dense"}


def _loop_end_to_end(gs, model, inputs, backend, timer, reference) -> dict[str, Any]:
    loop = gs.compile_sparse(model, inputs, backend=backend, kernel="loop", decide="always")
    return _end_to_end(loop, inputs, timer, reference)


def _two_four_end_to_end(base, cpu_inputs, args, timer, gs) -> dict[str, Any]:
    model = copy.deepcopy(base)
    masks = gs.prune(model, pattern="2:4", exclude=_non_linear(model))
    model, inputs = _prepare(model, cpu_inputs, torch.device(args.device), args.dtype)
    with torch.inference_mode():
        reference = model(*inputs)
    swapped = _replace(model, _layer_names(masks), _semi_structured)
    return {**_end_to_end(model, inputs, timer, reference), "sparse_layers": swapped}


def _sparse_end_to_end(base, cpu_inputs, pattern, pattern_args, sparsity, args, timer, gs):
    model = copy.deepcopy(base)
    masks = gs.prune(model, pattern=pattern, sparsity=sparsity, **pattern_args)
    model, inputs = _prepare(model, cpu_inputs, torch.device(args.device), args.dtype)
    with torch.inference_mode():
        reference = model(*inputs)
    layout = "csr" if pattern == "element" else "bsr"
    model, how = to_sparse_layout(model, _layer_names(masks), layout, (BSR_BLOCK, BSR_BLOCK))
    swapped = sum(value == layout for value in how.values())
    return {**_end_to_end(model, inputs, timer, reference), "sparse_layers": swapped}


def _time_layers(model_name, model, inputs, names, sparsity, args, timer, results) -> None:
    """Per layer, once per distinct shape: dense, groupsparse, loop (and their CUDA graphs)."""
    device = torch.device(args.device)
    recorded = record_layer_inputs(model, inputs, names)
    seen: dict[tuple, str] = {}
    for name in names:
        module = model.get_submodule(name)
        if name not in recorded or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        x = recorded[name]
        signature = _layer_signature(module, x)
        if signature in seen:
            results.add(model=model_name, layer=name, same_as=seen[signature], sparsity=sparsity)
            continue
        seen[signature] = name
        values: dict[str, Any] = {"kind": type(module).__name__, "weight_shape": list(module.weight.shape),
                                  "input_shape": list(x.shape)}  # fmt: skip
        try:
            calls, flops = layer_calls(module, x, args.group_size, device)
            calls["dense"] = lambda module=module, x=x: module(x)
            values["kept_flops"] = flops
            with torch.inference_mode():
                expected = module(x)
                for variant in ("groupsparse", "two-step"):  # the kernels pad rows to groups*G
                    out = calls[variant]().narrow(1 if expected.dim() == 4 else -1, 0,
                                                  expected.shape[1 if expected.dim() == 4 else -1])
                    values[f"{variant}_relative_error"] = _relative_error(out, expected)
            for variant, call in calls.items():
                values[f"{variant}_ms"] = timer.median_ms(call)
            if device.type == "cuda":
                values["groupsparse-graph_ms"] = timer.median_ms(graphed(calls["groupsparse"]))
            values["groupsparse_tflops"] = flops / values["groupsparse_ms"] / 1e9
        except Exception as failure:  # noqa: BLE001 (record it and go on with the next layer)
            values["error"] = f"{type(failure).__name__}: {failure}"
        results.add(model=model_name, layer=name, sparsity=sparsity, **values)


def measure_ceilings(device: torch.device, dtype: torch.dtype, timer: Timer) -> dict[str, float]:
    """The card's measured dense GEMM rate and device-to-device copy bandwidth."""
    size = 8192 if device.type == "cuda" else 512
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    gemm_ms = timer.median_ms(lambda: a @ b)
    source = torch.randn(256 * 2**20 // 4 if device.type == "cuda" else 2**20, device=device)
    target = torch.empty_like(source)
    copy_ms = timer.median_ms(lambda: target.copy_(source))
    return {
        "gemm_size": size,
        "dense_gemm_tflops": 2 * size**3 / gemm_ms / 1e9,
        "copy_gbps": 2 * source.numel() * 4 / copy_ms / 1e6,
    }


def run_tests(out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "tests/cuda", "-q", "-p", "no:cacheprovider"]
    print("$", " ".join(command), flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    (out / "tests_cuda.log").write_text(result.stdout + result.stderr)
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    print(summary, flush=True)
    return {"returncode": result.returncode, "summary": summary, "seconds": time.time() - started}


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "machine": platform.machine(),
    }  # fmt: skip
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name, multiprocessors=properties.multi_processor_count,
            memory_gib=round(properties.total_memory / 2**30, 1),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
        )  # fmt: skip
        from groupsparse.runtime.cuda import cuda_available

        info["cuda_backend"] = cuda_available()
    for package in (
        "cuda-bindings",
        "cuda-core",
        "nvmath-python",
        "nvidia-cuda-nvrtc",
        "nvidia-cublas",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[package] = version(package)
    return info


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_gpu: matplotlib is missing (pip install groupsparse[viz]); no plots")
        return []
    records = results["records"]
    end_to_end = [r for r in records if "variant" in r and r.get("ms")]
    models = list(dict.fromkeys(r["model"] for r in end_to_end))
    written = []
    if models:
        figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        for axis, model in zip(axes[0], models, strict=True):
            mine = [r for r in end_to_end if r["model"] == model]
            dense = next((r["ms"] for r in mine if r["variant"] == "dense"), None)
            if dense is None:
                continue
            for variant in VARIANTS:
                points = sorted((r["sparsity"], dense / r["ms"]) for r in mine
                                if r["variant"] == variant and r["sparsity"] is not None)  # fmt: skip
                flat = [r for r in mine if r["variant"] == variant and r["sparsity"] is None]
                color = f"C{VARIANTS.index(variant)}"
                if points:
                    axis.plot(*zip(*points, strict=True), marker="o", label=variant, color=color)
                elif flat:
                    axis.axhline(dense / flat[0]["ms"], linestyle="--", linewidth=1, label=variant,
                                 color=color)  # fmt: skip
            axis.axhline(1.0, color="black", linewidth=0.5)
            axis.set_title(f"{model}: speedup over dense eager")
            axis.set_xlabel("sparsity")
            axis.set_yscale("log", base=2)
        axes[0][-1].legend(fontsize=7)
        figure.tight_layout()
        written.append(out / "end_to_end.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    layers = [r for r in records if "layer" in r and r.get("groupsparse_ms")]
    layer_models = list(dict.fromkeys(r["model"] for r in layers))
    if layer_models:
        figure, axes = plt.subplots(len(layer_models), 1, figsize=(12, 3.5 * len(layer_models)),
                                    squeeze=False)  # fmt: skip
        for axis, model in zip(axes[:, 0], layer_models, strict=True):
            mine = [r for r in layers if r["model"] == model]
            names = list(dict.fromkeys(r["layer"] for r in mine))
            sparsities = sorted({r["sparsity"] for r in mine})
            width = 0.8 / max(1, len(sparsities))
            for index, sparsity in enumerate(sparsities):
                speedups = [next((r["dense_ms"] / r["groupsparse_ms"] for r in mine
                                  if r["layer"] == n and r["sparsity"] == sparsity), math.nan)
                            for n in names]  # fmt: skip
                axis.bar([i + index * width for i in range(len(names))], speedups, width,
                         label=f"sparsity {sparsity}")  # fmt: skip
            axis.axhline(1.0, color="black", linewidth=0.5)
            axis.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            axis.set_title(f"{model}: per-layer speedup of groupsparse over dense")
            axis.legend(fontsize=7)
        figure.tight_layout()
        written.append(out / "layers.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    return written


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/bench_gpu.py",
        description="groupsparse's GPU benchmark (issue 5): tests/cuda, then per-layer and "
        "end-to-end timings of dense, torch.sparse, 2:4, loop and groupsparse.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder, e.g. bench/results/h100"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma list (default {','.join(MODELS)})"
    )
    parser.add_argument(
        "--sparsities", type=_floats, default=SPARSITIES, help="default 0.5,0.75,0.9"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=GROUP_SIZE)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--skip-tests", action="store_true", help="do not run pytest tests/cuda first"
    )
    parser.add_argument(
        "--variants", default=",".join((*VARIANTS, "layers")),
        help="comma list of what to measure (default all: %(default)s); records of the others "
        "already in results.json are kept",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="check the harness on the CPU: small models, batch 2, float32")  # fmt: skip
    parser.add_argument("--plot-only", action="store_true", help="redraw plots from results.json")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms per shape, for every variant "
                        "(torch.backends.cudnn.benchmark; recorded in settings)")  # fmt: skip
    parser.add_argument(
        "--verbose", action="store_true", help="print tracebacks of failed variants"
    )
    args = parser.parse_args(argv)
    args.models = tuple(m for m in args.models.split(",") if m)
    args.variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(args.variants) - {*VARIANTS, "layers"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {(*VARIANTS, 'layers')}")
    if args.dry_run:
        if args.models == MODELS:
            args.models = DRY_RUN_MODELS
        args.batch, args.runs, args.warmup, args.skip_tests = min(args.batch, 2), 2, 1, True
        args.device, args.dtype = "cpu", torch.float32
    else:
        args.device, args.dtype = "cuda", torch.float16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if args.plot_only:
        for path in plot(results.data, args.out):
            print("wrote", path)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; use --dry-run to check the harness on the CPU")
        return 2
    gs = _groupsparse()
    device = torch.device(args.device)
    results.data["environment"] = environment(device)
    results.data["settings"] = {
        "batch": args.batch, "group_size": args.group_size, "runs": args.runs,
        "warmup": args.warmup, "dtype": str(args.dtype), "dry_run": args.dry_run,
        "timing": "CUDA events, median" if device.type == "cuda" else "host clock, median",
        "cudnn_benchmark": args.cudnn_benchmark,
    }  # fmt: skip
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print(json.dumps(results.data["environment"], indent=1), flush=True)
    if not args.skip_tests:
        results.data["tests"] = run_tests(args.out)
    results.data["ceilings"] = measure_ceilings(
        device, args.dtype, Timer(device, args.runs, args.warmup)
    )
    results.save()
    print("ceilings:", results.data["ceilings"], flush=True)
    for name in args.models:
        print(f"== {name}", flush=True)
        run_model(name, args, results, gs)
        if device.type == "cuda":
            from groupsparse.runtime.cuda import clear_caches

            clear_caches()  # the next model's layers have other shapes
    for path in plot(results.data, args.out):
        print("wrote", path)
    tests = results.data.get("tests")
    if tests and tests["returncode"] != 0:
        print(f"bench_gpu: tests/cuda FAILED ({tests['summary']}); see tests_cuda.log")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
