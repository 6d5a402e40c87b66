"""capture: a model as an fx GraphModule - torch.fx.symbolic_trace where it can follow the
model, torch.export (non-strict, dynamic sizes) where it cannot (transformers' BERT, ViT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

__all__ = ["CaptureError", "capture"]


class CaptureError(RuntimeError):
    """Neither symbolic tracing nor torch.export could capture the model."""


def _export(model: nn.Module, example_inputs: tuple[Any, ...]) -> fx.GraphModule:
    import torch.fx.experimental._config as symbolic_config
    from torch.export import Dim

    # export specializes sizes of 0 and 1, so a batch of one would fix the batch size:
    # trace with the batch doubled, and mark every size dynamic. Trace contiguous inputs: a
    # channels_last example adds guards on its strides that tie the batch size to the image
    # size (so a later batch of 0 failed "x.size()[0] >= x.size()[2] // 3").
    traced_inputs = tuple(
        (torch.cat([value, value]) if value.dim() and value.shape[0] == 1 else value).contiguous()
        if isinstance(value, torch.Tensor)
        else value
        for value in example_inputs
    )
    dims = tuple(
        {axis: Dim.AUTO for axis in range(value.dim())} if isinstance(value, torch.Tensor) else None
        for value in traced_inputs
    )
    try:
        # size-oblivious: no guards that a dynamic size is not 0 or 1 (a batch of one and
        # an empty batch were refused, and a batch-1 example failed its own guards)
        with symbolic_config.patch(backed_size_oblivious=True):
            module = torch.export.export(
                model, traced_inputs, dynamic_shapes=dims, strict=False
            ).module()
        with torch.no_grad():
            module(*example_inputs)  # some guards still refuse the example itself (N > 1)
        return module
    except Exception:  # noqa: BLE001 (some models export only with the example's static sizes)
        return torch.export.export(model, example_inputs, strict=False).module()


def _without_string_annotations(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop input annotations that are strings (``from __future__ import annotations``): fx
    cannot write an import for them, so torch.save of the compiled module would fail."""
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    gm.recompile()
    return gm


def capture(
    model: nn.Module, example_inputs: tuple[Any, ...], how: str = "auto"
) -> tuple[fx.GraphModule, str]:
    """(GraphModule, how it was captured: "symbolic_trace" or "export")."""
    if how not in ("auto", "symbolic_trace", "export"):
        raise ValueError(f"capture must be 'auto', 'symbolic_trace' or 'export'; got {how!r}")
    errors = []
    if how in ("auto", "symbolic_trace"):
        try:
            return _without_string_annotations(fx.symbolic_trace(model)), "symbolic_trace"
        except Exception as error:  # noqa: BLE001 (tracing fails in many ways; all are reported)
            errors.append(f"symbolic_trace: {type(error).__name__}: {error}")
    if how in ("auto", "export"):
        try:
            return _export(model, example_inputs), "export"
        except Exception as error:  # noqa: BLE001 (reported in the CaptureError)
            errors.append(f"torch.export: {type(error).__name__}: {error}")
    raise CaptureError(
        f"could not capture {type(model).__name__} as a graph:\n  "
        + "\n  ".join(errors)
        + "\nTry torch.compile(model, backend='groupsparse'), which compiles the parts Dynamo can capture."
    )
