"""Per-kernel timings of group-sparse layers on a GPU: every CUDA kernel groupsparse has, on
the layer shapes that matter, against the dense layer (cuBLAS / cuDNN), in one process.

    python tools/gpu_kernels.py --out bench/results/<card>/kernels.json

Kernels timed (float16, batch 32; each also checked against the dense layer of the masked
weight, relative error in the table):

    dense      F.linear / F.conv2d of the masked weight
    dense-nhwc convs only: the same conv with input and weight channels_last (cuDNN's fast
               half-precision layout, the one Inductor picks); the table shows the fused
               kernel's speed-up against it too
    fused      cuda.grouped_linear / grouped_conv2d (Triton: rows of x^T for linears and
               1x1 convs, the wide grid for stride-1 convs on images from 14x14 up, the
               pixel gather for the rest)
    kernel     the fused kernel alone, its input already laid out (x^T for linears, the
               wide grid's shifted padded copies for 3x3 convs): fused minus kernel is
               the copy's cost
    columns    linears only: the Triton kernel that gathers x's columns in place
    pixels     convs only: the pixel-by-pixel gather Triton kernel
    two-step   gather kernel + cuBLAS (cuda.grouped_*_torch)

``--table`` prints the table of an existing JSON file (no GPU needed), with the fused
kernel's TFLOP/s on kept FLOPs and dense's on all of them. Each is timed twice: eager (CUDA events around each call, host launch cost included when it
exceeds the GPU's) and replayed from a CUDA graph (the GPU's time alone); the median of
``--runs`` calls. Needs a GPU; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_gpu import Timer, graphed  # CUDA-event medians and graph capture, shared

# (name, kind, in, out, spatial or tokens, kernel size)
LAYERS = [
    ("bert 768->3072", "linear", 768, 3072, 4096, 0),
    ("bert 3072->768", "linear", 3072, 768, 4096, 0),
    ("bert 768->768", "linear", 768, 768, 4096, 0),
    ("resnet 1x1 256->64 56", "conv", 256, 64, 56, 1),
    ("resnet 1x1 64->256 56", "conv", 64, 256, 56, 1),
    ("resnet 1x1 1024->256 14", "conv", 1024, 256, 14, 1),
    ("resnet 1x1 512->2048 7", "conv", 512, 2048, 7, 1),
    ("vgg 3x3 256 56", "conv", 256, 256, 56, 3),
    ("vgg 3x3 512 28", "conv", 512, 512, 28, 3),
    ("resnet 3x3 256 14", "conv", 256, 256, 14, 3),
]


def _kept(kind, cin, ksize, sparsity):
    """(im2col columns, kept columns per group) of a layer at ``sparsity``."""
    columns_total = cin * ksize * ksize if kind == "conv" else cin
    return columns_total, max(1, round(columns_total * (1 - sparsity)))


def _kept_flops(name, sparsity, batch):
    """The multiply-adds (x2) a group-sparse layer of LAYERS keeps at ``sparsity``."""
    _, kind, cin, cout, size, ksize = next(layer for layer in LAYERS if layer[0] == name)
    outputs = batch * size * size if kind == "conv" else size
    return 2 * outputs * cout * _kept(kind, cin, ksize, sparsity)[1]


def _row(record) -> str:
    """One record as a table line: dense time, then per kernel dense/kernel (graph replay),
    its graph / eager ms, relative error; the fused kernel's TFLOP/s on kept FLOPs."""
    dense = record["dense"].get("graph_ms")
    cells = []
    for variant in ("fused", "kernel", "columns", "pixels", "two-step"):
        value = record.get(variant)
        if value is None:
            continue
        if "error" in value:
            cells.append(f"{variant} ERR {value['error'][:80]}")
        else:
            cells.append(f"{variant} {dense / value['graph_ms']:.2f}x "
                         f"({value['graph_ms']:.3f}/{value['eager_ms']:.3f}, "
                         f"e{value['relative_error']:.0e})")  # fmt: skip
    fused = record.get("fused", {}).get("graph_ms")
    batch = record.get("batch", 32)
    for variant in ("fused", "kernel"):
        tile = record.get(variant, {}).get("tile")
        if tile:
            cells.append(f"{variant} tile {tile}")
    nhwc = record.get("dense-nhwc", {}).get("graph_ms")
    if nhwc:
        cells.append(f"dense nhwc {nhwc:.3f} ms" + (f", fused {nhwc / fused:.2f}x it" if fused else ""))
    if fused:
        flops = _kept_flops(record["layer"], record["sparsity"], batch)
        cells.append(f"fused {flops / fused / 1e9:.0f} TFLOP/s kept")
    if dense:
        cells.append(f"dense {_kept_flops(record['layer'], 0.0, batch) / dense / 1e9:.0f} TFLOP/s")
    return (f"{record['layer']:24s} G={record['G']:3d} s={record['sparsity']:.2f} "
            f"dense {dense:.3f} ms | " + " | ".join(cells))  # fmt: skip


def _problem(kind, cin, cout, size, ksize, sparsity, group_size, batch, dtype):
    columns_total, kept = _kept(kind, cin, ksize, sparsity)
    groups = cout // group_size
    columns = torch.stack(
        [torch.randperm(columns_total)[:kept].sort().values for _ in range(groups)]
    ).cuda()
    weight = (torch.randn(groups, group_size, kept, device="cuda") / kept**0.5).to(dtype)
    dense = torch.zeros(cout, columns_total, device="cuda", dtype=dtype)
    rows = torch.arange(cout, device="cuda").view(groups, group_size, 1)
    dense[rows, columns[:, None, :]] = weight
    bias = torch.randn(cout, device="cuda", dtype=dtype)
    if kind == "linear":
        x = torch.randn(size, cin, device="cuda", dtype=dtype)
        return x, weight, columns, bias, dense, None
    x = torch.randn(batch, cin, size, size, device="cuda", dtype=dtype)
    pad = ksize // 2
    geometry = (ksize, ksize, 1, 1, pad, pad, pad, pad, 1, 1)
    return x, weight, columns, bias, dense.view(cout, cin, ksize, ksize), geometry


def _calls(kind, x, weight, columns, bias, dense, geometry):
    from groupsparse.runtime import cuda, triton_fused

    if kind == "linear":
        calls = {
            "dense": lambda: F.linear(x, dense, bias),
            "fused": lambda: cuda.grouped_linear(x, weight, columns, bias),
            "two-step": lambda: cuda.grouped_linear_torch(x, weight, columns, bias),
        }
        table = cuda._RUNTIME.linear_table(columns, x.shape[-1])

        def columns_layout():
            out = torch.empty(x.shape[0], bias.numel(), device="cuda", dtype=x.dtype)
            saved, triton_fused.LINEAR_LAYOUT = triton_fused.LINEAR_LAYOUT, "columns"
            try:
                return triton_fused.fused_linear(x, weight, table, bias, False, out)
            finally:
                triton_fused.LINEAR_LAYOUT = saved

        calls["columns"] = columns_layout
        source = triton_fused.transpose(x).unsqueeze(0)  # what "fused" makes on every call
        rows_out = torch.empty(1, x.shape[0], bias.numel(), device="cuda", dtype=x.dtype)
        calls["kernel"] = lambda: triton_fused.rows_product(
            source, weight, columns, bias, False, rows_out, transposed_out=True
        )[0]
        return calls
    pad = geometry[4]
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    dense_nhwc = dense.contiguous(memory_format=torch.channels_last)
    calls = {
        "dense": lambda: F.conv2d(x, dense, bias, padding=pad),
        "dense-nhwc": lambda: F.conv2d(x_nhwc, dense_nhwc, bias, padding=pad),
        "fused": lambda: cuda.grouped_conv2d(x, weight, columns, bias, geometry),
        "two-step": lambda: cuda.grouped_conv2d_torch(x, weight, columns, bias, geometry),
    }
    table = cuda._RUNTIME.conv_table(columns, geometry, x.shape)

    def pixels():  # the pixel-by-pixel gather, against the rows / wide-grid paths
        out = torch.empty(x.shape[0], bias.numel(), *x.shape[2:], device="cuda", dtype=x.dtype)
        return triton_fused.fused_conv2d(x, weight, table, bias, geometry, False, out)

    calls["pixels"] = pixels
    plan = triton_fused.wide_plan(geometry, x.shape[2], x.shape[3])
    if ksize_of(geometry) > 1 and plan is not None:  # the wide grid's kernel without its copy
        pitch, padded_height, _ = plan
        source = triton_fused.wide_source(x, geometry, pitch, padded_height)
        source = source.view(x.shape[0], -1, source.shape[-1])
        rows, shifts = cuda._RUNTIME.wide_tables(columns, geometry, x.shape[1], pitch)
        wide_out = torch.empty(x.shape[0], bias.numel(), *x.shape[2:], device="cuda",
                               dtype=x.dtype)  # fmt: skip
        calls["kernel"] = lambda: triton_fused.wide_product(
            source, weight, rows, shifts, bias, False, wide_out, pitch
        )
    return calls


def ksize_of(geometry) -> int:
    return geometry[0] * geometry[1]


def _tile() -> str | None:
    """The tile shape the rows kernel's autotuner chose last (None without autotuning)."""
    from groupsparse.runtime import triton_fused

    best = getattr(triton_fused._rows, "best_config", None)
    return None if best is None else str(best)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/gpu_kernels.py", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sparsities", default="0.75,0.9")
    parser.add_argument("--group-sizes", default="32,64")
    parser.add_argument("--layers", default="",
                        help="comma-separated parts of layer names to time (default: all)")  # fmt: skip
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark)")  # fmt: skip
    parser.add_argument("--table", action="store_true",
                        help="print the table of an existing --out file (no GPU needed)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.table:
        for record in json.loads(args.out.read_text()):
            print(_row(record))
        return 0
    if not torch.cuda.is_available():
        print("gpu_kernels: no CUDA GPU here")
        return 2
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    timer = Timer(torch.device("cuda"), args.runs, warmup=0)  # warmed up below
    records = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = [part for part in args.layers.split(",") if part]
    for name, kind, cin, cout, size, ksize in LAYERS:
        if wanted and not any(part in name for part in wanted):
            continue
        for group_size in map(int, args.group_sizes.split(",")):
            for sparsity in map(float, args.sparsities.split(",")):
                problem = _problem(kind, cin, cout, size, ksize, sparsity, group_size, args.batch,
                                   torch.float16)  # fmt: skip
                calls = _calls(kind, *problem)
                record = {"layer": name, "G": group_size, "sparsity": sparsity,
                          "batch": args.batch, "cudnn_benchmark": args.cudnn_benchmark}  # fmt: skip
                with torch.inference_mode():
                    expected = calls["dense"]().double()
                    for variant, call in calls.items():
                        try:
                            for _ in range(3):  # compiles and autotunes
                                out = call()
                            error = ((out.double() - expected).norm() / expected.norm()).item()
                            record[variant] = {
                                "eager_ms": timer.median_ms(call),
                                "graph_ms": timer.median_ms(graphed(call)),
                                "relative_error": error,
                            }
                            if variant in ("fused", "kernel"):  # the autotuner's tile
                                record[variant]["tile"] = _tile()
                        except Exception as failure:  # noqa: BLE001 (recorded, the run goes on)
                            record[variant] = {
                                "error": f"{type(failure).__name__}: {failure}"[:300]
                            }
                records.append(record)
                args.out.write_text(json.dumps(records, indent=1))
                print(_row(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
