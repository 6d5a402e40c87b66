"""The `groupsparse` command: each subcommand on a small model, through main([...])."""

from __future__ import annotations

import sys

import pytest
import torch

from groupsparse import cli
from groupsparse.compiler import PIPELINE
from groupsparse.inspection.graph import anchor
from tests.inspection.checks import load_in_browser, needs_dot, parse_svg, png_size

SMALL_CNN_LAYERS = [
    "features.0",
    "features.3",
    "features.7",
    "features.10",
    "features.14",
    "classifier.0",
    "classifier.2",
]
PRUNE = ["--sparsity", "0.75", "--group-size", "16", "--exclude", "first"]

TINY_MODEL_FILE = """
import torch
from torch import nn


def build():
    model = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 16))
    return model, (torch.randn(1, 4, 6, 6),)
"""


def _table(output: str) -> dict[str, str]:
    """{layer: its line} from the table that `inspect` prints first."""
    lines = output.split("== layers:")[1].split("== graph")[0].strip().splitlines()
    return {line.split()[0]: line for line in lines[3:-1]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(masks file, compiled file): `prune` then `compile --masks` on small-cnn."""
    directory = tmp_path_factory.mktemp("cli")
    masks, compiled = directory / "masks.pt", directory / "compiled.pt"
    assert cli.main(["prune", "small-cnn", *PRUNE, "--out", str(masks)]) == 0
    assert (
        cli.main(
            [
                "compile",
                "small-cnn",
                "--masks",
                str(masks),
                "--decide",
                "cost",
                "--out",
                str(compiled),
            ]
        )
        == 0
    )
    return masks, compiled


def test_prune_saves_the_masks_of_every_pruned_layer(saved, tmp_path, capsys):
    assert cli.main(["prune", "small-cnn", *PRUNE, "--out", str(tmp_path / "m.pt")]) == 0
    output = capsys.readouterr().out
    for name in SMALL_CNN_LAYERS[1:]:  # the first is excluded
        assert f"{name}.weight" in output
    assert "features.0.weight" not in output
    content = torch.load(saved[0], weights_only=True)
    assert content["format"] == cli.MASKS_FORMAT and content["model"] == "small-cnn"
    assert content["prune"]["group_size"] == 16 and content["prune"]["exclude"] == "first"
    kept = content["masks"]["features.3.weight"].float().mean()
    assert kept == pytest.approx(0.25)


def test_compile_saves_what_inspect_needs(saved, capsys):
    content = torch.load(saved[1], weights_only=True)
    assert content["format"] == cli.COMPILED_FORMAT
    assert content["compile"] == {"decide": "cost", "kernel": "grouped", "min_speedup": 1.05}
    assert content["prune"]["sparsity"] == 0.75  # carried over from the masks file
    assert set(content["masks"]) == {f"{name}.weight" for name in SMALL_CNN_LAYERS[1:]}


def test_inspect_saved_prints_table_steps_and_diff(saved, capsys):
    assert cli.main(["inspect", str(saved[1])]) == 0
    output = capsys.readouterr().out
    table = _table(output)
    assert list(table) == SMALL_CNN_LAYERS
    assert "72/288" in table["features.3"] and "sparse (grouped)" in table["features.3"]
    assert "nothing is pruned" in table["features.0"]
    assert "dense ms" not in output  # not timed: the saved options use the cost model
    positions = [
        output.index(f"--- after {step} ---")
        for step in ["capture", *[name for name, _ in PIPELINE]]
    ]
    assert positions == sorted(positions)
    diff = output.split("== diff ==")[1]
    assert (
        "+++ cleanup" in diff
        and "+    conv2d_default = torch.ops.groupsparse.conv2d.default(" in diff
    )


@pytest.mark.parametrize("graphviz", ["dot", "no dot"])
def test_inspect_html_writes_valid_svg_png_and_a_page_chromium_loads(
    saved, tmp_path, capsys, monkeypatch, graphviz
):
    """With Graphviz's dot, and with pip packages alone (dot hidden from PATH: the graph is
    drawn by the pure-Python layout)."""
    pytest.importorskip("matplotlib", reason="the heatmaps need matplotlib (groupsparse[viz])")
    if graphviz == "dot":
        needs_dot()
    else:
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "report"
    assert cli.main(["inspect", str(saved[1]), "--html", str(out)]) == 0
    monkeypatch.undo()  # PATH back, for chromium
    assert f"HTML report: {out / 'index.html'}" in capsys.readouterr().out
    svg = parse_svg((out / "graph.svg").read_text(encoding="utf-8"))
    labels = {text.text for text in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert set(SMALL_CNN_LAYERS) <= labels
    for name in SMALL_CNN_LAYERS:
        png_size((out / "masks" / f"{anchor(name)}.png").read_bytes())
    loaded = load_in_browser(out / "index.html")
    assert loaded.console == []
    assert loaded.probe.startswith(f"images={len(SMALL_CNN_LAYERS)} broken=0")
    for name in SMALL_CNN_LAYERS:
        assert f'id="{anchor(name)}"' in loaded.dom


def test_inspect_a_model_file_with_time(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TINY_MODEL_FILE)
    spec = f"{tmp_path / 'tiny.py'}:build"
    assert cli.main(["inspect", spec, "--group-size", "8", "--decide", "cost", "--time"]) == 0
    output = capsys.readouterr().out
    table = _table(output)
    assert list(table) == ["0", "3"]  # nn.Sequential's conv and linear
    assert "dense ms  sparse ms" in output.split("== layers:")[1].splitlines()[1]
    for line in table.values():
        assert ("faster than dense" in line) or ("would be slower" in line)


def test_prune_and_compile_a_model_file(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TINY_MODEL_FILE)
    spec = f"{tmp_path / 'tiny.py'}:build"
    assert (
        cli.main(
            [
                "compile",
                spec,
                "--group-size",
                "8",
                "--decide",
                "always",
                "--out",
                str(tmp_path / "c.pt"),
            ]
        )
        == 0
    )
    assert "2 of 2 layers rewritten" in capsys.readouterr().out
    assert torch.load(tmp_path / "c.pt", weights_only=True)["model"] == spec


def test_bad_model_and_bad_saved_file_say_what_is_wrong(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'no-such-model'.*small-cnn"):
        cli.main(["prune", "no-such-model", "--out", str(tmp_path / "m.pt")])
    with pytest.raises(SystemExit, match="has no function 'nope'"):
        (tmp_path / "tiny.py").write_text(TINY_MODEL_FILE)
        cli.main(["prune", f"{tmp_path / 'tiny.py'}:nope", "--out", str(tmp_path / "m.pt")])
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a file written by `groupsparse prune`"):
        cli.main(["inspect", str(tmp_path / "other.pt")])


def test_there_is_no_bench_subcommand(capsys):
    # the benchmarks run from a checkout (python -m benchmarks); the installed package does
    # not point into one
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--quick"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err
    assert not hasattr(cli, "BENCH_SCRIPT")


def test_demo_still_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["groupsparse"])
    threads = torch.get_num_threads()
    try:
        assert (
            cli.main(
                [
                    "demo",
                    "--model",
                    "small-cnn",
                    "--group-size",
                    "16",
                    "--runs",
                    "2",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    output = capsys.readouterr().out
    assert "max relative error vs the masked eager model" in output
    assert "groupsparse" in output.splitlines()[-1] and "x (median of 2" in output
