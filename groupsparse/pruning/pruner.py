"""The Pruner keeps masks on a model's conv and linear weights while it trains; prune() is the
one-shot form.

How masked weights stay exactly zero while a Pruner is attached:

- a gradient hook on each pruned weight zeroes the gradient of the pruned entries, so
  optimizer states (momentum, Adam moments) see no gradient there;
- a global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``)
  zeroes the pruned entries again after every optimizer step, which undoes what momentum
  from before the mask and decoupled weight decay would otherwise move.

Weights are not touched in forward hooks, so any number of forwards may run before a backward.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..layers import from_gemm_view, gemm_shape, gemm_view, layer_kind, out_first, prunable_layers
from ..patterns import Pattern, resolve_pattern
from .allocation import (
    Allocation,
    Exclude,
    final_targets,
    global_allocation,
    not_accelerated,
    select_layers,
    skipped_summary,
)
from .arguments import (
    check_calibration,
    check_fixed_sparsity,
    check_gradual_start,
    check_plain_weights,
)
from .criteria import Criterion, resolve_criterion, taylor_saliency
from .schedules import OneShot, Schedule
from .sharding import (
    is_sharded,
    like_weight,
    same_on_every_rank,
    sum_over_ranks,
    whole_tensor,
)

__all__ = ["Pruner", "existing_masks", "prune"]

# Pruners whose hooks are on a model now; existing_masks reads their masks
_ATTACHED: list[Pruner] = []


def _weight_name(layer: str) -> str:
    return f"{layer}.weight" if layer else "weight"


class Pruner:
    """Masks on the weights of a model's conv and linear layers that follow a schedule.

    By default only the layers the compiler can make faster are pruned: grouped and depthwise
    convs, conv1d and conv3d, and weights tied to an embedding or shared by two modules are
    left dense, with a warning that lists them and why (:attr:`skipped`).
    ``accelerated_only=False`` prunes every conv and linear layer, for those who prune for size.

    Construction validates every argument (an error leaves the model as it was), then, when the
    schedule updates at step 0, computes the masks and zeroes the pruned weights. Call
    :meth:`step` once per training step, after ``optimizer.step()``; masks are recomputed when
    the schedule says so. While attached, pruned weights stay exactly zero through optimizer
    steps. :meth:`remove` bakes the zeros in and detaches every hook.

    Args:
        model: the module whose ``nn.Linear``, ``nn.Conv1d/2d/3d`` and transformers' ``Conv1D``
            weights are pruned.
        pattern: a :class:`~groupsparse.Pattern` or its name ("element", "vector", "block",
            "group", "filter", or an N:M string such as "2:4"); ``pattern_args`` go to it.
        sparsity: the final fraction of weights removed, in [0, 1). An N:M pattern fixes it.
        criterion: "magnitude", "taylor", "random" or a :class:`Criterion`.
        schedule: :class:`OneShot` (default) or :class:`Gradual`.
        allocation: "uniform", "global", or ``{layer name: sparsity}``.
        exclude: layers left dense: ``"first"``, ``"last"``, ``"first_last"``, a list of layer
            names or globs, or a ``callable(name, module) -> bool``.
        calibration, loss_fn: batches and ``loss_fn(model, batch) -> loss`` for "taylor". A
            Pruner without them scores "taylor" with the gradients of the training steps since
            the last update (call :meth:`step` after ``loss.backward()``). For more than one
            update, ``calibration`` must be iterable again (a list or a DataLoader).
        seed: the seed of ``criterion="random"``.
        accelerated_only: skip the layers compile_sparse cannot make faster (default True);
            False prunes them too.

    Masks are in each weight's own shape; patterns apply to its (M, K) GEMM view (for
    transformers' Conv1D, stored (in, out), the transpose). A :class:`Criterion` is handed
    each weight output-first (:func:`~groupsparse.layers.out_first`: a Conv1D weight
    transposed, (out, in)).

    Example::

        pruner = gs.Pruner(model, pattern="group", group_size=32, sparsity=0.9,
                           schedule=gs.Gradual(start=0, end=2000, every=100))
        for batch in loader:
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()
        pruner.remove()

    To resume, build the model, optimizer and Pruner as before, then load the model's, the
    optimizer's and the Pruner's state dicts.

    Under torch.distributed (say, with DistributedDataParallel), build a Pruner on every rank
    with the same arguments and call :meth:`step` on every rank at the same steps: at each
    mask update the "taylor" gradients gathered on each rank are summed over the ranks of the
    default process group (``all_reduce``), and rank 0's masks are broadcast, so every rank
    holds the same masks. ``criterion="random"`` draws the same scores on every rank from its
    seed.

    Under FSDP2 (``torch.distributed.fsdp.fully_shard``), build the Pruner after
    ``fully_shard``: its weights are then the sharded parameters (DTensors), and so are its
    masks, sharded as the weights are. At each mask update the scores are computed from the
    whole weights (gathered from every rank), so every rank computes the same masks, equal to
    those of one process that trained on all the ranks' batches; "taylor" scores the gradients
    FSDP has already averaged over the ranks (``|w * dL/dw|`` of the global batch's loss).
    ``calibration=`` is refused there (its gradients would not reach the sharded weights).
    """

    def __init__(
        self,
        model: nn.Module,
        pattern: str | Pattern = "group",
        sparsity: float | None = None,
        criterion: str | Criterion = "magnitude",
        *,
        schedule: Schedule | None = None,
        allocation: Allocation = "uniform",
        exclude: Exclude = None,
        calibration: Iterable[Any] | None = None,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        seed: int | None = None,
        accelerated_only: bool = True,
        **pattern_args: Any,
    ) -> None:
        # Everything is checked before anything on the model changes.
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        pattern = resolve_pattern(pattern, **pattern_args)
        criterion = resolve_criterion(criterion, **({} if seed is None else {"seed": seed}))
        schedule = OneShot() if schedule is None else schedule
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be OneShot(...) or Gradual(...); got {schedule!r}")
        sparsity = check_fixed_sparsity(pattern, sparsity, allocation, schedule)
        if not isinstance(accelerated_only, bool):
            raise TypeError(f"accelerated_only must be True or False; got {accelerated_only!r}")
        all_layers = [name for name, _ in prunable_layers(model)]
        layers = select_layers(model, exclude)
        skipped = not_accelerated(model, layers) if accelerated_only else {}
        if skipped and len(skipped) == len(layers):
            raise ValueError("no layer left to prune: " + skipped_summary(skipped, len(all_layers)))
        layers = {name: module for name, module in layers.items() if name not in skipped}
        targets = final_targets(allocation, sparsity, layers, all_layers, skipped)
        if targets is not None:
            layers = {name: layers[name] for name in targets}
        attached = {id(weight) for pruner in _ATTACHED for weight in pruner._weights.values()}
        check_plain_weights(layers, attached)
        check_gradual_start(schedule, sparsity, targets)
        check_calibration(criterion, calibration, loss_fn, layers)

        self.model = model
        self.pattern = pattern
        self.criterion = criterion
        self.schedule = schedule
        self.step_count = 0
        self._target = sparsity
        self._targets = targets  # {layer: final sparsity}, or None for global allocation
        self._layers = layers
        self._weights = {_weight_name(name): module.weight for name, module in layers.items()}
        self._kinds = {_weight_name(name): layer_kind(module) for name, module in layers.items()}
        self._skipped = skipped
        self._calibration = calibration
        self._loss_fn = loss_fn
        # "taylor" without calibration: sum |w * grad| in the gradient hooks between updates
        self._accumulate = criterion.needs_saliency and calibration is None
        self._saliency = (
            {
                name: torch.zeros_like(weight, dtype=torch.float32)
                for name, weight in self._weights.items()
            }
            if self._accumulate
            else {}
        )
        self._saliency_seen = False
        self._masks = {
            name: torch.ones_like(weight, dtype=torch.bool)
            for name, weight in self._weights.items()
        }
        self._layer_sparsity = dict.fromkeys(layers, 0.0)
        self._handles: list[Any] = []

        if schedule.updates_at(0):
            if self._accumulate and self._goal_at(0) > 0:
                raise ValueError(
                    "criterion 'taylor' needs calibration data to prune at step 0: pass "
                    "calibration=<iterable of batches> and loss_fn=<callable(model, batch) -> loss>"
                )
            masks, layer_sparsity = self._compute_masks(0)
        else:
            masks, layer_sparsity = self._masks, self._layer_sparsity
        self._attach()
        self._apply(masks, layer_sparsity)
        if skipped:
            warnings.warn(skipped_summary(skipped, len(all_layers)), stacklevel=_user_frame())

    # -- what users read -------------------------------------------------------------------

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """{parameter name: boolean mask of the weight's shape} (True = kept)."""
        return dict(self._masks)

    @property
    def skipped(self) -> dict[str, str]:
        """{layer name: why} of the layers left unpruned because the compiler cannot make them
        faster (empty with ``accelerated_only=False``)."""
        return dict(self._skipped)

    @property
    def layer_sparsities(self) -> dict[str, float]:
        """{layer name: the sparsity its mask was made for}, at the current step."""
        return dict(self._layer_sparsity)

    @property
    def sparsity(self) -> float:
        """The current target: the element-weighted average of :attr:`layer_sparsities`."""
        sizes = {name: self._weights[_weight_name(name)].numel() for name in self._layers}
        return sum(self._layer_sparsity[name] * size for name, size in sizes.items()) / sum(
            sizes.values()
        )

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model (until :meth:`remove`)."""
        return bool(self._handles)

    def __repr__(self) -> str:
        return (
            f"Pruner({self.pattern.describe()}, criterion={self.criterion.name!r}, "
            f"sparsity={self.sparsity:.4f}, step={self.step_count}, layers={len(self._layers)}, "
            f"attached={self.attached})"
        )

    # -- what users call -------------------------------------------------------------------

    def step(self) -> None:
        """Count one training step; recompute the masks when the schedule updates at it."""
        self._check_attached("step")
        self._check_same_parameters()
        step = self.step_count + 1
        update = self._compute_masks(step) if self.schedule.updates_at(step) else None
        self.step_count = step
        if update is not None:
            self._apply(*update)
            if self._accumulate:  # the next update scores the gradients that come after this one
                for value in self._saliency.values():
                    value.zero_()
                self._saliency_seen = False

    def remove(self) -> None:
        """Zero the pruned weights for good and detach every hook; the model is plain again."""
        self._check_attached("remove")
        self._zero_pruned()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        _ATTACHED.remove(self)

    def state_dict(self) -> dict[str, Any]:
        """Masks, step and accumulated gradients: what resuming needs besides the model's and
        the optimizer's own state dicts."""
        return {
            "step": self.step_count,
            "masks": {name: mask.clone() for name, mask in self._masks.items()},
            "layer_sparsities": dict(self._layer_sparsity),
            "saliency": {name: value.clone() for name, value in self._saliency.items()},
            "saliency_seen": self._saliency_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks and step from :meth:`state_dict`; the pruned weights are zeroed."""
        self._check_attached("load_state_dict")
        missing = {"step", "masks", "layer_sparsities"} - set(state)
        if missing:
            raise ValueError(f"not a Pruner state dict: missing {sorted(missing)}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state['step'] must be an integer >= 0; got {step!r}")
        masks = state["masks"]
        if set(masks) != set(self._masks):
            raise ValueError(
                f"the state's masks are for {sorted(masks)}, this Pruner prunes {sorted(self._masks)}"
            )
        for name, mask in masks.items():
            weight = self._weights[name]
            if (
                not isinstance(mask, torch.Tensor)
                or mask.dtype != torch.bool
                or mask.shape != weight.shape
            ):
                raise ValueError(
                    f"state['masks'][{name!r}] must be a boolean tensor of shape {tuple(weight.shape)}"
                )
        layer_sparsity = {name: float(value) for name, value in state["layer_sparsities"].items()}
        if set(layer_sparsity) != set(self._layers):
            raise ValueError(
                f"state['layer_sparsities'] must name the layers {sorted(self._layers)}"
            )
        saliency = state.get("saliency", {})
        if self._accumulate and set(saliency) == set(self._saliency):
            for name, value in saliency.items():
                self._saliency[name].copy_(value)
            self._saliency_seen = bool(state.get("saliency_seen", False))
        self.step_count = step
        self._apply(
            {name: like_weight(mask, self._weights[name]) for name, mask in masks.items()},
            layer_sparsity,
        )

    # -- inside ------------------------------------------------------------------------------

    def _goal_at(self, step: int) -> float:
        """The largest layer sparsity the schedule asks for at ``step``."""
        if self._targets is None:
            return self.schedule.sparsity_at(step, self._target)
        return max(self.schedule.sparsity_at(step, target) for target in self._targets.values())

    def _compute_masks(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if self._goal_at(step) == 0:
            masks = {
                name: torch.ones_like(weight, dtype=torch.bool)
                for name, weight in self._weights.items()
            }
            return masks, dict.fromkeys(self._layers, 0.0)
        scores = self._scores(step)
        if self._targets is None:
            layer_sparsity = global_allocation(
                scores, self.pattern, self.schedule.sparsity_at(step, self._target)
            )
        else:
            layer_sparsity = {
                name: self.schedule.sparsity_at(step, target)
                for name, target in self._targets.items()
            }
        masks = {}
        for layer, layer_goal in layer_sparsity.items():
            name = _weight_name(layer)
            weight = self._weights[name]
            if layer_goal == 0:
                mask = torch.ones(weight.shape, dtype=torch.bool, device=scores[layer].device)
            else:
                mask = from_gemm_view(
                    self.pattern.mask(scores[layer], layer_goal), weight.shape, self._kinds[name]
                )
            masks[name] = mask
        # whole masks (sharded weights: from the gathered scores), then each in its weight's
        # layout: a DTensor sharded as the weight is
        masks, layer_sparsity = same_on_every_rank(masks, layer_sparsity)
        return {name: like_weight(mask, self._weights[name]) for name, mask in masks.items()}, (
            layer_sparsity
        )

    def _scores(self, step: int) -> dict[str, torch.Tensor]:
        """{layer: (M, K) scores}, with already pruned weights at 0 so that masks only grow sparser."""
        saliency = None
        if self.criterion.needs_saliency:
            if self._calibration is not None:
                saliency = taylor_saliency(
                    self.model, self._weights, self._calibration, self._loss_fn
                )
                seen = True
            else:
                saliency, seen = self._saliency, self._saliency_seen
            # under torch.distributed every rank saw its own batches: score with the sum
            saliency, ranks_seen, ranks = sum_over_ranks(saliency, seen)
            saliency = {
                name: out_first(whole_tensor(value), self._kinds[name])
                for name, value in saliency.items()
            }
            if ranks_seen < ranks:
                on_ranks = "" if ranks == 1 else f" on {ranks - ranks_seen} of {ranks} ranks"
                raise RuntimeError(
                    f"criterion 'taylor' has no gradients at step {step}{on_ranks}: call "
                    "pruner.step() after loss.backward(), or pass calibration= and loss_fn= to "
                    "the Pruner"
                )
        weights = {
            name: out_first(whole_tensor(weight).detach(), self._kinds[name])
            for name, weight in self._weights.items()
        }
        scores = self.criterion.score(weights, saliency)
        result = {}
        for layer in self._layers:
            name = _weight_name(layer)
            layer_scores = scores[name]
            kind = self._kinds[name]
            expected = gemm_shape(self._weights[name].shape, kind)
            if tuple(layer_scores.shape) != expected:
                raise ValueError(
                    f"criterion {self.criterion!r} gave scores of shape {tuple(layer_scores.shape)} "
                    f"for {name!r}; the (M, K) view is {expected}"
                )
            if not torch.isfinite(layer_scores).all() or (layer_scores < 0).any():
                raise ValueError(
                    f"criterion {self.criterion!r} gave negative or non-finite scores for {name!r} "
                    "(are the weights and gradients finite?)"
                )
            result[layer] = layer_scores * gemm_view(whole_tensor(self._masks[name]), kind).to(
                layer_scores.device
            )
        return result

    def _apply(self, masks: dict[str, torch.Tensor], layer_sparsity: dict[str, float]) -> None:
        self._masks = masks
        self._layer_sparsity = layer_sparsity
        self._zero_pruned()

    def _zero_pruned(self, *_: Any) -> None:
        with torch.no_grad():
            for name, weight in self._weights.items():
                weight.masked_fill_(~self._masks[name], 0)

    def _mask_gradient(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        if self._accumulate:
            with torch.no_grad():
                self._saliency[name].add_((self._weights[name] * gradient).abs().float())
            self._saliency_seen = True
        return gradient.masked_fill(~self._masks[name], 0)

    def _mask_sharded_gradient(self, name: str, weight: torch.Tensor) -> None:
        """A sharded weight's gradient, once FSDP has reduced it over the ranks into
        ``weight.grad``: scored and masked in place."""
        gradient = weight.grad
        if self._accumulate:
            with torch.no_grad():
                self._saliency[name].add_((weight * gradient).abs().float())
            self._saliency_seen = True
        gradient.masked_fill_(~self._masks[name], 0)

    def _attach(self) -> None:
        for name, weight in self._weights.items():
            if is_sharded(weight):
                # FSDP2 computes with an unsharded copy and writes the reduced gradient into
                # the sharded weight's .grad: a tensor hook on the sharded weight never runs
                handle = weight.register_post_accumulate_grad_hook(
                    lambda weight, name=name: self._mask_sharded_gradient(name, weight)
                )
            else:
                handle = weight.register_hook(
                    lambda gradient, name=name: self._mask_gradient(name, gradient)
                )
            self._handles.append(handle)
        self._handles.append(register_optimizer_step_post_hook(self._zero_pruned))
        _ATTACHED.append(self)

    def _check_attached(self, method: str) -> None:
        if not self._handles:
            raise RuntimeError(f"Pruner.{method}() after remove(): this Pruner is detached")

    def _check_same_parameters(self) -> None:
        """The weights the Pruner masks are still the model's: fully_shard (FSDP2) replaces a
        module's parameters with sharded ones, which a Pruner built before it never sees."""
        for name, weight in self._weights.items():
            if self.model.get_parameter(name) is not weight:
                raise RuntimeError(
                    f"the model's parameter {name!r} is no longer the one this Pruner masks: it "
                    "was replaced after the Pruner was built (by FSDP2's fully_shard?). Build "
                    "the Pruner after fully_shard (or after whatever replaced the parameters)"
                )


def _user_frame() -> int:
    """The ``stacklevel`` of the first caller outside groupsparse (gs.prune or Pruner's user),
    so that a warning points at the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("groupsparse."):
        frame, level = frame.f_back, level + 1
    return level


def existing_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: boolean mask} of the masks already on ``model``.

    Reads the ``<name>_orig`` / ``<name>_mask`` pairs of ``torch.nn.utils.prune`` and the masks
    of any attached :class:`Pruner` (names as ``model`` sees them). Where both mask one weight,
    a weight is kept only if both keep it.

    >>> torch.nn.utils.prune.l1_unstructured(model.fc, "weight", amount=0.5)
    >>> existing_masks(model)["fc.weight"].float().mean()
    tensor(0.5000)
    """
    masks: dict[str, torch.Tensor] = {}

    def add(name: str, mask: torch.Tensor) -> None:
        masks[name] = masks[name] & mask if name in masks else mask

    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for buffer_name, buffer in module.named_buffers(recurse=False):
            base = buffer_name.removesuffix("_mask")
            if base != buffer_name and f"{base}_orig" in module._parameters:
                add(prefix + base, buffer.bool())
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    for pruner in _ATTACHED:
        for name, weight in pruner._weights.items():
            if id(weight) in names:
                add(names[id(weight)], pruner._masks[name])
    return masks


def prune(
    model: nn.Module,
    pattern: str | Pattern = "group",
    sparsity: float | None = None,
    criterion: str | Criterion = "magnitude",
    *,
    allocation: Allocation = "uniform",
    exclude: Exclude = None,
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    seed: int | None = None,
    accelerated_only: bool = True,
    **pattern_args: Any,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in one shot: zero its pruned weights in place and return the masks,
    {parameter name: boolean mask of the weight's shape} (True = kept).

    Arguments are those of :class:`Pruner`; "taylor" needs ``calibration`` and ``loss_fn``.
    An error leaves the model as it was. By default the layers the compiler cannot make
    faster are left dense, with a warning that lists them and why; ``accelerated_only=False``
    prunes every conv and linear layer (for size).

    >>> masks = gs.prune(model, pattern="group", sparsity=0.75, group_size=32)
    >>> masks["features.0.weight"].shape == model.features[0].weight.shape
    True
    """
    pruner = Pruner(
        model,
        pattern,
        sparsity,
        criterion,
        schedule=OneShot(),
        allocation=allocation,
        exclude=exclude,
        calibration=calibration,
        loss_fn=loss_fn,
        seed=seed,
        accelerated_only=accelerated_only,
        **pattern_args,
    )
    pruner.remove()
    return pruner.masks
