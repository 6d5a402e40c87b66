"""Issue 20's record, ``vs_inductor.json``, from gpu suite result files: our end-to-end times
against Inductor's dense model, our per-layer kernel rates, and group-wise against 2:4.

    python -m benchmarks vs_inductor RESULT.json [RESULT.json ...] [--out FILE]

The result files are ``python -m benchmarks gpu`` runs (``tools/gpu_lease.sh`` writes them);
the output goes beside the first of them unless ``--out`` says otherwise. Fields:

- ``card``, ``torch``, ``commit`` (of the first file: the commit measured);
- ``rows``: one per group-sparse variant, sparsity and Inductor baseline of a model,
  ``{model, sparsity, group_size, dtype, batch, variant, inductor_mode, ours_ms, inductor_ms,
  eager_graph_ms}``; ``inductor_mode`` is ``"max-autotune+cudagraphs"`` (the rows the goals
  count), ``"reduce-overhead"`` or ``"default"``; ``eager_graph_ms`` the dense eager model
  replayed from a CUDA graph;
- ``kernels``: one per distinct pruned layer, ``{layer, group_size, dtype, ours_ms,
  cublas_dense_ms, tflops_kept}``, from CUDA-graph replays where the run has them (the
  grouped kernel against the dense layer), the kept FLOPs from the model's compile report;
- ``two_four``: ``{layer, ours_75_ms, two_four_50_ms}``; the gpu suite times 2:4 on a whole
  model (every linear layer swapped), so ``layer`` names the model and both times are whole
  models: group-wise at 75% against 2:4 at 50%.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["INDUCTOR_MODES", "OURS", "build", "main"]

# our end-to-end variants of the gpu suite, and its dense Inductor variants with their modes
OURS = ("groupsparse", "groupsparse-graph", "groupsparse-compile", "groupsparse-compile-graph")
INDUCTOR_MODES = {
    "dense-max-autotune": "max-autotune+cudagraphs",
    "dense-compile-graph": "reduce-overhead",
    "dense-compile": "default",
}


def _ms(record: dict[str, Any] | None) -> float | None:
    if record is None or record.get("error"):
        return None
    return record.get("median_ms")


def _by_variant(data: dict[str, Any]) -> dict[tuple[str, str, float | None], dict[str, Any]]:
    """The end-to-end records, by (model, variant, sparsity); the per-layer ones left out."""
    return {
        (r["model"], r["variant"], r.get("sparsity")): r
        for r in data["records"]
        if r.get("variant") != "layers"
    }


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    settings = data["settings"]
    by = _by_variant(data)
    rows = []
    for (model, variant, sparsity), record in by.items():
        ours = _ms(record)
        if variant not in OURS or ours is None:
            continue
        for dense_variant, mode in INDUCTOR_MODES.items():
            inductor = _ms(by.get((model, dense_variant, None)))
            if inductor is None:
                continue
            rows.append({
                "model": model, "sparsity": sparsity, "group_size": settings["group_size"],
                "dtype": settings["dtype"], "batch": settings["batch"], "variant": variant,
                "inductor_mode": mode, "ours_ms": ours, "inductor_ms": inductor,
                "eager_graph_ms": _ms(by.get((model, "dense-graph", None))),
            })  # fmt: skip
    return rows


def _kept_flops(data: dict[str, Any]) -> dict[tuple[str, float, str], int]:
    """(model, sparsity, layer name) -> the layer's kept FLOPs, from the compile reports."""
    flops = {}
    for record in data["records"]:
        if record.get("variant") in OURS:
            for layer in record.get("report") or []:
                flops[(record["model"], record["sparsity"], layer["name"])] = layer["flops_sparse"]
    return flops


def _kernels(data: dict[str, Any]) -> list[dict[str, Any]]:
    settings = data["settings"]
    flops = _kept_flops(data)
    kernels = []
    for record in data["records"]:
        if record.get("variant") != "layers":
            continue
        variants = record.get("variants") or {}
        ours, dense = variants.get("kernel:grouped"), variants.get("dense")
        if not ours or not dense:
            continue
        # the GPU's time alone where the run replayed CUDA graphs; else the eager call's
        ours_ms = (ours.get("graph") or ours)["median_ms"]
        dense_ms = (dense.get("graph") or dense)["median_ms"]
        kept = flops.get((record["model"], record["sparsity"], record["layer"]))
        kernels.append({
            "layer": f"{record['model']} {record['layer']} at {record['sparsity']:.0%}",
            "group_size": settings["group_size"], "dtype": settings["dtype"],
            "ours_ms": ours_ms, "cublas_dense_ms": dense_ms,
            "tflops_kept": kept / (ours_ms * 1e-3) / 1e12 if kept else None,
        })  # fmt: skip
    return kernels


def _two_four(data: dict[str, Any]) -> list[dict[str, Any]]:
    by = _by_variant(data)
    pairs = []
    for (model, variant, _), record in by.items():
        if variant != "2:4" or _ms(record) is None:
            continue
        ours = _ms(by.get((model, "groupsparse", 0.75)))
        if ours is not None:
            pairs.append({
                "layer": f"{model} (whole model: every linear layer)",
                "ours_75_ms": ours, "two_four_50_ms": _ms(record),
            })  # fmt: skip
    return pairs


def build(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The record from gpu suite result files (the first names the card, torch and commit)."""
    if not results:
        raise ValueError("vs_inductor needs at least one gpu suite result file")
    for data in results:
        if data.get("suite") != "gpu":
            raise ValueError(f"not a gpu suite result: suite {data.get('suite')!r}")
    first = results[0]
    gpu = first["machine"].get("gpu") or {}
    return {
        "card": gpu.get("name") if isinstance(gpu, dict) else gpu,
        "torch": first["machine"].get("torch"),
        "commit": first["provenance"].get("commit"),
        "dirty": first["provenance"].get("dirty"),
        "sources": [data["provenance"].get("command") for data in results],
        "rows": [row for data in results for row in _rows(data)],
        "kernels": [kernel for data in results for kernel in _kernels(data)],
        "two_four": [pair for data in results for pair in _two_four(data)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="gpu suite result files (JSON)")
    parser.add_argument("--out", type=Path, help="default: vs_inductor.json beside the first")
    args = parser.parse_args(argv)
    record = build([json.loads(path.read_text()) for path in args.results])
    out = args.out or args.results[0].with_name("vs_inductor.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}: {len(record['rows'])} rows, {len(record['kernels'])} kernels, "
          f"{len(record['two_four'])} 2:4 pairs")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
