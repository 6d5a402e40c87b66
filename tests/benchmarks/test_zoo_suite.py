"""benchmarks/suites/zoo.py: the sweep on two tiny models (built, pruned, compiled, checked,
timed, sized, recorded with provenance), a model that fails recorded with its step while the
sweep goes on, and the helpers. The full sweep is ``python -m benchmarks zoo``, not a test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmarks import zoo
from benchmarks.suites import zoo as suite

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(tmp_path, *argv):
    threads = torch.get_num_threads()
    try:
        code = suite.main([*argv, "--runs", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (path,) = tmp_path.glob("*.json")
    return code, json.loads(path.read_text()), path


def test_two_tiny_models_and_a_failure_in_between(tmp_path):
    # the middle spec cannot be built (64 hidden units in 3 heads): recorded, and the sweep goes on
    models = ["bert", "bert:num_attention_heads=3", "resnet"]
    code, data, path = _run(tmp_path, "--quick", "--models", *models)
    assert code == 1  # a failed model fails the run
    assert data["suite"] == "zoo" and data["finished"]
    assert data["provenance"]["command"].startswith("python -m benchmarks zoo --quick")
    assert data["machine"]["threads"] == 1 and data["settings"]["sparsity"] == 0.75
    bert, broken, resnet = data["records"]
    assert [r["model"] for r in data["records"]] == models

    assert (
        broken["failed_at"] == "build"
        and "multiple of the number of attention heads" in broken["error"]
    )
    for record in (bert, resnet):
        assert record["error"] is None, record.get("traceback")
        assert record["check"]["passed"] and record["check"]["max_relative_error"] < 1e-4
        assert record["config"] == {**zoo.ZOO[record["model"]].config,
                                    **zoo.ZOO[record["model"]].tiny}  # fmt: skip
        assert record["times"]["dense-eager"]["runs"] == record["times"]["groupsparse"]["runs"] == 2
        assert record["speedup"] > 0
        # one report row per conv/linear call, the decisions counted from them
        assert len(record["layers"]) == sum(record["decisions"].values())
        assert record["decisions"].get("sparse", 0) == sum(
            row["decision"] == "sparse" for row in record["layers"]
        )
        sizes = record["state_dict_bytes"]
        assert 0 < sizes["compiled_over_dense_without_embeddings"] < 1  # 75% of the layers gone
        split = record["dense_ms_by_decision"]  # where the dense model's time goes
        assert split["sparse"] > 0 and split["other ops"] > 0 and split["total"] > 0
        assert set(split) <= {"total", "other ops"} | set(record["decisions"])
    assert bert["capture"] == "export" and bert["input_shapes"] == [[1, 16]]
    assert bert["excluded_layers"] == ["pooler.dense"]
    assert bert["decisions"]["not pruned"] == 1  # the pooler
    assert resnet["excluded_layers"] == ["embedder.embedder.convolution"]
    assert list(resnet["group_sizes"]) == ["64", "32", "16"]  # widths 16, 32, 64 and more

    rows = {row["model"]: row for row in data["summary"]}
    assert rows["bert:num_attention_heads=3"]["speedup"].startswith("build failed")
    assert rows["median of 2"]["check"] == "2 of 3 passed"
    table = path.with_suffix(".md").read_text()
    assert "| bert | bert-base-uncased, 4 of 12 layers | text encoder | 64 |" in table
    assert "| rewritten share |" in table
    assert "build failed [1]" in table and "[1] bert:num_attention_heads=3 (build)" in table
    assert "Median speedup" in table
    assert "| median of 2 |" in (tmp_path / "INDEX.md").read_text()


def test_each_layer_gets_the_largest_group_size_that_divides_its_rows():
    model = nn.Sequential(
        nn.Linear(8, 96), nn.Linear(96, 48), nn.Linear(48, 24), nn.Linear(24, 128),
        nn.Conv2d(3, 3, 3, groups=3),
    )  # fmt: skip
    sizes, skipped = suite._group_sizes(model, exclude=["3"], choices=[64, 32, 16])
    # 24 rows: none divides, the first is used (one group: column pruning)
    assert sizes == {"0": 32, "1": 16, "2": 64}
    assert list(skipped) == ["4"] and "depthwise" in skipped["4"]
    masks = suite._prune(model, 0.75, sizes)
    assert set(masks) == {"0.weight", "1.weight", "2.weight"}
    for name, mask in masks.items():
        assert mask.float().mean().item() == pytest.approx(0.25), name
    # within a group of 32 rows of layer 0, every row keeps the same columns
    first = masks["0.weight"]
    assert torch.equal(first[:32], first[:1].expand(32, -1))
    assert not torch.equal(first[:32], first[32:64])


def test_decision_kinds():
    def row(decision, reason):
        return {"decision": decision, "reason": reason}

    assert suite.decision_kind(row("sparse", "2.97x faster than dense on the example input")) == (
        "sparse"
    )
    assert suite.decision_kind(row("dense", "would be slower: 0.9x of dense ...")) == "not faster"
    assert suite.decision_kind(row("dense", "nothing is pruned")) == "not pruned"
    assert suite.decision_kind(row("dense", "grouped/depthwise conv (groups=96) is ...")) == (
        "depthwise/grouped"
    )
    assert suite.decision_kind(row("dense", "conv1d is not supported yet")) == "conv1d"
    assert suite.decision_kind(row("dense", "input dtype torch.int64 is not a floating type")) == (
        "input dtype torch.int# is not a floating type"
    )


def test_the_zoo_spans_text_and_vision_and_specs_override_configs():
    assert len(zoo.ZOO) >= 20
    families = {entry.family for entry in zoo.ZOO.values()}
    assert {"text encoder", "decoder", "vision transformer", "CNN", "mobile CNN"} <= families
    entry, config, size = zoo.config_of("llama:num_hidden_layers=1,input_size=64")
    assert entry.model_class == "LlamaModel" and size == 64
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 2048
    assert config["use_cache"] is False  # one forward, no DynamicCache to capture
    with pytest.raises(ValueError, match="unknown zoo model 'alexnet'; known: bert"):
        zoo.config_of("alexnet")
    with pytest.raises(ValueError, match="family"):
        zoo.Architecture("x", "toy", "BertModel", "BertConfig", "", {}, {}, "tokens", 8, 8)


def test_batch_norm_calibration_undoes_vanishing_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 1),
                          nn.BatchNorm2d(16)).eval()  # fmt: skip
    with torch.no_grad():
        for layer in model:  # as transformers' EfficientNet is initialized
            layer.weight.normal_(0, 0.02)
            layer.bias.zero_()
    example = (torch.randn(1, 3, 16, 16),)
    with torch.no_grad():
        assert model(*example).abs().max() < 1e-3
        assert zoo.calibrate_batch_norm(model, example, seed=0)
        output = model(*example)
    assert not model.training and not any(m.training for m in model)
    assert 0.5 < output.std().item() < 2.0
    assert model[1].momentum == 0.1  # restored
    assert not zoo.calibrate_batch_norm(nn.Linear(2, 2), (torch.randn(1, 2),), seed=0)
    # a zoo CNN built from its config has a healthy output
    efficientnet, images = zoo.build("efficientnet", tiny=True)
    with torch.no_grad():
        assert efficientnet(*images).last_hidden_state.abs().max() > 0.1
