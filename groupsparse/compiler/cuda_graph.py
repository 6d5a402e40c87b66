"""Replaying a compiled model from CUDA graphs (``compile_sparse(..., cuda_graph=True)``).

Why: on a GPU each groupsparse kernel costs 80-180 us of Python launch work (measured on an
H200, README), more than most layers' GPU time at batch 32. Replayed from a graph, a
forward costs its kernels' time alone.

``GraphReplay`` wraps a callable. For each new input signature (shapes, strides, dtypes,
devices of the tensors; the other arguments' values) it warms the callable up on a side
stream, captures one call into a CUDA graph over static copies of the inputs, and keeps it;
each call then copies the inputs into those copies, replays, and returns clones of the
outputs (so that a later call cannot overwrite what an earlier one returned). Calls that a
graph cannot serve run as they are: inputs that need gradients, or tensors off the GPU.
At most ``max_graphs`` signatures are kept (least recently used goes first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..timing import capture_cuda_graph

__all__ = ["GraphReplay"]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Any]  # static copies of the positional inputs (non-tensors as given)
    output: Any


def _signature(args: tuple[Any, ...]) -> tuple | None:
    """What a captured graph depends on, or None when no graph can serve these inputs."""
    key = []
    for value in args:
        if isinstance(value, torch.Tensor):
            if value.device.type != "cuda" or value.requires_grad:
                return None
            key.append((tuple(value.shape), value.stride(), value.dtype, value.device))
        else:
            try:
                hash(value)
            except TypeError:
                return None
            key.append(("value", type(value), value))
    return tuple(key)


class GraphReplay:
    """``run(*args)`` replayed from one CUDA graph per input signature."""

    def __init__(self, run: Callable[..., Any], max_graphs: int = 8) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1; got {max_graphs}")
        self.run = run
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = None if kwargs else _signature(args)
        if key is None or torch.cuda.is_current_stream_capturing():
            return self.run(*args, **kwargs)
        with self._lock, torch.no_grad(), torch.cuda.device(inputs_device(args)):
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(args)
                self._graphs[key] = captured
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            for static, value in zip(captured.inputs, args, strict=True):
                if isinstance(static, torch.Tensor):
                    static.copy_(value)
            captured.graph.replay()
            return pytree.tree_map(
                lambda value: value.clone() if isinstance(value, torch.Tensor) else value,
                captured.output,
            )

    def _capture(self, args: tuple[Any, ...]) -> _Captured:
        inputs = [
            torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device).copy_(v)
            if isinstance(v, torch.Tensor)
            else v
            for v in args
        ]
        graph, output = capture_cuda_graph(lambda: self.run(*inputs), warmup=2)
        return _Captured(graph, inputs, output)

    def __getstate__(self) -> dict[str, Any]:
        # graphs hold device memory and cannot be pickled: a copy captures its own
        return {"run": self.run, "max_graphs": self.max_graphs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run"], state["max_graphs"])

    def clear(self) -> None:
        """Drop every captured graph (and the memory it holds)."""
        with self._lock:
            self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)


def inputs_device(args: tuple[Any, ...]) -> torch.device:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cuda", torch.cuda.current_device())
