"""benchmarks/vs_inductor.py: issue 20's record built from a gpu suite result (here a small
hand-made one in the suite's format): rows against each Inductor baseline that ran, per-layer
rates from CUDA-graph replays and the compile report's kept FLOPs, group-wise against 2:4."""

from __future__ import annotations

import json

import pytest

from benchmarks import vs_inductor


def _stats(ms: float, graph_ms: float | None = None) -> dict:
    stats = {"median_ms": ms, "q1_ms": ms, "q3_ms": ms, "min_ms": ms, "max_ms": ms, "runs": 3}
    return stats | ({"graph": {"median_ms": graph_ms}} if graph_ms is not None else {})


def _result() -> dict:
    def model(variant, sparsity, ms, **extra):
        return {"model": "bert-base", "variant": variant, "sparsity": sparsity, "error": None,
                **_stats(ms), **extra}  # fmt: skip

    report = [{"name": "encoder.0.fc", "flops_sparse": 2 * 10**9, "flops_dense": 8 * 10**9}]
    return {
        "suite": "gpu",
        "machine": {"gpu": {"name": "NVIDIA H200"}, "torch": "2.13.0"},
        "provenance": {"commit": "abc1234", "dirty": False, "command": "python -m benchmarks gpu"},
        "settings": {"group_size": 64, "dtype": "float16", "batch": 32},
        "records": [
            model("dense", None, 10.0),
            model("dense-graph", None, 9.0),
            model("dense-max-autotune", None, 6.0),
            {**model("dense-compile", None, 0.0), "error": "RuntimeError: no compiler"},
            model("groupsparse", 0.75, 5.0, report=report),
            model("groupsparse-graph", 0.75, 4.0, report=report),
            model("2:4", 0.5, 7.5),
            {"model": "bert-base", "variant": "layers", "layer": "encoder.0.fc", "sparsity": 0.75,
             "variants": {"dense": _stats(0.5, 0.4), "kernel:grouped": _stats(0.2, 0.01)}},
        ],
    }  # fmt: skip


def test_rows_kernels_and_two_four_from_a_gpu_result():
    record = vs_inductor.build([_result()])
    assert (record["card"], record["torch"], record["commit"]) == (
        "NVIDIA H200",
        "2.13.0",
        "abc1234",
    )
    # two of our variants x the one Inductor baseline that ran (dense-compile failed)
    assert [(r["variant"], r["inductor_mode"]) for r in record["rows"]] == [
        ("groupsparse", "max-autotune+cudagraphs"),
        ("groupsparse-graph", "max-autotune+cudagraphs"),
    ]
    row = record["rows"][1]
    assert (row["ours_ms"], row["inductor_ms"], row["eager_graph_ms"]) == (4.0, 6.0, 9.0)
    assert (row["group_size"], row["dtype"], row["batch"], row["sparsity"]) == (
        64,
        "float16",
        32,
        0.75,
    )
    (kernel,) = record["kernels"]
    assert (kernel["ours_ms"], kernel["cublas_dense_ms"]) == (0.01, 0.4)  # the graph replays
    assert kernel["tflops_kept"] == pytest.approx(2e9 / 1e-5 / 1e12)  # 200 TFLOP/s
    assert record["two_four"] == [
        {"layer": "bert-base (whole model: every linear layer)", "ours_75_ms": 5.0,
         "two_four_50_ms": 7.5}
    ]  # fmt: skip


def test_the_command_writes_beside_the_result(tmp_path):
    source = tmp_path / "gpu.json"
    source.write_text(json.dumps(_result()))
    assert vs_inductor.main([str(source)]) == 0
    written = json.loads((tmp_path / "vs_inductor.json").read_text())
    assert len(written["rows"]) == 2 and written["sources"] == ["python -m benchmarks gpu"]


def test_other_suites_are_refused():
    with pytest.raises(ValueError, match="not a gpu suite result"):
        vs_inductor.build([{**_result(), "suite": "models"}])
    with pytest.raises(ValueError, match="at least one"):
        vs_inductor.build([])
