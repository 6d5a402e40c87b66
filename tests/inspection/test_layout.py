"""The pure-Python layered layout that draws the inspection graph without Graphviz: layers
by longest path, long edges bent through dummies, barycenter ordering, no overlaps."""

from __future__ import annotations

from itertools import pairwise

import networkx as nx
import pytest

from groupsparse.inspection.graph import graph_svg
from groupsparse.inspection.layout import (
    count_crossings,
    layout,
    longest_path_layers,
    order_layers,
    split_long_edges,
)
from tests.inspection.checks import parse_svg

SVG = "{http://www.w3.org/2000/svg}"


def _residual_block() -> nx.DiGraph:
    """x -> conv1 -> relu -> conv2 -> add -> out, and the shortcut x -> add."""
    return nx.DiGraph(
        [("x", "conv1"), ("conv1", "relu"), ("relu", "conv2"), ("conv2", "add"), ("x", "add"),
         ("add", "out")]
    )  # fmt: skip


def test_layers_are_longest_paths_so_every_edge_points_down():
    graph = _residual_block()
    layers = longest_path_layers(graph)
    assert layers == {"x": 0, "conv1": 1, "relu": 2, "conv2": 3, "add": 4, "out": 5}
    with pytest.raises(ValueError, match="directed acyclic graph"):
        longest_path_layers(nx.DiGraph([("a", "b"), ("b", "a")]))


def test_long_edges_become_chains_of_dummies_one_per_layer():
    graph = _residual_block()
    proper, layers, chains = split_long_edges(graph, longest_path_layers(graph))
    assert len(chains[("x", "add")]) == 3  # layers 1, 2, 3
    assert chains[("conv1", "relu")] == []
    assert all(layers[target] - layers[source] == 1 for source, target in proper.edges)


def test_barycenter_ordering_removes_a_crossing():
    graph = nx.DiGraph([("a", "y"), ("b", "x"), ("y", "p"), ("x", "q")])
    levels = [["a", "b"], ["x", "y"], ["p", "q"]]
    assert count_crossings(levels, graph) == 2
    ordered = order_layers(levels, graph)
    assert count_crossings(ordered, graph) == 0
    assert sorted(map(sorted, ordered)) == sorted(map(sorted, levels))  # same nodes per layer


def test_layout_places_nodes_without_overlap_and_edges_top_down():
    graph = _residual_block()
    graph.add_edges_from([("x", "side"), ("side", "add")])
    sizes = {node: (40.0 + 10 * len(node), 20.0) for node in graph.nodes}
    placed = layout(graph, sizes)
    layers = longest_path_layers(graph)
    for a in graph.nodes:
        (ax, ay), (aw, ah) = placed.positions[a], sizes[a]
        assert aw / 2 <= ax <= placed.width - aw / 2 and ah / 2 <= ay <= placed.height - ah / 2
        for b in graph.nodes:
            if a < b and layers[a] == layers[b]:
                (bx, _), (bw, _) = placed.positions[b], sizes[b]
                assert abs(ax - bx) >= (aw + bw) / 2, (a, b)
    for (source, target), points in placed.edges.items():
        assert points[0] == (placed.positions[source][0], placed.positions[source][1] + 10)
        assert points[-1] == (placed.positions[target][0], placed.positions[target][1] - 10)
        assert all(y0 < y1 for (_, y0), (_, y1) in pairwise(points)), (source, target)
    assert len(placed.edges[("x", "add")]) == 2 + 3  # ends and three bends


def test_python_engine_draws_every_node_and_edge(small_cnn):
    _, _, compiled = small_cnn
    rows = {row.name: row for row in compiled.report}
    root = parse_svg(graph_svg(compiled.graph_module, rows, engine="python"))
    groups = [group for group in root.iter(f"{SVG}g")]
    titles = {group.find(f"{SVG}title").text for group in groups if group.get("class") == "node"}
    drawn = {node.name for node in compiled.graph.nodes if node.op != "get_attr"}
    assert titles == drawn
    edges = [group for group in groups if group.get("class") == "edge"]
    assert len(edges) == sum(
        sum(source.op != "get_attr" for source in node.all_input_nodes)
        for node in compiled.graph.nodes
        if node.op != "get_attr"
    )


def test_engine_choice_is_checked(small_cnn, monkeypatch, tmp_path):
    _, _, compiled = small_cnn
    with pytest.raises(ValueError, match="engine must be one of"):
        graph_svg(compiled.graph_module, {}, engine="neato")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="engine='python' draws without it"):
        graph_svg(compiled.graph_module, {}, engine="dot")
