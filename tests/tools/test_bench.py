"""tools/bench.py: the harness on tiny models (every method timed and checked, JSON, table.md,
figures), and its helpers. The full-size run is the command in the README, not a test."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from groupsparse.models import build_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check_results(bench, out, models, sparsities):
    results = json.loads((out / "results.json").read_text())
    assert {"cpu", "cores", "torch", "threads"} <= set(results["machine"])
    assert results["settings"]["runs"] == 2 and results["settings"]["threads"] == 2
    assert [(c["model"], c["sparsity"]) for c in results["cells"]] == [
        (m, s) for m in models for s in sparsities
    ]
    for cell in results["cells"]:
        assert set(cell["methods"]) == set(bench.METHODS), cell["model"]
        for name, entry in cell["methods"].items():
            where = f"{cell['model']} {cell['sparsity']} {name}: {entry.get('error')}"
            assert entry["error"] is None, where
            assert entry["check"]["passed"], where
            assert entry["runs"] == 2, where
            assert 0 < entry["min_ms"] <= entry["q1_ms"] <= entry["median_ms"], where
            assert entry["median_ms"] <= entry["q3_ms"] <= entry["max_ms"], where
        assert cell["compiles_during_timing"] == 0
        rows = cell["layers"]  # compile_sparse's report, timed per layer
        assert rows and all(
            row["dense_ms"] is not None for row in rows if row["pattern"] == "group"
        )
        assert cell["layers_torch_compile"]
        assert cell["methods"]["csr"]["check"]["tolerance"] == 1e-3
        assert cell["methods"]["groupsparse"]["check"]["tolerance"] == 1e-4
    table = (out / "table.md").read_text()
    for model in models:
        assert f"| {model} |" in table
        assert (
            out / f"layers_{re.sub('[^a-zA-Z0-9]+', '-', model).strip('-')}.png"
        ).stat().st_size > 0
    assert "dense (no N:M CPU kernel)" in table or results["nm_cpu_kernel"] is None
    assert (out / "latency.png").stat().st_size > 0
    return results


def test_tiny_models_every_method(bench, tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    # Inductor's first compiles take tens of seconds on a small machine: here torch.compile
    # traces with Dynamo and runs the graphs as they are (the slow test uses Inductor)
    compile_ = torch.compile

    def without_inductor(model, backend="inductor", options=None, **kwargs):
        if backend == "inductor":
            return compile_(model, backend="eager", **kwargs)
        return compile_(
            model, backend=backend, options={**(options or {}), "inductor": False}, **kwargs
        )

    monkeypatch.setattr(torch, "compile", without_inductor)
    models = ["small-cnn", "tiny-bert:num_hidden_layers=1,seq_len=16"]
    argv = ["--models", *models, "--sparsities", "0.75", "--runs", "2", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    results = _check_results(bench, tmp_path, models, [0.75])
    printed = capsys.readouterr().out
    assert "estimated wall time" in printed and "| small-cnn | 75% |" in printed
    bert = results["cells"][1]
    assert bert["excluded_layers"] == ["pooler.dense"]
    assert bert["nm"] == "1:4"


@pytest.mark.slow
def test_tiny_models_with_inductor_two_sparsities(bench, tmp_path):
    pytest.importorskip("transformers")
    models = ["small-cnn", "tiny-bert"]
    argv = [
        "--models",
        *models,
        "--sparsities",
        "0.5",
        "0.9",
        "--runs",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0
    _check_results(bench, tmp_path, models, [0.5, 0.9])


def test_parse_model(bench):
    assert bench.parse_model("vgg16") == ("vgg16", {})
    assert bench.parse_model("bert-base:num_layers=2,seq_len=64") == (
        "bert-base",
        {"num_layers": 2, "seq_len": 64},
    )
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_model("vgg16:64")


def test_nm_pattern(bench):
    assert [bench.nm_pattern(s) for s in (0.5, 0.75, 0.9)] == ["2:4", "1:4", "1:10"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("small-cnn", ["features.0", "classifier.2"]),
        ("tiny-bert", ["pooler.dense"]),  # the first layer is an attention projection
        ("tiny-vit", ["embeddings.patch_embeddings.projection", "pooler.dense"]),
    ],
)
def test_excluded_layers(bench, name, expected):
    if name.startswith("tiny"):
        pytest.importorskip("transformers")
    model, _ = build_model(name)
    assert bench.excluded_layers(model) == expected


def test_failed_check_is_recorded_not_hidden(bench):
    results = {
        "machine": {"cpu": "x", "torch": "t"},
        "settings": {"runs": 2, "threads": 2, "batch": 1, "group_size": 64, "command": "c"},
        "nm_cpu_kernel": None,
        "nm_cpu_kernel_label": "dense",
        "cells": [
            {
                "model": "m",
                "sparsity": 0.5,
                "methods": {
                    "dense": {"median_ms": 2.0, "check": {"passed": True}},
                    "csr": {
                        "median_ms": 1.0,
                        "check": {"passed": False, "max_relative_error": 0.5, "tolerance": 1e-3},
                    },
                    "bsr": {"error": "building bsr: RuntimeError: boom", "check": {}},
                },
            }
        ],
    }
    table = bench.markdown_table(results)
    assert "1.0 (2.00x) FAILED [1]" in table and "check FAILED, max relative error 5.0e-01" in table
    assert "error [2]" in table and "boom" in table


def test_merge_keeps_what_is_not_redone_and_refuses_other_settings(bench, tmp_path):
    def results(runs, cells):
        return {
            "machine": {"cpu": "x", "torch": "t"},
            "settings": {"command": f"runs {runs}", "threads": 2, "batch": 1, "group_size": 64,
                         "bsr_block": 16, "runs": runs, "warmup": 1},
            "cells": [{"model": m, "sparsity": s} for m, s in cells],
        }  # fmt: skip

    (tmp_path / "results.json").write_text(json.dumps(results(10, [("a", 0.5), ("b", 0.5)])))
    args = argparse.Namespace(models=["b"], sparsities=[0.5])
    now = results(10, [])
    bench._merge_earlier(now, tmp_path, args)
    assert now["cells"] == [{"model": "a", "sparsity": 0.5, "command": "runs 10"}]
    now["cells"].append({"model": "b", "sparsity": 0.5, "command": "runs 10 again", "methods": {}})
    assert bench._commands(now) == ["runs 10", "runs 10 again"]
    with pytest.raises(SystemExit, match="another runs"):
        bench._merge_earlier(results(3, []), tmp_path, args)
