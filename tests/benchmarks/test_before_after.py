"""benchmarks/experiments/before_after.py: workers in separate processes, each importing its own
tree's groupsparse, compile the same pruned model, agree on its outputs and take turns timing
it; the result is recorded with its provenance. Here both workers run the working tree (an
older commit would build its C++ kernels first, a minute); the real comparison is the command
in benchmarks/experiments/README.md."""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments import before_after


def test_two_workers_compile_agree_and_take_turns(tmp_path):
    code = before_after.main([
        ".", ".", "--models", "small-cnn", "--rounds", "2", "--calls", "2", "--threads", "1",
        "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    assert data["suite"] == "before_after" and data["finished"]
    assert data["provenance"]["command"].startswith(
        "python -m benchmarks.experiments.before_after . . --models small-cnn"
    )
    first, second = data["records"]
    assert first["commit"].endswith("#1") and second["commit"].endswith("#2")
    for record in (first, second):
        assert record["runs"] == 4  # 2 rounds of 2 calls
        assert record["error"] < 1e-4  # the compiled model against the pruned one
        assert record["file"].endswith("groupsparse/__init__.py")
    (row,) = data["summary"]
    assert row["model"] == "small-cnn" and row[f"{first['commit']} / {second['commit']}"] > 0


def test_outputs_that_differ_are_caught():
    same = [1.0, -2.0, 3.0]
    assert before_after._relative_difference(same, same) == 0
    assert before_after._relative_difference(same, [1.0, -2.0, 3.01]) > before_after.AGREE


def test_an_unknown_commit_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="'no-such-commit' is not a commit"):
        before_after.main(["no-such-commit", "--models", "small-cnn", "--out", str(tmp_path)])
