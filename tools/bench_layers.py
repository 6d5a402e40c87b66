"""Per-layer CPU benchmark of the group-sparse kernels against dense eager (issue 3's goals).

    python tools/bench_layers.py                 # every layer, G = 32/64/128, 5 sparsities
    python tools/bench_layers.py --quick         # G = 64 at 75% and 90% only, fewer runs
    python tools/bench_layers.py --json out.json --threads 2 --batch 1

For each layer, group size G and sparsity s it builds a balanced group mask (every group of G
output rows keeps the same number of columns of the (M, K) view, chosen at random per group
with torch.randperm), checks each kernel's output against F.conv2d / F.linear with the masked
dense weight (max relative error under 1e-4), then times in turns, in one process:

    dense   F.conv2d / F.linear with the masked dense weight (eager)
    ours    groupsparse.runtime.cpu.grouped_conv2d / grouped_linear (the kernel itself: the
            native fused kernel where it builds)
    torch   the same with use_native=False: the torch-ops kernel (index_select + torch.bmm)
    loop    loop_conv2d / loop_linear: the earlier per-group implementation

Times are medians of many interleaved runs after warm-up. The kernels are timed directly,
not through gs.compile_sparse: at 0% and 30% the compiler would keep a layer dense when the
kernel does not win, so those rows show the kernel alone. "bound" is the FLOP bound of the
ratio dense/ours (all columns / kept columns). "busy" is how much of the machine other
processes used while the row was timed (0% = quiet, 100% = every core), so that noisy rows
can be told apart.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from groupsparse.runtime import cpu

__all__ = ["LAYERS", "Layer", "balanced_columns", "main"]

TOLERANCE = 1e-4
GROUP_SIZES = (32, 64, 128)
SPARSITIES = (0.0, 0.3, 0.5, 0.75, 0.9)
# issue 3, group size 64: dense/ours at 75% and 90%, loop/ours at both
GOALS = {0.75: 3.0, 0.9: 6.0}
LOOP_GOAL = 1.2


@dataclass(frozen=True)
class Layer:
    """A conv (kind "conv": in, out channels, 3x3 pad 1 on size x size) or a linear over
    ``size`` tokens (kind "linear": in, out features)."""

    name: str
    kind: str
    in_features: int
    out_features: int
    size: int


LAYERS = (
    Layer("vgg16 conv 256->256 3x3 56x56", "conv", 256, 256, 56),
    Layer("conv 512->512 3x3 14x14", "conv", 512, 512, 14),
    Layer("bert linear 768->3072 x128", "linear", 768, 3072, 128),
    Layer("bert linear 3072->768 x128", "linear", 3072, 768, 128),
    Layer("bert linear 768->768 x128", "linear", 768, 768, 128),
    # not in issue 3's list: VGG-16's first classifier linear at batch 1 (one token)
    Layer("vgg16 linear 25088->4096 x1", "linear", 25088, 4096, 1),
)
GEOMETRY_3X3 = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)


def balanced_columns(
    rows: int, columns: int, group_size: int, sparsity: float, generator: torch.Generator
) -> torch.Tensor:
    """(groups, kept): each group's kept columns of the (M, K) view, sorted, chosen at random."""
    kept = columns - round(columns * sparsity)
    return torch.stack(
        [
            torch.randperm(columns, generator=generator)[:kept].sort().values
            for _ in range(rows // group_size)
        ]
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_busy() -> float:
    """CPU seconds used so far by the whole machine (all processes, all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def time_interleaved(
    functions: dict[str, Callable[[], object]],
    runs: int,
    min_sample_ms: float = 2.0,
    clock: str = "wall",
) -> tuple[dict[str, float], float]:
    """Median ms of each function, timed in turns; and the share of the machine's cores that
    other processes used meanwhile. Fast functions repeat within a sample (min_sample_ms).

    clock "cpu" times this process's CPU time instead of wall time: with one thread it shows
    the work done, much less disturbed by other processes than wall time on a loaded machine
    (with several threads it would count threads spinning while they wait)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    repeats = {}
    for name, function in functions.items():
        for _ in range(2):
            function()
        start = time.perf_counter()
        function()
        once = (time.perf_counter() - start) * 1e3
        repeats[name] = max(1, int(min_sample_ms / max(once, 1e-3)))
    times: dict[str, list[float]] = {name: [] for name in functions}
    has_stat = os.path.exists("/proc/stat")
    busy0, own0, wall0 = (_machine_busy() if has_stat else 0.0), time.process_time(), time.time()
    for _ in range(runs):
        for name, function in functions.items():
            count = repeats[name]
            start = now()
            for _ in range(count):
                function()
            times[name].append((now() - start) * 1e3 / count)
    other = 0.0
    if has_stat:
        others = (_machine_busy() - busy0) - (time.process_time() - own0)
        other = max(0.0, others / ((time.time() - wall0) * (os.cpu_count() or 1)))
    return {name: statistics.median(values) for name, values in times.items()}, other


def _case(
    layer: Layer,
    group_size: int,
    sparsity: float,
    batch: int,
    channels_last: bool,
    generator: torch.Generator,
):
    """(functions to time, kept fraction) for one layer, group size and sparsity."""
    if layer.kind == "conv":
        rows, cols = layer.out_features, layer.in_features * 9
    else:
        rows, cols = layer.out_features, layer.in_features
    columns = balanced_columns(rows, cols, group_size, sparsity, generator)
    groups, kept = columns.shape
    dense = torch.randn(rows, cols, generator=generator) / cols**0.5
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[torch.arange(rows)[:, None], columns.repeat_interleave(group_size, 0)] = True
    dense = dense * mask
    packed = (
        dense.view(groups, group_size, cols)
        .gather(2, columns[:, None, :].expand(groups, group_size, kept))
        .contiguous()
    )
    bias = torch.randn(rows, generator=generator)
    if layer.kind == "conv":
        x = torch.randn(batch, layer.in_features, layer.size, layer.size, generator=generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight4 = dense.view(rows, layer.in_features, 3, 3)
        functions = {
            "dense": lambda: F.conv2d(x, weight4, bias, padding=1),
            "ours": lambda: cpu.grouped_conv2d(x, packed, columns, bias, GEOMETRY_3X3),
            "torch": lambda: cpu.grouped_conv2d(
                x, packed, columns, bias, GEOMETRY_3X3, use_native=False
            ),
            "loop": lambda: cpu.loop_conv2d(x, packed, columns, bias, GEOMETRY_3X3),
        }
    else:
        x = torch.randn(batch, layer.size, layer.in_features, generator=generator)
        packed = cpu.k_major(packed)  # as the compiler's linear plans hold it
        functions = {
            "dense": lambda: F.linear(x, dense, bias),
            "ours": lambda: cpu.grouped_linear(x, packed, columns, bias),
            "torch": lambda: cpu.grouped_linear(x, packed, columns, bias, use_native=False),
            "loop": lambda: cpu.loop_linear(x, packed, columns, bias),
        }
    return functions, kept / cols


@dataclass
class Row:
    layer: str
    group_size: int
    sparsity: float
    dense_ms: float
    ours_ms: float
    torch_ms: float
    loop_ms: float
    dense_over_ours: float
    loop_over_ours: float
    torch_over_ours: float
    flop_bound: float
    max_rel_error: float
    busy: float


def run_case(
    layer: Layer,
    group_size: int,
    sparsity: float,
    *,
    batch: int,
    runs: int,
    channels_last: bool,
    seed: int,
    clock: str = "wall",
) -> Row:
    generator = torch.Generator().manual_seed(seed)
    functions, kept_fraction = _case(layer, group_size, sparsity, batch, channels_last, generator)
    with torch.no_grad():
        reference = functions["dense"]()
        error = 0.0
        for name in ("ours", "torch", "loop"):
            out = functions[name]()
            if out.shape != reference.shape:
                raise AssertionError(
                    f"{layer.name} G={group_size} s={sparsity}: {name} gave "
                    f"shape {tuple(out.shape)}, dense {tuple(reference.shape)}"
                )
            rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
            if not rel < TOLERANCE:
                raise AssertionError(
                    f"{layer.name} G={group_size} s={sparsity}: {name} differs "
                    f"from dense by {rel:.2e} (max relative error)"
                )
            error = max(error, rel)
        medians, busy = time_interleaved(functions, runs, clock=clock)
    return Row(
        layer.name,
        group_size,
        sparsity,
        medians["dense"],
        medians["ours"],
        medians["torch"],
        medians["loop"],
        medians["dense"] / medians["ours"],
        medians["loop"] / medians["ours"],
        medians["torch"] / medians["ours"],
        1.0 / kept_fraction,
        error,
        busy,
    )


def _goal(row: Row) -> str:
    if row.group_size != 64 or row.sparsity not in GOALS:
        return ""
    met = row.dense_over_ours >= GOALS[row.sparsity] and row.loop_over_ours >= LOOP_GOAL
    return f"goal {GOALS[row.sparsity]:.0f}x/{LOOP_GOAL}x: " + ("met" if met else "MISSED")


# (name, channels, size, kernel, stride, padding): VGG-16's five max-pools, ResNet-50's one
POOLS = [
    *(
        (f"vgg16 pool {c}x{h}x{h}", c, h, 2, 2, 0)
        for c, h in ((64, 224), (128, 112), (256, 56), (512, 28), (512, 14))
    ),
    ("resnet50 pool 64x112x112", 64, 112, 3, 2, 1),
]


def time_pools(runs: int, batch: int) -> int:
    """torch's max_pool2d on NCHW (what dense eager runs), on channels_last, and
    groupsparse.max_pool2d (what rewrite_pool puts in compiled graphs), side by side."""
    import torch.nn.functional as F

    from groupsparse.runtime import ops

    print(f"max-pools, NCHW float32, batch {batch}, {torch.get_num_threads()} threads; median ms")
    print(f"{'pool':28s} {'torch':>8s} {'torch CL':>9s} {'ours':>8s} {'torch/ours':>10s}")
    for name, channels, size, kernel, stride, padding in POOLS:
        x = torch.randn(batch, channels, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        pair = ([kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False)
        ours = ops.max_pool2d(x, *pair)
        if not torch.equal(ours, F.max_pool2d(x, kernel, stride, padding)):
            raise SystemExit(f"{name}: groupsparse.max_pool2d differs from torch's")
        torch_args = (kernel, stride, padding)
        medians, _ = time_interleaved(
            {
                "torch": lambda x=x, a=torch_args: F.max_pool2d(x, *a),
                "cl": lambda x=x_cl, a=torch_args: F.max_pool2d(x, *a),
                "ours": lambda x=x, a=pair: ops.max_pool2d(x, *a),
            },
            runs,
        )
        print(
            f"{name:28s} {medians['torch']:8.3f} {medians['cl']:9.3f} {medians['ours']:8.3f} "
            f"{medians['torch'] / medians['ours']:9.1f}x"
        )
    return 0


def time_conv_tiles(runs: int, seed: int) -> int:
    """The native conv kernel on 3x3 convs of several image sizes with each tile width
    (``cpu._tile_pixels`` picks one per image), interleaved in one process."""
    from groupsparse.runtime import cpu

    generator = torch.Generator().manual_seed(seed)
    geometry = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    print(f"native conv kernel, 3x3, G=64, {torch.get_num_threads()} threads; median ms")
    print(f"{'conv':22s} {'sparsity':>8s} {'tile 24':>8s} {'tile 16':>8s} {'picked':>7s}")
    chosen = cpu._tile_pixels
    try:
        for channels, size in ((512, 7), (512, 14), (256, 28), (256, 56)):
            for sparsity in (0.75, 0.9):
                columns = balanced_columns(channels, channels * 9, 64, sparsity, generator)
                weight = torch.randn(columns.shape[0], 64, columns.shape[1], generator=generator)
                x = torch.randn(1, channels, size, size, generator=generator)
                want = cpu.grouped_conv2d(x, weight, columns, None, geometry, use_native=False)
                calls = {}
                for tile in (24, 16):

                    def call(tile=tile, x=x, weight=weight, columns=columns):
                        cpu._tile_pixels = lambda pixels: tile
                        return cpu.grouped_conv2d(x, weight, columns, None, geometry)

                    torch.testing.assert_close(call(), want, rtol=1e-4, atol=1e-3)
                    calls[tile] = call
                medians, _ = time_interleaved(calls, runs)
                cpu._tile_pixels = chosen
                grid = cpu._ConvGrid(x.shape, geometry, wide=True)
                print(
                    f"{channels}->{channels} {size}x{size}".ljust(22)
                    + f" {sparsity:8.2f} {medians[24]:8.3f} {medians[16]:8.3f} "
                    f"{chosen(grid.pixels):7d}"
                )
    finally:
        cpu._tile_pixels = chosen
    return 0


GATHER_MODES = {  # name: (cpu.UNPADDED_GATHER, cpu.FLAT_TILE)
    "auto": ("auto", None), "rows": ("rows", None), "flat16": ("flat", 16),
    "flat24": ("flat", 24), "copy": ("off", None),
}  # fmt: skip


def time_gather_pad(runs: int, seed: int) -> int:
    """The native conv, 3x3 "same", padding in its gather or reading a padded copy, whole
    calls interleaved in one process: ``auto`` is the default choice; ``rows`` pads in the gather where a wide-grid row is one
    tile (14x14: 16-pixel rows, 2 junk columns each) and reads a padded copy elsewhere;
    ``flat16`` / ``flat24`` pad in the gather on tiles of 16 / 24 output pixels running across
    rows (no junk); ``copy`` always reads a padded copy."""
    from groupsparse.runtime import cpu

    generator = torch.Generator().manual_seed(seed)
    geometry = GEOMETRY_3X3
    saved = cpu.UNPADDED_GATHER, cpu.FLAT_TILE
    print(f"native conv, 3x3, G=64, {torch.get_num_threads()} threads; median ms a call")
    print(f"{'conv':22s} {'sparsity':>8s} " + " ".join(f"{m:>8s}" for m in GATHER_MODES))
    try:
        for channels, size in ((512, 7), (256, 14), (512, 14), (512, 28), (256, 56)):
            for sparsity in (0.75, 0.9):
                columns = balanced_columns(channels, channels * 9, 64, sparsity, generator)
                x = torch.randn(1, channels, size, size, generator=generator)
                weight = torch.randn(columns.shape[0], 64, columns.shape[1], generator=generator)
                calls = {}
                for mode, (unpadded, tile) in GATHER_MODES.items():
                    cpu.UNPADDED_GATHER, cpu.FLAT_TILE = unpadded, tile
                    # each its own weight tensor: its own prepared call, under this mode
                    calls[mode] = functools.partial(
                        cpu.grouped_conv2d, x, weight.clone(), columns, None, geometry
                    )
                    calls[mode]()
                reference = calls["copy"]()
                for mode, call in calls.items():
                    torch.testing.assert_close(call(), reference, rtol=1e-5, atol=1e-5)
                medians, _ = time_interleaved(calls, runs)
                print(
                    f"{channels}->{channels} {size}x{size}".ljust(22) + f" {sparsity:8.2f} "
                    + " ".join(f"{medians[m]:8.3f}" for m in GATHER_MODES)
                )
    finally:
        cpu.UNPADDED_GATHER, cpu.FLAT_TILE = saved
    return 0


def time_kernel_choice(runs: int, seed: int) -> int:
    """The two CPU kernels (native, torch-ops) on ResNet-50's expanding 1x1 convs at 90%, bare
    (how the compiler times a layer, before its epilogue is fused) and with the bias,
    shortcut and ReLU the fuse passes give it (how the compiled model runs it), whole calls
    interleaved in one process: why the torch-ops kernel must win by a margin bare; then
    ResNet-50 at 90% compiled with and without that margin."""
    from groupsparse.runtime import cpu

    generator = torch.Generator().manual_seed(seed)
    geometry = (1, 1, 1, 1, 0, 0, 0, 0, 1, 1)
    print(f"1x1 convs at 90%, G=64, {torch.get_num_threads()} threads; median ms a call")
    print(f"{'conv':24s} {'bare: native':>12s} {'torch-ops':>10s} {'fused: native':>14s} "
          f"{'torch-ops':>10s}")  # fmt: skip
    for channels, size in ((64, 56), (128, 28), (256, 14), (512, 7)):
        out_channels = 4 * channels
        columns = balanced_columns(out_channels, channels, 64, 0.9, generator)
        weight = cpu.k_major(
            torch.randn(columns.shape[0], 64, columns.shape[1], generator=generator)
        )
        bias = torch.randn(out_channels, generator=generator)
        x = torch.randn(1, channels, size, size, generator=generator)
        shortcut = torch.randn(1, out_channels, size, size, generator=generator)
        calls = {}
        for native in (True, False):
            calls[("bare", native)] = functools.partial(
                cpu.grouped_conv2d, x, weight, columns, bias, geometry, False, use_native=native
            )
            calls[("fused", native)] = functools.partial(
                cpu.grouped_conv2d, x, weight, columns, bias, geometry, True,
                use_native=native, residual=shortcut,
            )  # fmt: skip
        torch.testing.assert_close(
            calls[("fused", True)](), calls[("fused", False)](), rtol=1e-5, atol=1e-5
        )
        medians, _ = time_interleaved(calls, runs)
        print(
            f"{channels}->{out_channels} {size}x{size}".ljust(24)
            + f" {medians[('bare', True)]:12.3f} {medians[('bare', False)]:10.3f}"
            f" {medians[('fused', True)]:14.3f} {medians[('fused', False)]:10.3f}"
        )
    _time_kernel_choice_end_to_end(runs)
    return 0


def _time_kernel_choice_end_to_end(runs: int) -> None:
    """ResNet-50 (group-wise 90%, G=64, first conv and classifier dense) compiled with and
    without plan.FUSED_EPILOGUE_EDGE (1.0: the faster kernel bare wins), timed in turns."""
    import copy
    import importlib

    import groupsparse as gs
    from groupsparse.models import build_model

    plan = importlib.import_module("groupsparse.passes.plan")
    torch.manual_seed(0)
    model, example = build_model("resnet50", batch=1)
    gs.prune(model.eval(), pattern="group", sparsity=0.9, group_size=64, exclude="first_last")
    saved, compiled = plan.FUSED_EPILOGUE_EDGE, {}
    try:
        for edge in (1.0, saved):
            plan.FUSED_EPILOGUE_EDGE = edge
            compiled[edge] = gs.compile_sparse(copy.deepcopy(model), example)
    finally:
        plan.FUSED_EPILOGUE_EDGE = saved
    calls = {edge: functools.partial(fast, *example) for edge, fast in compiled.items()}
    with torch.no_grad():
        medians, _ = time_interleaved(calls, max(5, runs // 3))
    for edge, fast in compiled.items():
        on_torch_ops = sum(row.kernel == "grouped_torch" for row in fast.report)
        print(f"ResNet-50 at 90%, edge {edge:.2f}: {on_torch_ops} layers on torch-ops, "
              f"{medians[edge]:.1f} ms")  # fmt: skip


def time_pad(runs: int, batch: int) -> int:
    """The zero padding in front of the native conv kernel: torch ops (what ran before) and
    native.pad2d, interleaved, on the activations of the layers above."""
    from groupsparse.runtime import cpu

    geometry = GEOMETRY_3X3
    print(
        f"zero padding (1 each side), NCHW float32, batch {batch}, "
        f"{torch.get_num_threads()} threads; median ms"
    )
    print(f"{'activation':18s} {'torch':>8s} {'native':>8s} {'torch/native':>12s}")
    for channels, size in ((64, 224), (256, 56), (512, 28), (512, 14)):
        x = torch.randn(batch, channels, size, size)
        if not torch.equal(cpu._padded_flat(x, geometry), cpu._padded_flat(x, geometry, True)):
            raise SystemExit(f"{channels}x{size}x{size}: native padding differs from torch's")
        medians, _ = time_interleaved(
            {
                "torch": lambda x=x: cpu._padded_flat(x, geometry),
                "native": lambda x=x: cpu._padded_flat(x, geometry, True),
            },
            runs,
        )
        print(
            f"{f'{channels}x{size}x{size}':18s} {medians['torch']:8.3f} {medians['native']:8.3f} "
            f"{medians['torch'] / medians['native']:11.2f}x"
        )
    return 0


def time_op_overhead(runs: int) -> int:
    """What a call costs beyond the kernel: a tiny 1x1 conv (8 -> 32 channels, 10x10) run by
    groupsparse::conv2d (torch.library.Library, as registered), by the same kernel wrapped
    as a torch.library.custom_op (how the ops were registered before; the same Python body,
    checks included), and the kernel called directly; then a tiny linear (4 tokens, 16 -> 32)
    through groupsparse::linear and called directly."""
    from groupsparse.runtime import cpu, ops

    body = ops._conv_kernel("conv2d", "grouped_conv2d")  # the op's own Python, checks included

    @torch.library.custom_op("groupsparse_bench::conv2d", mutates_args=())
    def as_custom_op(
        x: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        return body(x, weight, columns, bias, [1, 1, 1, 1, 0, 0, 0, 0, 1, 1], False, 32, 16)

    as_custom_op.register_autograd(lambda ctx, grad: None)
    x = torch.randn(1, 16, 10, 10)
    columns = torch.stack([torch.arange(8), torch.arange(8, 16)])
    weight, bias = torch.randn(2, 16, 8), torch.randn(32)
    geometry = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    op = torch.ops.groupsparse.conv2d.default
    calls = {
        "groupsparse::conv2d": lambda: op(x, weight, columns, bias, geometry, False, 32, 16),
        "as custom_op": lambda: as_custom_op(x, weight, columns, bias),
        "kernel called directly": lambda: cpu.grouped_conv2d(
            x, weight, columns, bias, tuple(geometry)
        ),
    }
    tokens = torch.randn(4, 16)
    linear_weight = cpu.k_major(weight)  # as plans hold a linear's weights
    linear = torch.ops.groupsparse.linear.default
    calls["groupsparse::linear"] = lambda: linear(
        tokens, linear_weight, columns, bias, False, 32, 16
    )
    calls["linear called directly"] = lambda: cpu.grouped_linear(
        tokens, linear_weight, columns, bias
    )
    with torch.no_grad():
        medians, _ = time_interleaved(calls, runs, min_sample_ms=20.0)
    print(
        f"a tiny conv and linear, {torch.get_num_threads()} threads, under no_grad; median us a call"
    )
    for label, ms in medians.items():
        print(f"  {label:24s} {ms * 1e3:8.1f} us")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="G=64 at 75%% and 90%% only, fewer runs"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows and settings here")
    parser.add_argument("--runs", type=int, help="timed runs per function (default 30, quick 12)")
    parser.add_argument("--batch", type=int, default=1, help="images / sequences per call")
    parser.add_argument("--channels-last", action="store_true", help="conv inputs channels_last")
    parser.add_argument("--layers", help="comma-separated substrings of layer names to keep")
    parser.add_argument("--group-sizes", help="comma-separated, default 32,64,128")
    parser.add_argument("--sparsities", help="comma-separated, default 0,0.3,0.5,0.75,0.9")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or this process's CPU time (only with "
        "--threads 1: steadier on a machine that other work keeps busy)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pools", action="store_true", help="time the max-pools of VGG-16 and ResNet-50 instead"
    )
    parser.add_argument(
        "--conv-tiles",
        action="store_true",
        help="instead: the native conv kernel with 24- and 16-pixel tiles, same process",
    )
    parser.add_argument(
        "--pad",
        action="store_true",
        help="instead: the conv input's zero padding by torch ops and by native.pad2d",
    )
    parser.add_argument(
        "--gather-pad",
        action="store_true",
        help="instead: the native conv (3x3, 7x7 to 56x56) padding in its gather, rows or flat, and from a padded copy",
    )
    parser.add_argument(
        "--kernel-choice",
        action="store_true",
        help="instead: native and torch-ops CPU kernels on ResNet-50's 1x1 convs, bare and "
        "with the fused shortcut and ReLU",
    )
    parser.add_argument(
        "--op-overhead",
        action="store_true",
        help="instead: a tiny conv through groupsparse::conv2d, through the same kernel as a "
        "torch.library.custom_op, and called directly",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (CPU time of several threads counts spinning)")

    torch.set_num_threads(args.threads)
    if args.pools:
        return time_pools(args.runs or 30, args.batch)
    if args.conv_tiles:
        return time_conv_tiles(args.runs or 21, args.seed)
    if args.op_overhead:
        return time_op_overhead(args.runs or 21)
    if args.pad:
        return time_pad(args.runs or 30, args.batch)
    if args.gather_pad:
        return time_gather_pad(args.runs or 31, args.seed)
    if args.kernel_choice:
        return time_kernel_choice(args.runs or 31, args.seed)
    group_sizes = (64,) if args.quick else GROUP_SIZES
    sparsities = (0.75, 0.9) if args.quick else SPARSITIES
    if args.group_sizes:
        group_sizes = tuple(int(v) for v in args.group_sizes.split(","))
    if args.sparsities:
        sparsities = tuple(float(v) for v in args.sparsities.split(","))
    runs = args.runs or (12 if args.quick else 30)
    layers = [
        layer
        for layer in LAYERS
        if not args.layers or any(key in layer.name for key in args.layers.split(","))
    ]

    print(
        f"groupsparse CPU kernels vs dense eager: {args.threads} threads, batch {args.batch}, "
        f"float32, torch {torch.__version__}, {_cpu_name()} ({os.cpu_count()} cpus)"
    )
    print(
        "kernels timed directly (not through gs.compile_sparse, which keeps a layer dense "
        f"where it would not win); medians of interleaved runs, {args.clock} clock"
    )
    header = (
        f"{'layer':32s} {'G':>4s} {'sparsity':>8s} {'dense ms':>9s} {'ours ms':>9s} "
        f"{'torch ms':>9s} {'loop ms':>9s} {'dense/ours':>10s} {'loop/ours':>9s} "
        f"{'torch/ours':>10s} {'bound':>6s} {'busy':>5s}"
    )
    print(header)
    rows: list[Row] = []
    for layer in layers:
        for group_size in group_sizes:
            for sparsity in sparsities:
                row = run_case(
                    layer,
                    group_size,
                    sparsity,
                    batch=args.batch,
                    runs=runs,
                    channels_last=args.channels_last,
                    seed=args.seed,
                    clock=args.clock,
                )
                rows.append(row)
                print(
                    f"{row.layer:32s} {row.group_size:4d} {row.sparsity:8.2f} "
                    f"{row.dense_ms:9.3f} {row.ours_ms:9.3f} {row.torch_ms:9.3f} "
                    f"{row.loop_ms:9.3f} {row.dense_over_ours:9.2f}x {row.loop_over_ours:8.2f}x "
                    f"{row.torch_over_ours:9.2f}x "
                    f"{row.flop_bound:5.1f}x {row.busy:5.0%}  {_goal(row)}",
                    flush=True,
                )
    if args.json:
        settings = {
            "threads": args.threads,
            "batch": args.batch,
            "runs": runs,
            "channels_last": args.channels_last,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "timed": "kernels directly",
            "clock": args.clock,
            "seed": args.seed,
        }
        args.json.write_text(
            json.dumps({"settings": settings, "rows": [asdict(row) for row in rows]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
