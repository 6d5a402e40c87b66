"""benchmarks' harness: provenance, the results schema and its INDEX.md, backfilling legacy
files from git history, the timers' calling order, and the correctness rule."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import checks, provenance, results, timing

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_tile amx_bf16 amx_int8
"""


def test_cpu_model_flags_and_isa():
    flags = provenance.cpu_flags(CPUINFO)
    assert provenance.cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8488C"
    assert provenance.isa_of(flags) == "AMX"
    assert provenance.isa_of({"avx2", "avx512f"}) == "AVX-512"
    assert provenance.isa_of({"avx2", "fma"}) == "AVX2"
    assert provenance.isa_of({"amx_tile"} | {"avx512f"}) == "AVX-512"  # no bf16 tiles


def test_machine_slug_names_model_isa_and_cores_or_the_gpu():
    xeon = {"cpu": "Intel(R) Xeon(R) Platinum 8488C", "isa": "AMX", "cores": 2}
    assert provenance.machine_slug(xeon) == "intel-xeon-platinum-8488c-amx-2c"
    epyc = {"cpu": "AMD EPYC 7B13 64-Core Processor", "isa": "AVX2", "cores": 2}
    assert provenance.machine_slug(epyc) == "amd-epyc-7b13-avx2-2c"
    gpu = {**epyc, "gpu": {"name": "NVIDIA H100 80GB HBM3"}}
    assert provenance.machine_slug(gpu, device="cuda") == "nvidia-h100"
    assert provenance.machine_slug(gpu, device="cpu") == "amd-epyc-7b13-avx2-2c"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "code")
    return tmp_path


def test_git_state_sees_commit_and_dirty_tree(repo):
    state = provenance.git_state(repo)
    assert state["commit"] == _git(repo, "rev-parse", "HEAD") and state["dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    state = provenance.git_state(repo)
    assert state["dirty"] is True and state["dirty_paths"] == ["code.py"]


def test_result_files_do_not_make_the_tree_dirty(repo):
    index = repo / "benchmarks" / "results" / "m" / "s" / "INDEX.md"
    index.parent.mkdir(parents=True)
    index.write_text("a\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "index")
    index.write_text("b\n")  # another suite's run rewrote it
    assert provenance.git_state(repo)["dirty"] is False


def test_without_git_the_commit_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_COMMIT", "abc1234")
    monkeypatch.setenv("BENCH_DIRTY", "0")
    state = provenance.git_state(tmp_path)  # not a repository
    assert state == {"commit": "abc1234", "dirty": False, "dirty_paths": [],
                     "commit_from": "environment"}  # fmt: skip


def test_result_file_records_provenance_and_writes_table_and_index(tmp_path):
    result = results.ResultFile(
        "layers", ["--runs", "3", "--layers", "a b"], {"runs": 3}, threads=2, out=tmp_path
    )
    result.add({"layer": "conv", "ms": 1.5})
    path = result.finish(summary=[{"layer": "conv", "dense/ours": 3.2}], table="| x |\n")
    data = json.loads(path.read_text())
    assert data["schema"] == results.SCHEMA and data["suite"] == "layers" and data["finished"]
    run = data["provenance"]
    assert {"commit", "dirty", "command", "date", "environment"} <= set(run)
    assert run["commit"] and run["backfilled"] is False
    assert run["command"] == "python -m benchmarks layers --runs 3 --layers 'a b'"
    machine = data["machine"]
    assert {"cpu", "isa", "isa_flags", "cores", "threads", "gpu", "torch"} <= set(machine)
    assert machine["torch"] == torch.__version__ and machine["threads"] == 2
    assert data["records"] == [{"layer": "conv", "ms": 1.5}]
    assert path.with_suffix(".md").read_text().startswith("`python -m benchmarks layers")
    index = (tmp_path / "INDEX.md").read_text()
    assert f"[{path.name}]({path.name})" in index and "| conv | 3.2 |" in index


def test_backfill_takes_the_commit_that_added_the_file_through_renames(repo):
    old = repo / "bench" / "a" / "results.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"settings": {"command": "python tools/bench.py", "cpu": "X"}}))
    listed = repo / "bench" / "a" / "kernels.json"
    listed.write_text(json.dumps([{"layer": "l"}]))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "results")
    added = _git(repo, "rev-parse", "HEAD")
    new = repo / "benchmarks" / "results" / "m" / "models"
    new.mkdir(parents=True)
    _git(repo, "mv", "bench/a/results.json", "bench/a/kernels.json", str(new))
    _git(repo, "commit", "-q", "-m", "moved")

    assert results.backfill(new / "results.json", "models", "tools/bench.py", repo=repo)
    data = json.loads((new / "results.json").read_text())
    assert data["provenance"]["commit"] == added and data["provenance"]["backfilled"] is True
    assert data["provenance"]["command"] == "python tools/bench.py"
    assert data["machine"] == {"cpu": "X", "isa": None}
    assert data["settings"]["cpu"] == "X"  # the legacy fields stay
    assert not results.backfill(new / "results.json", "models", "tools/bench.py", repo=repo)
    assert results.backfill(new / "kernels.json", "layers", "tools/gpu_kernels.py", repo=repo)
    assert results.load(new / "kernels.json")["records"] == [{"layer": "l"}]
    index = results.write_index(new).read_text()
    assert f"{added[:7]} (backfilled" in index and "ISA not recorded" in index


def test_stats_from_samples():
    stats = timing.Stats.from_ms([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats.median_ms, stats.min_ms, stats.max_ms, stats.runs) == (3.0, 1.0, 5.0, 5)
    assert stats.q1_ms == 2.0 and stats.q3_ms == 4.0
    assert timing.Stats.from_ms([2.0]).as_dict()["q3_ms"] == 2.0


def test_interleaved_alternates_single_calls():
    calls = []
    stats = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4)
    assert calls == list("ababbaabba")  # warm-up turn, then reversed every other
    assert stats["a"].runs == stats["b"].runs == 4


def test_blocks_never_alternate_single_calls():
    calls = []
    stats = timing.blocks(
        {"torch": lambda: calls.append("t"), "openvino": lambda: calls.append("o")},
        runs=5, block=3, warmup=1,
    )  # fmt: skip
    # warm-up, then per round each runtime's hand-over call and its block, order reversed
    assert "".join(calls) == "to" + "tttt" + "oooo" + "ooo" + "ttt"
    assert stats["torch"].runs == stats["openvino"].runs == 5


def test_tolerance_rule_and_relative_error():
    assert checks.tolerance("float32", 1e-4, 0.5) == 1e-4
    assert checks.tolerance("bfloat16", 1e-4, 0.01) == pytest.approx(0.03)
    assert checks.tolerance("float16", 1e-4, None) is None
    expected = torch.tensor([1.0, -2.0])
    assert checks.relative_error(torch.tensor([1.0, -2.5]), expected) == 0.25
    assert checks.verdict(0.25, 0.1, "masked")["passed"] is False
    assert checks.verdict(0.25, None, "masked")["passed"] is None


def test_output_tensors_of_the_runtimes_outputs():
    class ModelOutput(dict):
        def to_tuple(self):
            return tuple(self.values())

    out = ModelOutput(last=torch.ones(2), pooled=torch.zeros(1))
    assert [t.shape for t in checks.output_tensors(out)] == [(2,), (1,)]
    arrays = checks.output_tensors([np.ones(3, dtype=np.float32)])  # OpenVINO gives arrays
    assert torch.equal(arrays[0], torch.ones(3))
    ids = torch.tensor([[3, 7]])
    fresh = checks.fresh_inputs((torch.zeros(1, 4), ids), seed=0)
    assert fresh[0].dtype == torch.float32 and fresh[1].max() <= 7
    assert checks.cast_inputs(fresh, torch.bfloat16)[0].dtype == torch.bfloat16
    assert checks.cast_inputs(fresh, torch.bfloat16)[1].dtype == torch.int64


def test_command_line_lists_the_suites(capsys):
    from benchmarks import SUITES
    from benchmarks.__main__ import main

    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert all(suite in printed for suite in SUITES)
    assert main(["nonsense"]) == 2


def test_results_doc_shows_newest_run_per_precision_with_provenance(tmp_path):
    from benchmarks import report

    def write(folder, name, date, dtype, summary, quick=False):
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "schema": 1, "suite": folder.name, "finished": True, "summary": summary,
            "settings": {"dtype": dtype, "quick": quick},
            "machine": {"cpu": "Test CPU", "isa": "AVX-512", "threads": 2, "torch": "2.13"},
            "provenance": {"commit": "abcdef0123", "date": date, "command": "python -m x"},
        }  # fmt: skip
        (folder / name).write_text(json.dumps(data))

    models = tmp_path / "results" / "cpu-x" / "models"
    write(models, "old.json", "2026-01-01", "float32", [{"model": "m", "speed": "1.0x"}])
    write(models, "new.json", "2026-02-01", "float32", [{"model": "m", "speed": "2.0x"}])
    write(models, "bf16.json", "2026-01-15", "bfloat16", [{"model": "m", "speed": "3.0x"}])
    write(models, "quick.json", "2026-03-01", "float32", [{"model": "m", "speed": "9.9x"}], True)
    gpu = tmp_path / "results" / "gpu-y" / "gpu"
    gpu.mkdir(parents=True)
    (gpu / "results.json").write_text(json.dumps({"suite": "gpu", "records": [
        {"model": "r", "sparsity": None, "variant": "dense-compile", "ms": 2.0},
        {"model": "r", "sparsity": 0.75, "variant": "groupsparse-graph", "ms": 1.0},
    ]}))  # fmt: skip
    doc = report.write_results_doc(tmp_path / "results", tmp_path / "docs" / "results.md")
    text = doc.read_text()
    assert "2.0x" in text and "3.0x" in text  # the newest fp32 run and the bf16 run
    assert "1.0x |" not in text and "9.9x" not in text  # superseded and --quick runs are not
    assert "commit abcdef0" in text and "Test CPU (AVX-512)" in text
    assert "| r | 75% | 2 | 1.000 (2.00x) |" in text  # the GPU run summarised from records
