"""benchmarks/suites/models.py: the suite on tiny models (every variant built, checked, timed,
recorded with its provenance), and its helpers. The full-size runs are the commands in
benchmarks/README.md, not tests."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import models
from benchmarks.suites import models as suite
from groupsparse.models import build_model

TINY = ["small-cnn", "tiny-bert:num_hidden_layers=1,seq_len=16"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def without_inductor(monkeypatch):
    # Inductor's first compiles take tens of seconds on a small machine: here torch.compile
    # traces with Dynamo and runs the graphs as they are
    compile_ = torch.compile

    def compile_eagerly(model, backend="inductor", options=None, **kwargs):
        if backend == "inductor":
            return compile_(model, backend="eager", **kwargs)
        return compile_(
            model, backend=backend, options={**(options or {}), "inductor": False}, **kwargs
        )

    monkeypatch.setattr(torch, "compile", compile_eagerly)


def _run(tmp_path, *argv):
    threads = torch.get_num_threads()
    try:
        code = suite.main([*argv, "--runs", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (path,) = tmp_path.glob("*.json")
    return code, json.loads(path.read_text())


def test_tiny_models_every_variant(tmp_path, without_inductor):
    pytest.importorskip("transformers")
    code, data = _run(tmp_path, "--models", *TINY, "--sparsities", "0.75",
                      "--variants", *suite.VARIANTS)  # fmt: skip
    assert code == 0
    assert data["suite"] == "models" and data["finished"]
    assert data["provenance"]["command"].startswith("python -m benchmarks models --models")
    assert data["settings"]["dtype"] == "float32" and data["settings"]["runs"] == 2
    assert [(r["model"], r["sparsity"]) for r in data["records"]] == [(m, 0.75) for m in TINY]
    for record in data["records"]:
        assert set(record["variants"]) == set(suite.VARIANTS)
        for name, entry in record["variants"].items():
            where = f"{record['model']} {name}: {entry['error'] or entry['unavailable']}"
            assert entry["error"] is None, where
            if entry["unavailable"]:  # OpenVINO without the bench extra
                assert name == "dense-openvino" and "openvino" in entry["unavailable"]
                continue
            assert entry["check"]["passed"], where
            assert entry["runs"] == 2, where
            assert 0 < entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"], where
            assert entry["speedup_vs_fastest_dense"] > 0
        assert record["variants"]["csr"]["check"]["tolerance"] == 1e-3
        assert record["variants"]["groupsparse"]["check"]["tolerance"] == 1e-4
        assert record["fastest_dense"].startswith("dense-")
        assert record["layers"] and record["layers_torch_compile"]
        assert record["compiles_during_timing"] == 0
    bert = data["records"][1]
    assert bert["excluded_layers"] == ["pooler.dense"] and bert["nm"] == "1:4"
    assert [row["model"] for row in data["summary"]] == TINY
    table = (tmp_path / next(tmp_path.glob("*.json")).with_suffix(".md").name).read_text()
    assert "| small-cnn | 75% |" in table and "dense, Inductor + freezing" in table
    assert "| small-cnn | float32 | 75% |" in (tmp_path / "INDEX.md").read_text()


def test_bfloat16_is_checked_against_float32_by_the_half_precision_rule(tmp_path, without_inductor):
    code, data = _run(tmp_path, "--models", "small-cnn", "--sparsities", "0.75", "--dtype",
                      "bfloat16", "--variants", "dense-eager", "vector", "groupsparse")  # fmt: skip
    (record,) = data["records"]
    assert record["dtype"] == "bfloat16"
    for name in ("dense-eager", "vector"):
        check = record["variants"][name]["check"]
        assert check["tolerance"] == pytest.approx(3 * check["eager_error_in_dtype"]), name
        assert check["passed"], name
    ours = record["variants"]["groupsparse"]
    # bf16 kernels are being written: whatever compile_sparse does in bf16 is recorded
    assert ("median_ms" in ours and ours["check"]["passed"] is not None) or ours["error"]
    assert code == (1 if ours["error"] or not ours["check"]["passed"] else 0)


def test_parse_model_and_nm_pattern():
    assert models.parse_model("vgg16") == ("vgg16", {})
    assert models.parse_model("bert-base:num_layers=2,seq_len=64") == (
        "bert-base",
        {"num_layers": 2, "seq_len": 64},
    )
    with pytest.raises(ValueError, match="key=value"):
        models.parse_model("vgg16:64")
    assert [models.nm_pattern(s) for s in (0.5, 0.75, 0.9)] == ["2:4", "1:4", "1:10"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("small-cnn", ["features.0", "classifier.2"]),
        ("tiny-bert", ["pooler.dense"]),  # the first layer is an attention projection
        ("tiny-vit", ["embeddings.patch_embeddings.projection", "pooler.dense"]),
    ],
)
def test_excluded_layers(name, expected):
    if name.startswith("tiny"):
        pytest.importorskip("transformers")
    model, _ = build_model(name)
    assert models.excluded_layers(model) == expected


def test_transformers_resnet_builds_from_its_config():
    pytest.importorskip("transformers")
    model = models.hf_resnet50(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                               embedding_size=8)  # fmt: skip
    assert models.excluded_layers(model) == ["embedder.embedder.convolution"]
    full, (images,) = models.build("hf-resnet50:image_size=32")
    assert images.shape == (1, 3, 32, 32)
    assert list(full.config.depths) == [3, 4, 6, 3] and full.config.hidden_sizes[-1] == 2048


def _entry(ms, passed=True, **extra):
    return {"median_ms": ms, "check": {"passed": passed}, **extra}


def test_fastest_dense_is_the_fastest_that_passed_its_check():
    entries = {
        "dense-eager": _entry(4.0),
        "dense-openvino": _entry(1.0, passed=False),
        "dense-inductor-freezing": _entry(2.0),
        "groupsparse": _entry(1.0),
    }
    assert suite._speedups(entries) == "dense-inductor-freezing"
    assert entries["groupsparse"]["speedup_vs_fastest_dense"] == 2.0
    assert entries["groupsparse"]["speedup_vs_dense_eager"] == 4.0


def test_failures_are_recorded_not_hidden():
    records = [
        {
            "model": "m",
            "sparsity": 0.5,
            "fastest_dense": "dense-eager",
            "variants": {
                "dense-eager": _entry(2.0, speedup_vs_fastest_dense=1.0),
                "csr": {
                    "median_ms": 1.0,
                    "speedup_vs_fastest_dense": 2.0,
                    "check": {"passed": False, "max_relative_error": 0.5, "tolerance": 1e-3},
                },
                "bsr": {"error": "building bsr: RuntimeError: boom", "check": {}},
                "dense-openvino": {"error": None, "unavailable": "openvino is not installed"},
            },
        }
    ]
    settings = {"runs": 2, "dtype": "float32", "batch": 1, "group_size": 64}
    table = suite.markdown_table(records, settings)
    assert "| n/a [1] | 1.0 (2.00x) FAILED [2] | error [3] |" in table
    assert "[1] m 50% dense-openvino: openvino is not installed" in table
    assert "check FAILED, max relative error 5.0e-01 > 1.0e-03" in table and "boom" in table


@pytest.mark.slow
def test_inductor_with_freezing_folds_and_packs_the_weights():
    from benchmarks.runtimes import dense_runtime

    model, example = build_model("small-cnn")
    runtime = dense_runtime("inductor-freezing", model, example, "float32", threads=2)
    counters = runtime.details["inductor_counters"]
    assert runtime.details["freezing"] and counters.get("binary_folding", 0) > 0
    with torch.no_grad():
        assert torch.allclose(runtime.run(*example), model(*example), rtol=1e-4, atol=1e-5)
