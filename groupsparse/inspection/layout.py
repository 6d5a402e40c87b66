"""A layered ("Sugiyama") layout of a directed acyclic graph in pure Python, so that the
inspection page draws its graph without Graphviz's ``dot`` program.

The steps, each a small function on a networkx DiGraph:

1. :func:`longest_path_layers`: a node's layer is the length of the longest path reaching it,
   so every edge points down.
2. :func:`split_long_edges`: an edge spanning several layers becomes a chain through dummy
   nodes, one per layer crossed, so that it can bend around the nodes in between.
3. :func:`order_layers`: barycenter sweeps, down then up, order each layer by the mean
   position of its neighbours in the layer before; the order with the fewest crossings wins.
4. :func:`place`: layers stacked top to bottom; in each, nodes pulled towards the mean x of
   their neighbours, then pushed apart so that none overlap.

>>> graph = nx.DiGraph([("x", "conv"), ("conv", "relu"), ("x", "add"), ("relu", "add")])
>>> longest_path_layers(graph)
{'x': 0, 'conv': 1, 'relu': 2, 'add': 3}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from itertools import pairwise

import networkx as nx

__all__ = [
    "Layout",
    "count_crossings",
    "layout",
    "longest_path_layers",
    "order_layers",
    "place",
    "split_long_edges",
]

Node = Hashable


@dataclass(frozen=True)
class _Dummy:
    """A bend point of a long edge, one per layer it crosses."""

    source: Node
    target: Node
    layer: int


@dataclass(frozen=True)
class Layout:
    """Where everything goes: node centers, each edge's points (source to target, through its
    bends), and the drawing's size."""

    positions: dict[Node, tuple[float, float]]
    edges: dict[tuple[Node, Node], list[tuple[float, float]]]
    width: float
    height: float


def longest_path_layers(graph: nx.DiGraph) -> dict[Node, int]:
    """{node: layer}: 0 for a node without predecessors, else one below its lowest
    predecessor."""
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("a layered layout needs a directed acyclic graph")
    layers: dict[Node, int] = {}
    for node in nx.topological_sort(graph):
        layers[node] = max((layers[p] + 1 for p in graph.predecessors(node)), default=0)
    return layers


def split_long_edges(
    graph: nx.DiGraph, layers: Mapping[Node, int]
) -> tuple[nx.DiGraph, dict[Node, int], dict[tuple[Node, Node], list[Node]]]:
    """(the graph with every edge spanning more than one layer replaced by a chain of dummy
    nodes, the layers of all its nodes, {original edge: its dummies in order})."""
    proper = nx.DiGraph()
    proper.add_nodes_from(graph.nodes)
    all_layers = dict(layers)
    chains: dict[tuple[Node, Node], list[Node]] = {}
    for source, target in graph.edges:
        dummies = [
            _Dummy(source, target, layer) for layer in range(layers[source] + 1, layers[target])
        ]
        for dummy in dummies:
            all_layers[dummy] = dummy.layer
        path = [source, *dummies, target]
        proper.add_edges_from(pairwise(path))
        chains[(source, target)] = dummies
    return proper, all_layers, chains


def _crossings_between(upper: list[Node], lower: list[Node], graph: nx.DiGraph) -> int:
    """Crossings of the edges between two adjacent layers."""
    position = {node: index for index, node in enumerate(lower)}
    ends = [
        (index, position[target])
        for index, node in enumerate(upper)
        for target in graph.successors(node)
        if target in position
    ]
    return sum(
        1
        for i, (top_a, bottom_a) in enumerate(ends)
        for top_b, bottom_b in ends[i + 1 :]
        if (top_a - top_b) * (bottom_a - bottom_b) < 0
    )


def count_crossings(levels: list[list[Node]], graph: nx.DiGraph) -> int:
    """Edge crossings of a layered drawing whose edges join adjacent layers."""
    return sum(_crossings_between(upper, lower, graph) for upper, lower in pairwise(levels))


def _by_barycenter(
    level: list[Node], neighbours: Mapping[Node, list[Node]], fixed: list[Node]
) -> list[Node]:
    """``level`` sorted by the mean position of each node's neighbours in the ``fixed`` layer;
    a node without neighbours there keeps its place."""
    position = {node: index for index, node in enumerate(fixed)}
    keys = []
    for index, node in enumerate(level):
        seen = [position[other] for other in neighbours[node] if other in position]
        keys.append(sum(seen) / len(seen) if seen else float(index))
    order = sorted(range(len(level)), key=lambda index: (keys[index], index))
    return [level[index] for index in order]


def order_layers(levels: list[list[Node]], graph: nx.DiGraph, sweeps: int = 4) -> list[list[Node]]:
    """Each layer's order after ``sweeps`` down-and-up barycenter sweeps: the orders seen with
    the fewest crossings (the first such, so the result is deterministic)."""
    predecessors = {node: list(graph.predecessors(node)) for node in graph.nodes}
    successors = {node: list(graph.successors(node)) for node in graph.nodes}
    current = [list(level) for level in levels]
    best, fewest = [list(level) for level in current], count_crossings(current, graph)
    for _ in range(sweeps):
        for index in range(1, len(current)):
            current[index] = _by_barycenter(current[index], predecessors, current[index - 1])
        for index in range(len(current) - 2, -1, -1):
            current[index] = _by_barycenter(current[index], successors, current[index + 1])
        crossings = count_crossings(current, graph)
        if crossings < fewest:
            best, fewest = [list(level) for level in current], crossings
    return best


def _spread(
    level: list[Node], wanted: Mapping[Node, float], widths: Mapping[Node, float], gap: float
) -> dict[Node, float]:
    """x of each node in order: as close to ``wanted`` as the nodes' widths allow, with at
    least ``gap`` between neighbours, shifted so that the mean displacement is zero."""
    x: dict[Node, float] = {}
    previous = None
    for node in level:
        least = (
            float("-inf")
            if previous is None
            else x[previous] + (widths[previous] + widths[node]) / 2 + gap
        )
        x[node] = max(wanted[node], least)
        previous = node
    shift = sum(x[node] - wanted[node] for node in level) / len(level)
    return {node: value - shift for node, value in x.items()}


def place(
    levels: list[list[Node]],
    graph: nx.DiGraph,
    sizes: Mapping[Node, tuple[float, float]],
    gap: float = 16.0,
    rank_gap: float = 36.0,
    passes: int = 4,
) -> dict[Node, tuple[float, float]]:
    """{node: (x, y) center}: layers top to bottom ``rank_gap`` apart; along each, nodes drawn
    towards their neighbours' mean x (down and up ``passes`` times), never overlapping."""
    widths = {node: sizes[node][0] for level in levels for node in level}
    x: dict[Node, float] = {}
    for level in levels:  # start packed, centered on 0
        x.update(_spread(level, dict.fromkeys(level, 0.0), widths, gap))
    neighbours_up = {node: list(graph.predecessors(node)) for node in graph.nodes}
    neighbours_down = {node: list(graph.successors(node)) for node in graph.nodes}
    for _ in range(passes):
        for order, neighbours in ((levels[1:], neighbours_up), (levels[-2::-1], neighbours_down)):
            for level in order:
                wanted = {}
                for node in level:
                    seen = [x[other] for other in neighbours[node]]
                    wanted[node] = sum(seen) / len(seen) if seen else x[node]
                x.update(_spread(level, wanted, widths, gap))
    positions = {}
    top = 0.0
    for level in levels:
        height = max(sizes[node][1] for node in level)
        for node in level:
            positions[node] = (x[node], top + height / 2)
        top += height + rank_gap
    return positions


def layout(
    graph: nx.DiGraph,
    sizes: Mapping[Node, tuple[float, float]],
    margin: float = 8.0,
    bend_width: float = 8.0,
) -> Layout:
    """The layered layout of a DAG whose nodes have (width, height) ``sizes``."""
    if graph.number_of_nodes() == 0:
        return Layout({}, {}, 2 * margin, 2 * margin)
    layers = longest_path_layers(graph)
    proper, all_layers, chains = split_long_edges(graph, layers)
    levels: list[list[Node]] = [[] for _ in range(max(all_layers.values()) + 1)]
    for node in proper.nodes:  # insertion order: graph order first, then the dummies
        levels[all_layers[node]].append(node)
    levels = order_layers(levels, proper)
    all_sizes = {node: sizes.get(node, (bend_width, 0.0)) for node in proper.nodes}
    centers = place(levels, proper, all_sizes)
    left = min(x - all_sizes[node][0] / 2 for node, (x, _) in centers.items())
    right = max(x + all_sizes[node][0] / 2 for node, (x, _) in centers.items())
    bottom = max(y + all_sizes[node][1] / 2 for node, (_, y) in centers.items())
    shifted = {node: (x - left + margin, y + margin) for node, (x, y) in centers.items()}
    edges = {}
    for (source, target), dummies in chains.items():
        (sx, sy), (tx, ty) = shifted[source], shifted[target]
        bends = [shifted[dummy] for dummy in dummies]
        edges[(source, target)] = [
            (sx, sy + all_sizes[source][1] / 2),
            *bends,
            (tx, ty - all_sizes[target][1] / 2),
        ]
    positions = {node: shifted[node] for node in graph.nodes}
    return Layout(positions, edges, right - left + 2 * margin, bottom + 2 * margin)
