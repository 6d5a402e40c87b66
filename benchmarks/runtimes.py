"""The dense runtimes a user would deploy, in one precision: PyTorch eager, Inductor (default, or
with freezing, the recommended CPU inference setting) and OpenVINO (the ``bench`` extra).

Each is built from the same float32 torch model and its example inputs, and gives a
``Runtime``: ``run(*float32_inputs)`` for the checks (it casts the inputs itself) and
``timed()`` for one call on the example inputs.

    >>> runtime = dense_runtime("eager", model, example, "bfloat16", threads=2)
    >>> runtime.timed()
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .checks import DTYPES, cast_inputs

__all__ = [
    "DENSE_RUNTIMES",
    "Runtime",
    "Unavailable",
    "compiler_kernels",
    "dense_runtime",
    "torch_runtime",
]

DENSE_RUNTIMES = ("eager", "inductor", "inductor-freezing", "openvino")
_OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# what an OpenVINO compiled model says it runs with (after its own choices for this CPU)
_OPENVINO_PROPERTIES = (
    "INFERENCE_PRECISION_HINT",
    "PERFORMANCE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
)


class Unavailable(Exception):
    """This runtime cannot run on this machine (a package is missing): recorded, not failed."""


@dataclass
class Runtime:
    """One way of running a model."""

    implementation: str
    run: Callable[..., Any]  # run(*float32 inputs) -> outputs
    timed: Callable[[], Any]  # one call on the example inputs
    pool: str = "torch"  # whose thread pool runs it
    details: dict[str, Any] = field(default_factory=dict)


def torch_runtime(
    module: Callable[..., Any],
    example: tuple[torch.Tensor, ...],
    dtype: str,
    implementation: str,
    context: Callable[[], Any] | None = None,
) -> Runtime:
    """A module that takes ``dtype`` inputs (already in ``dtype`` itself); ``context`` wraps
    the calls that may compile (the first one and the checks)."""
    low = cast_inputs(example, DTYPES[dtype])

    def run(*inputs: torch.Tensor) -> Any:
        with torch.no_grad(), context() if context else contextlib.nullcontext():
            return module(*cast_inputs(inputs, DTYPES[dtype]))

    run(*example)  # compiles a lazily compiled module, under ``context``
    return Runtime(implementation, run, lambda: module(*low))


def _inductor(model: nn.Module, example: tuple, dtype: str, freezing: bool) -> Runtime:
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    low = copy.deepcopy(model).to(DTYPES[dtype]).eval()
    compiled = torch.compile(low)
    before = dict(counters["inductor"])
    if not freezing:
        runtime = torch_runtime(compiled, example, dtype, "torch.compile (Inductor, default mode)")
    else:
        runtime = torch_runtime(
            compiled,
            example,
            dtype,
            "torch.compile (Inductor) with torch._inductor.config.freezing = True",
            context=lambda: inductor_config.patch(freezing=True),
        )
    # what Inductor did while compiling it (with freezing: binary_folding, weight packing)
    runtime.details = {
        "freezing": freezing,
        "inductor_counters": {
            key: value - before.get(key, 0)
            for key, value in counters["inductor"].items()
            if value != before.get(key, 0)
        },
    }
    return runtime


def _openvino(model: nn.Module, example: tuple, dtype: str, threads: int) -> Runtime:
    try:
        import openvino as ov
    except ImportError as error:
        raise Unavailable("openvino is not installed (pip install -e '.[bench]')") from error
    if dtype not in _OPENVINO_PRECISION:
        raise Unavailable(f"no OpenVINO precision hint for {dtype}")
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=example)
    config = {
        "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[dtype],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
    }
    compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()
    arrays = [x.numpy() for x in example]
    outputs = len(compiled.outputs)

    def run(*inputs: torch.Tensor) -> list[Any]:
        request.infer([x.numpy() for x in inputs])
        return [request.get_output_tensor(i).data.copy() for i in range(outputs)]

    details = {name: str(compiled.get_property(name)) for name in _OPENVINO_PROPERTIES}
    details["openvino"] = ov.get_version()
    return Runtime(
        f"OpenVINO {ov.__version__}: ov.convert_model of the float32 model, "
        f"INFERENCE_PRECISION_HINT={config['INFERENCE_PRECISION_HINT']} (runs "
        f"{details['INFERENCE_PRECISION_HINT']}), PERFORMANCE_HINT=LATENCY, {threads} threads",
        run,
        lambda: request.infer(arrays, share_inputs=True, share_outputs=True),
        pool="openvino",
        details=details,
    )


def dense_runtime(
    name: str, model: nn.Module, example: tuple[torch.Tensor, ...], dtype: str, threads: int
) -> Runtime:
    """The float32 ``model`` run by runtime ``name`` in ``dtype`` (OpenVINO converts the
    float32 model and computes in ``dtype`` by its precision hint); raises Unavailable."""
    match name:
        case "eager":
            low = model if dtype == "float32" else copy.deepcopy(model).to(DTYPES[dtype])
            return torch_runtime(low.eval(), example, dtype, "PyTorch eager")
        case "inductor" | "inductor-freezing":
            return _inductor(model, example, dtype, freezing=name == "inductor-freezing")
        case "openvino":
            return _openvino(model, example, dtype, threads)
    raise ValueError(f"unknown dense runtime {name!r}; allowed: {DENSE_RUNTIMES}")


def compiler_kernels(device: str = "cpu") -> tuple[str, ...]:
    """The ``compile_sparse(kernel=...)`` names that run on ``device`` (on the CPU "grouped",
    "torch_ops", "loop"), from the kernel registry: the one place in benchmarks/ that reads
    them."""
    from groupsparse.runtime import kernels

    return tuple(dict.fromkeys(k.name for k in kernels.KERNELS if k.runs_on(device)))
