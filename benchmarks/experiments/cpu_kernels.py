"""The CPU kernels called directly (their ops, no module around them), side by side in one
process with the dense layer in the same precision: float32 and bfloat16, and optionally the
AVX2-intrinsics kernel the project had before the brgemm rewrite, rebuilt from git history.

    python -m benchmarks.experiments.cpu_kernels [--threads 1] [--layers conv,lin]
        [--old-commit da0bf10]

Each layer at G=64, 75% and 90% (kept columns drawn at random per group), timed in turns over
``--runs`` rounds (the order reversed every other round), medians in ms:

    dense32 / dense16   F.conv2d / F.linear, float32 / bfloat16, the masked dense weight
    new32 / new16       the registry's grouped CPU kernel (C++ on oneDNN's brgemm)
    old32               (--old-commit) that commit's native kernel: its runtime/cpu.py and
                        csrc/ extracted from git into a temporary package and built there

What the decision records cite (docs/decisions/cpu-kernels.md) came from this command.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from groupsparse.runtime import kernels
from groupsparse.runtime.geometry import ConvGeometry

REPO = Path(__file__).resolve().parents[2]
# name, kind, in channels/features, out, spatial size or tokens
LAYERS = (
    ("conv 256->256 3x3 56x56", "conv3", 256, 256, 56),
    ("conv 512->512 3x3 14x14", "conv3", 512, 512, 14),
    ("conv 128->512 1x1 28x28", "conv1", 128, 512, 28),
    ("linear 768->3072 x128", "linear", 768, 3072, 128),
    ("linear 3072->768 x128", "linear", 3072, 768, 128),
    ("linear 768->768 x128", "linear", 768, 768, 128),
    ("linear 25088->4096 x1", "linear", 25088, 4096, 1),
    ("linear 2048->8192 x1", "linear", 2048, 8192, 1),
)


def _old_runtime(commit: str, directory: Path):
    """That commit's runtime/cpu.py + native.py + csrc/, as an importable package."""
    package = directory / "old_runtime"
    (package / "csrc").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("cpu.py", "native.py"):
        text = subprocess.run(["git", "show", f"{commit}:groupsparse/runtime/{name}"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        (package / name).write_text(text)
    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:groupsparse/runtime/csrc"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    for name in listing.split():
        text = subprocess.run(["git", "show", f"{commit}:groupsparse/runtime/csrc/{name}"],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
        (package / "csrc" / name).write_text(text)
    sys.path.insert(0, str(directory))
    old = importlib.import_module("old_runtime.cpu")
    native = importlib.import_module("old_runtime.native")
    if native.library() is None:
        raise SystemExit(f"the old native kernel did not build: {native.status()}")
    return old


def _problem(groups: int, rows: int, columns: int, kept: int, generator: torch.Generator):
    index = torch.stack([torch.randperm(columns, generator=generator)[:kept].sort().values
                         for _ in range(groups)])  # fmt: skip
    weight = torch.randn(groups, rows, kept, generator=generator) / kept**0.5
    dense = torch.zeros(groups * rows, columns)
    for group in range(groups):
        dense[group * rows : (group + 1) * rows, index[group]] = weight[group]
    return weight, index, dense


def _timed(calls: dict, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call(), call()
        for turn in range(runs):
            order = list(calls.items())
            for name, call in order if turn % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _calls(layer, sparsity: float, old, generator: torch.Generator) -> dict:
    _, kind, width, out, size = layer
    taps = 9 if kind == "conv3" else 1
    columns = width * taps
    kept = round(columns * (1 - sparsity))
    weight, index, dense = _problem(out // 64, 64, columns, kept, generator)
    bf16 = torch.bfloat16
    if kind.startswith("conv"):
        kernel = kernels.kernel_of("grouped", "conv2d", "cpu")
        side = 3 if taps == 9 else 1
        geometry = ConvGeometry(side, side, 1, 1, *(side // 2,) * 4, 1, 1)
        x = torch.randn(1, width, size, size, generator=generator)
        filters = dense.view(out, width, side, side)
        calls = {
            "dense32": lambda: F.conv2d(x, filters, padding=side // 2),
            "new32": lambda: kernel.op(x, weight, index, None, list(geometry), False, out, width),
            "dense16": lambda: F.conv2d(x.to(bf16), filters.to(bf16), padding=side // 2),
            "new16": lambda: kernel.op(
                x.to(bf16), weight.to(bf16), index, None, list(geometry), False, out, width
            ),
        }
        if old is not None:
            calls["old32"] = lambda: old.grouped_conv2d(x, weight, index, None, tuple(geometry))
        return calls
    kernel = kernels.kernel_of("grouped", "linear", "cpu")
    x = torch.randn(size, width, generator=generator)
    packed, packed16 = kernel.prepare(weight), kernel.prepare(weight.to(bf16))
    x16, dense16 = x.to(bf16), dense.to(bf16)
    calls = {
        "dense32": lambda: F.linear(x, dense),
        "new32": lambda: kernel.op(x, packed, index, None, False, out, width),
        "dense16": lambda: F.linear(x16, dense16),
        "new16": lambda: kernel.op(x16, packed16, index, None, False, out, width),
    }
    if old is not None:
        k_major = old.k_major(weight)
        calls["old32"] = lambda: old.grouped_linear(x, k_major, index, None)
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--layers", help="comma-separated substrings of layer names")
    parser.add_argument("--sparsities", default="0.75,0.9")
    parser.add_argument("--old-commit", help="also time that commit's native AVX2 kernel")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    wanted = args.layers.split(",") if args.layers else None
    with tempfile.TemporaryDirectory() as scratch:
        old = _old_runtime(args.old_commit, Path(scratch)) if args.old_commit else None
        print(f"{args.threads} threads, torch {torch.__version__}, "
              f"{torch.backends.cpu.get_cpu_capability()}; medians of {args.runs} rounds, ms")  # fmt: skip
        for layer in LAYERS:
            if wanted and not any(w in layer[0] for w in wanted):
                continue
            for sparsity in (float(s) for s in args.sparsities.split(",")):
                t = _timed(_calls(layer, sparsity, old, generator), args.runs)
                line = f"{layer[0]:26s} {sparsity:.2f} " + " ".join(
                    f"{name} {ms:7.3f}" for name, ms in t.items()
                )
                line += f" | dense/new fp32 {t['dense32'] / t['new32']:.2f}x"
                line += f" bf16 {t['dense16'] / t['new16']:.2f}x"
                if old is not None:
                    line += f" | old/new fp32 {t['old32'] / t['new32']:.2f}x"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
