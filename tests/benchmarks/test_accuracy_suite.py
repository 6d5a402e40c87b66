"""benchmarks/suites/accuracy.py: a tiny run writes its result (JSON with provenance, table,
plots), and the compiled group-wise model predicts what the masked model predicts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.provenance import REPO

pytest.importorskip("sklearn", reason="the study's data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="the study draws its plots with matplotlib")


@pytest.fixture(scope="module")
def accuracy_tool():
    from benchmarks.suites import accuracy

    return accuracy


def _result(folder):
    (path,) = folder.glob("*.json")
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def smoke(accuracy_tool, tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    threads = torch.get_num_threads()
    try:
        accuracy_tool.main(
            [
                "--models", "cnn", "--patterns", "group G=8", "--sparsities", "0.75",
                "--criteria", "magnitude", "--seeds", "1", "--epochs", "1",
                "--stage-epochs", "1", "--out", str(out),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out


def test_smoke_run_writes_json_table_and_plots(smoke):
    path, results = _result(smoke)
    assert set(results) >= {"schema", "provenance", "machine", "settings", "meta", "dense",
                            "runs", "goals", "summary"}  # fmt: skip
    assert results["suite"] == "accuracy" and results["finished"]
    assert results["provenance"]["command"].startswith("python -m benchmarks accuracy")
    assert results["meta"]["finished"] and results["meta"]["estimate_s"] > 0
    assert set(results["machine"]) >= {"cpu", "isa", "threads"}
    assert len(results["dense"]["cnn"]["accuracy"]) == 1
    assert {(run["pattern"], run["schedule"]) for run in results["runs"]} == {
        ("group G=8", "oneshot"),
        ("group G=8", "gradual"),
    }
    for run in results["runs"]:
        assert set(run) >= {
            "model",
            "pattern",
            "sparsity",
            "criterion",
            "schedule",
            "accuracy",
            "mean",
            "std",
        }
        assert 0.0 <= run["mean"] <= 1.0
        assert abs(run["actual_sparsity"] - 0.75) < 0.02
    assert "permutation_vs_none" in results["goals"]
    table = path.with_suffix(".md").read_text()
    assert "## Dense baselines" in table and "| group G=8 |" in table
    for name in ("accuracy_gradual.png", "accuracy_oneshot.png"):
        assert (smoke / f"{path.stem}-{name}").stat().st_size > 0
    assert results["summary"][0]["model"] == "cnn"


def test_parallel_jobs_give_the_results_of_one_process(tmp_path):
    # --jobs 2 runs (model, seed) jobs in spawned processes; the results, in seed order, must
    # be those of the same study run in one process
    args = [
        "--models", "cnn", "--patterns", "group G=8", "--sparsities", "0.75", "--criteria",
        "magnitude", "--seeds", "2", "--epochs", "1", "--stage-epochs", "1",
        "--schedules", "gradual", "--no-compile-check",
    ]  # fmt: skip
    for jobs in ("1", "2"):
        subprocess.run(
            [sys.executable, "-m", "benchmarks", "accuracy", *args, "--jobs", jobs,
             "--out", str(tmp_path / jobs)],
            check=True, capture_output=True, timeout=600, cwd=REPO,
        )  # fmt: skip
    one, two = (_result(tmp_path / j)[1] for j in ("1", "2"))
    assert two["settings"]["jobs"] == 2
    assert one["dense"]["cnn"]["accuracy"] == two["dense"]["cnn"]["accuracy"]
    assert [r["accuracy"] for r in one["runs"]] == [r["accuracy"] for r in two["runs"]]
    assert len(two["runs"][0]["accuracy"]) == 2


def test_compiled_model_predicts_as_the_masked_model(smoke):
    _, results = _result(smoke)
    (gradual,) = [run for run in results["runs"] if run["schedule"] == "gradual"]
    compiled = gradual["compiled"]
    assert compiled["checked"] == 1
    assert compiled["same_predictions"]
    assert compiled["sparse_layers"][0] >= 1, "the group-wise layers were rewritten"


def test_shift_keeps_the_image_and_fills_the_border(accuracy_tool):
    images = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    generator = torch.Generator().manual_seed(0)
    moved = accuracy_tool.shifted(images, 1, -1.0, generator)
    assert moved.shape == images.shape
    for image, out in zip(images, moved):
        kept = out[out != -1.0]
        assert set(kept.tolist()) <= set(image.flatten().tolist())
        assert len(kept) >= 9  # at most one row and one column leave the 4x4 frame


def test_staged_cubic_reaches_each_target_at_its_stage(accuracy_tool):
    schedule = accuracy_tool.StagedCubic(
        targets=(0.5, 0.75, 0.9), stage_steps=50, prune_share=0.4, updates=4
    )
    assert schedule.sparsity_at(0, 0.9) == 0.0
    assert [schedule.sparsity_at(step, 0.9) for step in (20, 49, 70, 99, 120, 500)] == [
        0.5, 0.5, 0.75, 0.75, 0.9, 0.9,
    ]  # fmt: skip
    assert 0.5 < schedule.sparsity_at(65, 0.9) < 0.75
    assert [step for step in range(50) if schedule.updates_at(step)] == [0, 5, 10, 15, 20]
    with pytest.raises(ValueError, match="ascending"):
        accuracy_tool.StagedCubic(targets=(0.9, 0.5), stage_steps=10)


def test_the_wide_model_leaves_g64_and_g128_several_groups_and_stays_off_by_default(
    accuracy_tool,
):
    model = accuracy_tool.MODELS["wide-cnn"].build()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(conv.out_channels >= 256 for conv in convs)
    assert all(conv.out_channels // 128 >= 2 for conv in convs)  # G=128: at least 2 groups
    assert {"group G=64", "group G=128"} <= set(accuracy_tool.PATTERNS)
    args = accuracy_tool._parser().parse_args([])
    settings = accuracy_tool.settings_from(args)
    assert settings.models == ("cnn", "resnet", "vit")
    assert not {"group G=64", "group G=128"} & set(settings.patterns)
