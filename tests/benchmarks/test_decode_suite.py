"""benchmarks/suites/decode.py: the suite on a tiny GPT-2 (built, pruned, sparsified, checked,
generate() timed against dense, recorded with its provenance) and its byte count. The full-size
run is the command in benchmarks/README.md, not a test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import groupsparse as gs
from benchmarks.suites import decode
from tests.sparsify import group_sparsify

TINY = "gpt2:n_layer=1,n_embd=64,n_head=2,vocab_size=100,n_positions=64"


def test_a_tiny_gpt2_is_timed_dense_and_sparse_and_recorded(tmp_path):
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    try:
        code = decode.main([
            "--models", TINY, "--sparsities", "0.75", "--dtypes", "float32", "--prompt", "8",
            "--new-tokens", "4", "--runs", "1", "--bandwidth-runs", "1", "--decide", "cost",
            "--out", str(tmp_path),
        ])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["suite"] == "decode" and data["finished"]
    assert data["provenance"]["command"].startswith("python -m benchmarks decode --models")
    assert data["bandwidth"]["gb_per_s"] > 0
    (record,) = data["records"]
    assert record["check"]["passed"] and record["rewritten"] == 4  # every Conv1D; the head is tied
    assert "weight tied to embedding" in record["dense_layers"]["lm_head"]
    assert record["bytes_per_token"]["sparse"] < record["bytes_per_token"]["dense"]
    for variant in ("dense", "sparse"):
        assert record[variant]["decode_tokens_per_s"] > 0 and record[variant]["share_of_bound"] > 0
    assert record["goal"] is None  # goals are for the full-size models
    assert (tmp_path / "INDEX.md").exists() and path.with_suffix(".md").exists()


def test_bytes_per_token_count_what_a_step_reads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.LayerNorm(64), nn.Linear(64, 32))
    dense = 64 * 4 + 2 * 64 * 4 + (32 * 64 + 32) * 4  # one embedding row, the norm, the linear
    assert decode.weight_bytes_per_token(model) == dense
    group_sparsify(model, 0.75, 16)
    gs.sparsify_(model, decide="always")
    # 2 groups of 16 rows keeping 16 columns: packed weights, int64 columns, the bias
    sparse = 64 * 4 + 2 * 64 * 4 + (2 * 16 * 16) * 4 + 2 * 16 * 8 + 32 * 4
    assert decode.weight_bytes_per_token(model) == sparse


def test_unknown_models_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown model 'gpt3'"):
        decode.main(["--models", "gpt3"])
