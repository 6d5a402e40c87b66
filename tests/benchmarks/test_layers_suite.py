"""benchmarks/suites/layers.py on small shapes: every compiler kernel through the public path,
checked and timed, the never-slower and speed-up goals judged, the record and its summary."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.runtimes import compiler_kernels
from benchmarks.suites import layers


def test_parse_shape():
    conv = layers.parse_shape("conv:16:32:8:1")
    assert (conv.kind, conv.in_features, conv.out_features, conv.size, conv.kernel) == (
        "conv", 16, 32, 8, 1,
    )  # fmt: skip
    assert layers.parse_shape("linear:64:128:16").name == "linear 64->128 x16"
    with pytest.raises(ValueError, match="conv:IN:OUT:SIZE"):
        layers.parse_shape("conv:16:32")


def test_every_kernel_is_timed_through_compile_sparse():
    layer = layers.parse_shape("conv:32:64:8")
    record = layers.measure_layer(layer, 16, 0.75, dtype="float32", batch=1, runs=3)
    kernels = [f"kernel:{k}" for k in compiler_kernels()]
    assert set(record["variants"]) == {"dense", "dense-copy", "compiled", *kernels}
    for name in kernels:
        variant = record["variants"][name]
        assert variant["decision"] == "sparse" and variant["kernel"] == name.split(":")[1]
        assert variant["check"]["passed"] and variant["check"]["tolerance"] == 1e-4
        assert variant["runs"] == 3 and record["dense_over"][name] > 0
    assert record["kept_fraction"] == pytest.approx(0.25, abs=0.01)
    assert record["flop_bound"] == pytest.approx(4.0, rel=0.05)
    assert set(record["goals"]) == {"never slower"}  # speed-up goals are for G = 64


def test_at_zero_sparsity_nothing_is_rewritten_and_the_kernels_do_not_run():
    layer = layers.parse_shape("linear:64:128:16")
    record = layers.measure_layer(layer, 64, 0.0, dtype="float32", batch=1, runs=2)
    assert set(record["variants"]) == {"dense", "dense-copy", "compiled"}
    assert record["variants"]["compiled"]["decision"] == "dense"
    assert all(info["reason"] == "nothing is pruned" for info in record["not_run"].values())
    assert record["goals"]["never slower"]["goal"] == 0.97


def test_goals_at_group_size_64():
    record = {
        "dtype": "bfloat16", "sparsity": 0.75, "group_size": 64, "device": "cpu",
        "dense_over": {"compiled": 2.4, "kernel:grouped": 2.6, "kernel:loop": 2.0},
    }  # fmt: skip
    goals = layers._goals(record)
    assert goals["dense/grouped"] == {"goal": 2.5, "measured": 2.6, "met": True}
    assert goals["loop/grouped"]["measured"] == pytest.approx(1.3) and goals["loop/grouped"]["met"]


def test_suite_writes_its_result(tmp_path):
    threads = torch.get_num_threads()
    try:
        code = layers.main(["--shape", "linear:64:128:16", "--group-sizes", "16",
                            "--sparsities", "0.75", "--runs", "2", "--dtype", "bfloat16",
                            "--out", str(tmp_path)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["suite"] == "layers" and data["settings"]["dtype"] == "bfloat16"
    assert data["settings"]["kernels"] == list(compiler_kernels())
    (record,) = data["records"]
    check = record["variants"]["dense-copy"]["check"]
    assert check["tolerance"] is not None and check["passed"]  # 3x eager bf16's own error
    (row,) = data["summary"]
    assert row["layer"] == "linear 64->128 x16" and "dense/grouped" in row
    assert code == (0 if row["check"] == "passed" else 1)


def test_cuda_without_a_gpu_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert layers.main(["--device", "cuda"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
