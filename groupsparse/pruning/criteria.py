"""Criteria: how important each weight is, as a score on the (M, K) view (higher = kept).

A criterion scores single weights; the pattern sums the scores over its unit (a group's
column, a tile, a row), so ``Magnitude(norm=1)`` ranks units by their L1 norm and
``Magnitude(norm=2)`` by their squared L2 norm.

>>> import groupsparse as gs
>>> gs.resolve_criterion("magnitude")
Magnitude(norm=1)
>>> gs.resolve_criterion("random", seed=3)
Random(seed=3)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._resolve import resolve_by_name
from ..layers import gemm_view

__all__ = [
    "CRITERION_NAMES",
    "Criterion",
    "Magnitude",
    "Random",
    "Taylor",
    "resolve_criterion",
    "taylor_saliency",
]


class Criterion(ABC):
    """Scores weights elementwise; subclasses are frozen dataclasses.

    Scores are finite and non-negative, one per weight, on each weight's (M, K) view.
    """

    name: ClassVar[str] = "criterion"
    # True when scoring needs the accumulated |w * dL/dw| of each weight (the "saliency")
    needs_saliency: ClassVar[bool] = False

    @abstractmethod
    def score(
        self,
        weights: Mapping[str, torch.Tensor],
        saliency: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """{name: (M, K) scores} for {name: weight}."""


@dataclass(frozen=True)
class Magnitude(Criterion):
    """``|w|`` (``norm=1``) or ``w ** 2`` (``norm=2``): units rank by their L1 or L2 norm."""

    norm: int = 1
    name: ClassVar[str] = "magnitude"

    def __post_init__(self) -> None:
        if self.norm not in (1, 2) or isinstance(self.norm, bool):
            raise ValueError(f"norm must be 1 (L1) or 2 (L2); got {self.norm!r}")

    def score(self, weights, saliency=None):
        with torch.no_grad():
            if self.norm == 1:
                return {name: gemm_view(weight).abs() for name, weight in weights.items()}
            return {name: gemm_view(weight).square() for name, weight in weights.items()}


@dataclass(frozen=True)
class Taylor(Criterion):
    """First-order Taylor importance, ``|w * dL/dw|`` summed over batches.

    The sums come from calibration batches (:func:`taylor_saliency`) or, in a
    :class:`~groupsparse.Pruner` without calibration data, from the gradients of the training
    steps since the last mask update.
    """

    name: ClassVar[str] = "taylor"
    needs_saliency: ClassVar[bool] = True

    def score(self, weights, saliency=None):
        if saliency is None:
            raise ValueError(
                "criterion 'taylor' needs gradients: pass calibration=<iterable of batches> and "
                "loss_fn=<callable(model, batch) -> loss>"
            )
        missing = sorted(set(weights) - set(saliency))
        if missing:
            raise ValueError(f"criterion 'taylor' has no gradients for {missing}")
        return {name: gemm_view(saliency[name]) for name in weights}


@dataclass(frozen=True)
class Random(Criterion):
    """Uniform random scores from ``seed``: the baseline every criterion should beat.

    The same seed gives the same scores for the same weights, in the same order.
    """

    seed: int = 0
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer; got {self.seed!r}")

    def score(self, weights, saliency=None):
        generator = torch.Generator().manual_seed(self.seed)
        scores = {}
        for name, weight in weights.items():
            # 1 - U[0, 1) lies in (0, 1]: every unpruned weight scores above a pruned one (0)
            draw = 1.0 - torch.rand(
                gemm_view(weight).shape, generator=generator, dtype=torch.float64
            )
            scores[name] = draw.to(weight.device)
        return scores


_BY_NAME: dict[str, type[Criterion]] = {"magnitude": Magnitude, "taylor": Taylor, "random": Random}
CRITERION_NAMES = tuple(_BY_NAME)


def resolve_criterion(criterion: str | Criterion, **criterion_args: Any) -> Criterion:
    """A Criterion from a name ("magnitude", "taylor", "random") and its arguments, or the
    Criterion itself.

    >>> resolve_criterion("magnitude", norm=2)
    Magnitude(norm=2)
    """
    return resolve_by_name(
        "criterion", criterion, Criterion, _BY_NAME, CRITERION_NAMES, criterion_args
    )


def taylor_saliency(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    calibration: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``sum over batches of |w * dL/dw|`` for each weight in ``weights``.

    The batches run in eval mode (so batch-norm statistics and dropout are left alone) and
    the gradients come from ``torch.autograd.grad``, so the model's ``.grad`` fields, its
    buffers and its train/eval modes are as they were afterwards.

    >>> saliency = taylor_saliency(model, {"fc.weight": model.fc.weight}, batches,
    ...                            lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]))
    """
    names = list(weights)
    tensors = [weights[name] for name in names]
    frozen = [name for name, tensor in zip(names, tensors) if not tensor.requires_grad]
    if frozen:
        raise ValueError(
            f"criterion 'taylor' needs gradients of {frozen}, which have requires_grad=False; "
            "exclude those layers (exclude=[...]) or unfreeze them"
        )
    modes = {module: module.training for module in model.modules()}
    totals = [torch.zeros_like(tensor, dtype=torch.float32) for tensor in tensors]
    batches = 0
    model.eval()
    try:
        for batch in calibration:
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                if (
                    not isinstance(loss, torch.Tensor)
                    or loss.numel() != 1
                    or not loss.requires_grad
                ):
                    raise ValueError(
                        "loss_fn(model, batch) must return a scalar tensor that depends on the "
                        f"weights; got {_describe(loss)}"
                    )
                gradients = torch.autograd.grad(loss.reshape(()), tensors, allow_unused=True)
            with torch.no_grad():
                for total, tensor, gradient in zip(totals, tensors, gradients):
                    if gradient is not None:
                        total.add_((tensor * gradient).abs().float())
            batches += 1
    finally:
        for module, training in modes.items():
            module.training = training  # not .train(), which would also set the children
    if batches == 0:
        raise ValueError("calibration gave no batches; criterion 'taylor' needs at least one")
    return dict(zip(names, totals))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} (requires_grad={value.requires_grad})"
    return type(value).__name__
