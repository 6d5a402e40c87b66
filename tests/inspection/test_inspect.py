"""gs.inspect: the per-layer table, masks rebuilt from the compiled module, the graph after
each step and the before/after diff."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.compiler import PIPELINE


def test_table_has_every_prunable_layer_with_groups_kept_columns_and_decision(small_cnn):
    model, _, compiled = small_cnn
    inspection = gs.inspect(compiled, title="small-cnn")
    names = [name for name, _ in gs.prunable_layers(model)]
    assert [layer.name for layer in inspection.layers] == names
    cells = {row["layer"]: row for row in inspection.cells()}
    assert cells["features.3"]["groups"] == "2x16"
    assert cells["features.3"]["kept cols/group"] == "72/288"  # each group keeps 72 of 288 columns
    assert cells["features.3"]["decision"] == "sparse (grouped)"
    assert cells["classifier.0"]["kept cols/group"] == "32/128"
    assert cells["features.0"]["decision"] == "dense"
    assert cells["features.0"]["reason"] == "nothing is pruned"  # excluded from pruning
    lines = inspection.table.splitlines()
    assert lines[0].split()[:4] == ["layer", "op", "M", "x"]
    for line, name in zip(lines[2:-1], names, strict=True):  # the text shows every cell
        assert line.split()[0] == name
        assert all(value in line for value in cells[name].values())
    assert lines[-1].startswith("6 of 7 prunable layers rewritten")


def test_masks_rebuilt_from_the_compiled_module_equal_the_pruning_masks(small_cnn):
    _, masks, compiled = small_cnn
    for layer in gs.inspect(compiled).layers:  # no masks given: plan buffers and weight zeros
        expected = masks.get(f"{layer.name}.weight")
        if expected is None:  # the excluded first layer: nothing pruned
            assert bool(layer.mask.all())
            continue
        assert torch.equal(layer.mask, expected.reshape(layer.row.shape))
        groups = layer.mask.reshape(layer.row.groups, layer.row.group_size, -1).sum(dim=2)
        assert list(layer.group_kept) == groups[:, 0].tolist()


def test_bytes_moved_count_weights_inputs_and_outputs_of_the_gemm(small_cnn):
    _, _, compiled = small_cnn
    layers = {layer.name: layer for layer in gs.inspect(compiled).layers}
    fc = layers["classifier.0"]  # 128x128, batch 1, 8 groups of 16 rows keeping 32 columns
    assert fc.bytes_dense == (128 * 128 + 128 + 128) * 4
    assert fc.bytes_sparse == (8 * 16 * 32 + 8 * 32 + 128) * 4
    first = layers["features.0"]  # left dense: nothing changes
    assert first.bytes_sparse == first.bytes_dense
    assert {"kept_columns_per_group", "bytes_dense", "bytes_sparse", "reason"} <= set(
        gs.inspect(compiled).rows[0]
    )


def test_graphs_follow_the_pipeline_and_the_diff_shows_the_rewrite(small_cnn):
    _, _, compiled = small_cnn
    inspection = gs.inspect(compiled)
    assert list(inspection.graphs) == ["capture", *[name for name, _ in PIPELINE]]
    assert inspection.graphs["cleanup"] == compiled.code
    removed = [line for line in inspection.diff.splitlines() if line.startswith("-")]
    added = [line for line in inspection.diff.splitlines() if line.startswith("+")]
    assert any('getattr(self.features, "3")' in line for line in removed)
    assert sum("torch.ops.groupsparse.conv2d.default" in line for line in added) == 4
    assert sum("torch.ops.groupsparse.linear.default" in line for line in added) == 2
    text = str(inspection)
    assert (
        text.index("--- after capture ---")
        < text.index("--- after plan ---")
        < text.index("--- after cleanup ---")
    )
    assert "== diff ==" in text


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 32)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_why_not_a_layer_that_is_not_group_wise_stays_dense_with_the_reason():
    torch.manual_seed(0)
    model = _TwoLayers().eval()
    masks = gs.prune(model, pattern="element", sparsity=0.75)
    compiled = gs.compile_sparse(model, torch.randn(1, 8, 4, 4), decide="always")
    inspection = gs.inspect(compiled, masks=masks)
    for layer in inspection.layers:
        assert layer.row.decision == "dense"
        assert "not group-wise" in layer.row.reason
        assert torch.equal(layer.mask, masks[f"{layer.name}.weight"].reshape(layer.row.shape))
    for cells in inspection.cells():
        assert (cells["pattern"], cells["groups"], cells["kept cols/group"]) == (
            "irregular",
            "-",
            "-",
        )
        assert "not group-wise" in cells["reason"]


def test_timed_compilation_adds_the_dense_and_sparse_times():
    torch.manual_seed(0)
    model = _TwoLayers().eval()
    gs.prune(model, pattern="group", sparsity=0.75, group_size=8)
    compiled = gs.compile_sparse(model, torch.randn(1, 8, 4, 4), decide="time")
    inspection = gs.inspect(compiled)
    assert inspection.timed
    assert "dense ms  sparse ms  reason" in inspection.table.splitlines()[0]
    for cells in inspection.cells():
        assert float(cells["dense ms"]) > 0 and float(cells["sparse ms"]) > 0


def test_inspect_takes_a_compiled_module():
    with pytest.raises(TypeError, match="SparseModule"):
        gs.inspect(nn.Linear(2, 2))


def test_conv1d_masks_are_shown_on_their_gemm_view():
    """transformers' Conv1D stores (in, out): the given mask of a layer left dense and the mask
    rebuilt from a rewritten layer's buffers are both its (out, in) view."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(nf=64, nx=32), nn.ReLU(), Conv1D(nf=32, nx=64)).eval()
    masks = gs.prune(model, "group", allocation={"0": 0.75, "2": 0.1}, group_size=16)
    compiled = gs.compile_sparse(model, torch.randn(2, 5, 32), decide="cost")
    assert compiled.report.rewritten == ["0"]  # "2" keeps 90%: the cost model leaves it dense
    for layer in gs.inspect(compiled, masks=masks).layers:
        expected = gs.gemm_view(masks[f"{layer.name}.weight"], kind="transposed_linear")
        assert torch.equal(layer.mask, expected), layer.name
