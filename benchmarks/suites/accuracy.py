"""The accuracy suite (issue 6): what each pruning pattern, criterion and schedule costs in
accuracy, on real data (scikit-learn's digits: 1,797 8x8 handwritten digits, no download).

    python -m benchmarks accuracy            # the full study, 3 seeds (prints its estimate)
    python -m benchmarks accuracy --quick    # under 3 minutes: 1 seed, a few patterns at 75%

Three small models (groupsparse.models) are trained per seed on a fixed, stratified split
(``train_test_split(test_size=0.25, random_state=0)``): a VGG-style CNN on the 8x8 images, a
ResNet-style CNN and a ViT on the images upsampled to 16x16. The trained dense model of each
seed is the start of every pruning run of that seed. The first and the last conv/linear layer
stay dense (``exclude="first_last"``); every other one is pruned to the same sparsity.

For each pattern (element; vector 2:4 and 4:8; block 4x4; group G = 8, 16, 32, and G = 8, 16
with the row permutation - the study's time budget leaves out G = 32 with it; filter), each
sparsity (0.5, 0.75, 0.9; N:M patterns at their own) and each criterion (magnitude, taylor),
two schedules:

    one-shot   gs.prune once, no fine-tuning (BatchNorm statistics re-estimated on 512
               training images, no weight changes)
    gradual    a gs.Pruner attached while fine-tuning, with the cubic schedule in stages
               (StagedCubic): one trajectory per pattern and criterion goes 0 -> 50% -> 75% ->
               90%, STAGE_EPOCHS epochs per stage, and the model is tested at each stage's end.
               N:M patterns fix their sparsity, so they are pruned once and fine-tuned one
               stage with the Pruner attached ("oneshot+finetune")

Fine-tuning (gradual and N:M) distils from the seed's dense model: the loss is the mean of
the cross-entropy and the KL divergence to the dense model's softened outputs
(``--no-distill``: cross-entropy alone). ``--jobs`` (default 2) runs the (model, seed) jobs in
parallel processes of ``--threads`` (default 1) threads each.

Every gradual group-wise model is compiled with ``gs.compile_sparse(decide="always")`` and
its predictions on the test set compared with the masked model's (a compile error is
recorded in the results, not raised, so that one layer the compiler refuses does not end a
30-minute study).

Writes one result (``benchmarks.results``: ``benchmarks/results/<machine>/accuracy/``, or
``--out``; ``--quick`` under ``out/benchmarks/``): ``<run>.json`` (provenance, machine,
settings, per-seed accuracies, means and spreads, compile checks, the goals of issue 6;
rewritten after every model and seed), ``<run>.md`` (the tables), and
``<run>-accuracy_gradual.png`` and ``<run>-accuracy_oneshot.png`` (accuracy against sparsity,
one panel per model and criterion, one line per pattern).
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import groupsparse as gs
from groupsparse.models import SmallCNN, SmallResNet, SmallViT
from groupsparse.pruning import Schedule

from ..results import ResultFile

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PATTERNS",
    "MODELS",
    "PATTERNS",
    "Digits",
    "PatternSpec",
    "Recipe",
    "load_digits",
    "main",
]

SPARSITIES = (0.5, 0.75, 0.9)
CRITERIA = ("magnitude", "taylor")
SCHEDULES = ("oneshot", "gradual")
EXCLUDE = "first_last"
# Gradual pruning is one trajectory per pattern and criterion through the sparsities in
# ascending order: each stage fine-tunes STAGE_EPOCHS epochs, pruning from the previous stage's
# sparsity to its own along the cubic schedule over the first STAGE_PRUNE_SHARE of the stage
# (STAGE_UPDATES mask updates), then recovering at it; the model is tested at each stage's end.
# The 90% model has so been fine-tuned for three stages, the 50% model for one, at the cost of
# a single 90% run.
STAGE_EPOCHS = 4
STAGE_PRUNE_SHARE = 0.4
STAGE_UPDATES = 10
# Fine-tuning distils from the seed's dense model (see train; --no-distill turns it off).
DISTILL_TEMPERATURE = 4.0


@dataclass(frozen=True)
class StagedCubic(Schedule):
    """The cubic schedule of Zhu & Gupta, once per stage: stage i (``stage_steps`` steps) goes
    from ``targets[i-1]`` (0 before the first) to ``targets[i]`` over its first
    ``prune_share`` of steps in ``updates`` mask updates, then holds ``targets[i]``.

    >>> schedule = StagedCubic(targets=(0.5, 0.9), stage_steps=100)
    >>> [round(schedule.sparsity_at(step, 0.9), 3) for step in (0, 20, 40, 99, 100, 140)]
    [0.0, 0.438, 0.5, 0.5, 0.5, 0.9]
    """

    targets: tuple[float, ...]
    stage_steps: int
    prune_share: float = STAGE_PRUNE_SHARE
    updates: int = STAGE_UPDATES

    def __post_init__(self) -> None:
        if list(self.targets) != sorted(self.targets) or not self.targets:
            raise ValueError(f"targets must be ascending sparsities; got {self.targets}")
        if self.stage_steps < 1:
            raise ValueError(f"stage_steps must be >= 1; got {self.stage_steps}")

    @property
    def _end(self) -> int:
        return max(1, int(self.prune_share * self.stage_steps))

    @property
    def _every(self) -> int:
        return max(1, self._end // self.updates)

    def _where(self, step: int) -> tuple[int, int]:
        stage = min(step // self.stage_steps, len(self.targets) - 1)
        return stage, step - stage * self.stage_steps

    def updates_at(self, step: int) -> bool:
        _, offset = self._where(step)
        return offset <= self._end and (offset % self._every == 0 or offset == self._end)

    def sparsity_at(self, step: int, target: float) -> float:
        stage, offset = self._where(step)
        start = self.targets[stage - 1] if stage else 0.0
        final = self.targets[stage]
        if offset >= self._end:
            return final
        last = offset // self._every * self._every
        return final + (start - final) * (1.0 - last / self._end) ** 3


@dataclass(frozen=True)
class Recipe:
    """How one model is built and trained: dense training, then fine-tuning while pruning."""

    title: str
    build: Callable[[], nn.Module]
    image_size: int  # inputs are the 8x8 digits, upsampled (bilinear) to this size
    epochs: int  # dense training
    lr: float  # AdamW peak, one-cycle
    batch: int
    shift: int  # random shift of each training image by up to this many pixels (at image_size)
    finetune_lr: float = 5e-3  # AdamW, cosine to zero in each stage of STAGE_EPOCHS
    finetune_batch: int = 64


MODELS: dict[str, Recipe] = {
    # Widths: at 8 or 16 channels a group of 8 or 16 rows is a whole layer, and group-wise
    # pruning degenerates to column pruning; these widths leave every layer several groups.
    "cnn": Recipe(
        "VGG-style CNN (SmallCNN, width 32, 8x8)",
        lambda: SmallCNN(width=32), image_size=8, epochs=15, lr=3e-3, batch=64, shift=1,
    ),
    "resnet": Recipe(
        "ResNet-style CNN (SmallResNet, width 16, 16x16)",
        lambda: SmallResNet(width=16), image_size=16, epochs=15, lr=3e-3, batch=64, shift=2,
    ),
    # a ViT with learned position embeddings: a whole-pixel shift at 8x8 moves half a patch
    # and hurts it (82% instead of 97%), so it sees 16x16 inputs and one-pixel shifts there
    "vit": Recipe(
        "ViT (SmallViT, width 128, 16x16, patch 4)",
        lambda: SmallViT(width=128, image_size=16, patch_size=4), image_size=16, epochs=30,
        lr=3e-3, batch=16, shift=1, finetune_lr=2e-3,
    ),
    # wide enough that the group sizes the speed goals use (G = 64 and 128) leave every conv
    # 2-4 groups: five 3x3 convs of 256 channels; only on request (--models wide-cnn)
    "wide-cnn": Recipe(
        "VGG-style CNN (SmallCNN, five convs of 256 channels, 8x8)",
        lambda: SmallCNN(layers=(256, 256, "M", 256, 256, "M", 256)), image_size=8, epochs=10,
        lr=2e-3, batch=64, shift=1,
    ),
}  # fmt: skip

# the study's models and patterns when none are named (the wide model and G >= 64 only on
# request: on the narrow models a group of 64 rows is most of a layer)
DEFAULT_MODELS = ("cnn", "resnet", "vit")


@dataclass(frozen=True)
class PatternSpec:
    """One pattern of the study: ``label`` in tables, the arguments of gs.prune / gs.Pruner."""

    label: str
    pattern: str
    args: dict[str, Any] = field(default_factory=dict)
    fixed_sparsity: float | None = None  # N:M patterns

    @property
    def family(self) -> str:
        return "vector" if self.fixed_sparsity is not None else self.pattern

    @property
    def permute(self) -> bool:
        return bool(self.args.get("permute", False))


PATTERNS: dict[str, PatternSpec] = {
    spec.label: spec
    for spec in (
        PatternSpec("element", "element"),
        PatternSpec("2:4", "2:4", fixed_sparsity=0.5),
        PatternSpec("4:8", "4:8", fixed_sparsity=0.5),
        PatternSpec("block 4x4", "block", {"block": (4, 4)}),
        *(PatternSpec(f"group G={g}", "group", {"group_size": g}) for g in (8, 16, 32, 64, 128)),
        # the permutation at G = 32 too would take the full study past 30 minutes
        *(
            PatternSpec(f"group G={g} perm", "group", {"group_size": g, "permute": True})
            for g in (8, 16)
        ),
        PatternSpec("filter", "filter"),
    )
}

DEFAULT_PATTERNS = tuple(label for label in PATTERNS if label not in ("group G=64", "group G=128"))

QUICK: dict[str, Any] = {
    "models": ("cnn", "resnet", "vit"),
    "patterns": ("element", "2:4", "group G=16", "group G=16 perm", "filter"),
    "sparsities": (0.75,),
    "criteria": ("magnitude",),
    "seeds": 1,
    "epochs": {"cnn": 8, "resnet": 15, "vit": 20},
    "stage_epochs": 2,
}


# -- data ------------------------------------------------------------------------------------


@dataclass
class Digits:
    """The digits split, normalized with the training set's mean and spread."""

    train_x: torch.Tensor  # (N, 1, 8, 8)
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    background: float  # the value of an empty pixel after normalization

    def at(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) images at ``size`` x ``size``."""
        if size == 8:
            return self.train_x, self.test_x
        return tuple(
            F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            for x in (self.train_x, self.test_x)
        )


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    train, test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.25, random_state=0, stratify=data.target
    )
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return Digits(images[train], labels[train], images[test], labels[test], float(-mean / std))


def shifted(
    x: torch.Tensor, shift: int, background: float, generator: torch.Generator
) -> torch.Tensor:
    """Each image moved by its own random offset in [-shift, shift]^2, the border filled
    with the background."""
    if shift == 0:
        return x
    n, _, height, width = x.shape
    padded = F.pad(x, (shift,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    rows = dy[:, None] + torch.arange(height)
    cols = dx[:, None] + torch.arange(width)
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]][:, None]


# -- training --------------------------------------------------------------------------------


def _batches(n: int, batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch))


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch: int,
    shift: int,
    background: float,
    generator: torch.Generator,
    schedule: str = "one_cycle",
    after_step: Callable[[], None] | None = None,
    teacher: nn.Module | None = None,
) -> None:
    """AdamW over ``epochs``; ``after_step`` runs after every optimizer step (Pruner.step).

    ``teacher``: distil from it (the seed's dense model) as well as learn the labels: the loss
    is the mean of the cross-entropy and the KL divergence to the teacher's softened outputs
    (temperature DISTILL_TEMPERATURE, scaled by its square so both terms weigh alike)."""
    steps = epochs * math.ceil(len(x) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    if schedule == "one_cycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps, pct_start=0.15
        )
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(epochs):
        for index in _batches(len(x), batch, generator):
            inputs = shifted(x[index], shift, background, generator)
            logits = model(inputs)
            loss = F.cross_entropy(logits, y[index])
            if teacher is not None:
                loss = 0.5 * loss + 0.5 * distillation_loss(logits, teacher, inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
    model.eval()


def distillation_loss(
    logits: torch.Tensor, teacher: nn.Module, inputs: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) at DISTILL_TEMPERATURE, times its square (Hinton et al., 2015)."""
    with torch.no_grad():
        target = F.log_softmax(teacher(inputs) / DISTILL_TEMPERATURE, dim=1)
    student = F.log_softmax(logits / DISTILL_TEMPERATURE, dim=1)
    kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
    return kl * DISTILL_TEMPERATURE**2


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(part) for part in x.split(512)])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean())


# -- one pruning run -------------------------------------------------------------------------


@dataclass
class RunResult:
    accuracy: float
    actual_sparsity: float  # over the pruned layers
    schedule: str  # "oneshot", "gradual" or "oneshot+finetune"
    finetune_epochs: int = 0
    compiled: dict[str, Any] | None = None


def _pruned_sparsity(masks: dict[str, torch.Tensor]) -> float:
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return 1.0 - kept / total


def _loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


def _calibration(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The taylor criterion's batches for one-shot pruning: the first 512 training images."""
    return [(x[i : i + 128], y[i : i + 128]) for i in range(0, min(len(x), 512), 128)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate BatchNorm running statistics on the first 512 training images (no weight
    changes): pruning moves every conv's output distribution, and stale statistics alone can
    take a pruned CNN to chance accuracy."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    for part in x[:512].split(128):
        model(part)
    model.eval()
    for norm in norms:
        norm.momentum = 0.1


def compile_check(
    model: nn.Module,
    test_x: torch.Tensor,
    masked_logits: torch.Tensor,
    masks: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Compile with decide="always" and compare its test-set predictions with the masked model's.

    The Pruner's masks go to the compiler: a kept weight can be exactly zero after
    fine-tuning (a channel whose gradient is zero, or a weight a permuted regrouping revived),
    and the zeros alone would then not show the group structure."""
    try:
        fast = gs.compile_sparse(model, (test_x[:8],), masks=masks, decide="always")
    except Exception as error:  # noqa: BLE001 - recorded in the results, see the module docstring
        return {"error": f"{type(error).__name__}: {error}"}
    with torch.no_grad():
        logits = torch.cat([fast(part) for part in test_x.split(512)])
    return {
        "same_predictions": bool(torch.equal(logits.argmax(dim=1), masked_logits.argmax(dim=1))),
        "max_abs_logit_difference": float((logits - masked_logits).abs().max()),
        "sparse_layers": sum(row.decision == "sparse" for row in fast.report.rows),
        "layers": len(fast.report.rows),
    }


def _pruner_kwargs(spec: PatternSpec, criterion: str) -> dict[str, Any]:
    return dict(criterion=criterion, exclude=EXCLUDE, **spec.args)


def oneshot_run(
    dense: nn.Module, spec: PatternSpec, sparsity: float, criterion: str, data: Digits,
    train_x: torch.Tensor, test_x: torch.Tensor,
) -> RunResult:  # fmt: skip
    """Prune a copy of ``dense`` once, re-estimate its BatchNorm statistics, test it."""
    model = copy.deepcopy(dense)
    kwargs = _pruner_kwargs(spec, criterion)
    if spec.fixed_sparsity is None:
        kwargs["sparsity"] = sparsity
    if criterion == "taylor":
        kwargs.update(calibration=_calibration(train_x, data.train_y), loss_fn=_loss_fn)
    masks = gs.prune(model, spec.pattern, **kwargs)
    recalibrate_batchnorm(model, train_x)
    logits = predict(model, test_x)
    return RunResult(accuracy(logits, data.test_y), _pruned_sparsity(masks), "oneshot")


def gradual_runs(
    dense: nn.Module, spec: PatternSpec, sparsities: Sequence[float], criterion: str,
    recipe: Recipe, data: Digits, train_x: torch.Tensor, test_x: torch.Tensor, *,
    stage_epochs: int, seed: int, check_compiled: bool, distill: bool = True,
) -> dict[float, RunResult]:  # fmt: skip
    """Fine-tune a copy of ``dense`` with a Pruner attached through the ``sparsities`` (one
    stage each, see StagedCubic); {sparsity: the result at the end of its stage}.

    N:M patterns fix their sparsity: they are pruned once at the start and fine-tuned one stage.
    """
    model = copy.deepcopy(dense)
    kwargs = _pruner_kwargs(spec, criterion)
    stage_steps = stage_epochs * math.ceil(len(train_x) / recipe.finetune_batch)
    if spec.fixed_sparsity is None:
        targets = tuple(sorted(sparsities))
        schedule: Schedule = StagedCubic(targets=targets, stage_steps=stage_steps)
        kwargs["sparsity"] = targets[-1]
        label = "gradual"  # taylor scores the training gradients between updates
    else:
        targets = (spec.fixed_sparsity,)
        schedule = gs.OneShot()
        label = "oneshot+finetune"
        if criterion == "taylor":
            kwargs.update(calibration=_calibration(train_x, data.train_y), loss_fn=_loss_fn)
    generator = torch.Generator().manual_seed(10_000 + seed)
    pruner = gs.Pruner(model, spec.pattern, schedule=schedule, **kwargs)
    results = {}
    try:
        for stage, target in enumerate(targets):
            train(
                model, train_x, data.train_y, epochs=stage_epochs, lr=recipe.finetune_lr,
                batch=recipe.finetune_batch, shift=recipe.shift, background=data.background,
                generator=generator, schedule="cosine", after_step=pruner.step,
                teacher=dense.eval() if distill else None,
            )  # fmt: skip
            logits = predict(model, test_x)
            result = RunResult(
                accuracy(logits, data.test_y), _pruned_sparsity(pruner.masks), label,
                finetune_epochs=(stage + 1) * stage_epochs,
            )  # fmt: skip
            if check_compiled and spec.pattern == "group":
                result.compiled = compile_check(
                    _plain_copy(recipe, model), test_x, logits, pruner.masks
                )
            results[target] = result
    finally:
        pruner.remove()
    return results


def _plain_copy(recipe: Recipe, model: nn.Module) -> nn.Module:
    """A fresh model with ``model``'s state (its weights carry the Pruner's hooks)."""
    copy_ = recipe.build()
    copy_.load_state_dict(model.state_dict())
    return copy_.eval()


# -- the study -------------------------------------------------------------------------------


@dataclass
class Settings:
    models: tuple[str, ...]
    patterns: tuple[str, ...]
    sparsities: tuple[float, ...]
    criteria: tuple[str, ...]
    schedules: tuple[str, ...]
    seeds: int
    epochs: dict[str, int]
    stage_epochs: int
    compile_check: bool
    quick: bool
    threads: int
    jobs: int = 1
    distill: bool = True

    def configurations(self) -> list[tuple[PatternSpec, float]]:
        """(pattern, sparsity) pairs: N:M patterns once, at their own sparsity."""
        pairs = []
        for label in self.patterns:
            spec = PATTERNS[label]
            if spec.fixed_sparsity is not None:
                pairs.append((spec, spec.fixed_sparsity))
            else:
                pairs.extend((spec, sparsity) for sparsity in self.sparsities)
        return pairs

    def runs_per_model(self) -> int:
        return len(self.configurations()) * len(self.criteria) * len(self.schedules)

    def finetune_epochs_per_criterion(self) -> int:
        """Fine-tuning epochs of the gradual trajectories of one model, seed and criterion."""
        if "gradual" not in self.schedules:
            return 0
        stages = sum(
            1 if PATTERNS[label].fixed_sparsity is not None else len(self.sparsities)
            for label in self.patterns
        )
        return stages * self.stage_epochs


def _seconds_per_epoch(recipe: Recipe, x: torch.Tensor, batch: int, steps: int = 4) -> float:
    """Time a few training steps of a fresh model: the estimate's unit."""
    model = recipe.build()
    optimizer = torch.optim.AdamW(model.parameters())
    y = torch.zeros(batch, dtype=torch.int64)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x[:batch]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * math.ceil(len(x) / batch)


def estimate_seconds(settings: Settings, data: Digits) -> dict[str, float]:
    """{model: seconds} for the whole study, from timed training steps: dense training,
    fine-tuning (with 15% for the Pruner's hooks and updates, 20% more for the teacher's
    forward pass when distilling) and about 0.2 s per test or
    compile."""
    estimate = {}
    for name in settings.models:
        recipe = MODELS[name]
        train_x, _ = data.at(recipe.image_size)
        dense_epoch = _seconds_per_epoch(recipe, train_x, recipe.batch)
        finetune_epoch = _seconds_per_epoch(recipe, train_x, recipe.finetune_batch)
        per_seed = (
            settings.epochs[name] * dense_epoch
            + len(settings.criteria)
            * settings.finetune_epochs_per_criterion()
            * finetune_epoch
            * (1.35 if settings.distill else 1.15)
            + settings.runs_per_model() * 0.2
        )
        estimate[name] = settings.seeds * per_seed
    return estimate


def _key(model: str, spec: PatternSpec, sparsity: float, criterion: str, schedule: str) -> str:
    return f"{model}|{spec.label}|{sparsity}|{criterion}|{schedule}"


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def run_study(settings: Settings, result: ResultFile) -> dict[str, Any]:
    """The whole study, recorded in ``result`` as it goes; returns its data."""
    torch.set_num_threads(settings.threads)
    data = load_digits()
    started = time.perf_counter()
    estimate = estimate_seconds(settings, data)
    # the jobs share the work evenly enough: (model, seed) jobs of similar sizes
    total_estimate = sum(estimate.values()) / min(
        settings.jobs, len(settings.models) * settings.seeds
    )
    print(
        f"estimated study time: {total_estimate / 60:.1f} min (one process: "
        + ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in estimate.items())
        + f"; {settings.jobs} job{'s' * (settings.jobs > 1)} of {settings.threads} "
        f"thread{'s' * (settings.threads > 1)}, measured now on this machine)",
        flush=True,
    )
    results = result.data
    results.update({
        "meta": {
            "split": "sklearn load_digits; train_test_split(test_size=0.25, random_state=0, stratify=y); "
            f"{len(data.train_y)} train, {len(data.test_y)} test images",
            "exclude": EXCLUDE,
            "protocol": {
                "gradual": f"one trajectory per pattern and criterion through the sparsities: each "
                f"stage {settings.stage_epochs} epochs of fine-tuning, cubic from the previous "
                f"stage's sparsity to its own over the first {STAGE_PRUNE_SHARE:.0%} of the stage "
                f"({STAGE_UPDATES} mask updates), tested at the stage's end",
                "nm_gradual": f"N:M: pruned once, then fine-tuned {settings.stage_epochs} epochs "
                "with the Pruner attached",
                "oneshot": "pruned once, BatchNorm statistics re-estimated on 512 training images, "
                "no weight updates",
                "finetune_optimizer": "AdamW (weight decay 1e-4), cosine to zero in each stage",
                "finetune_loss": (
                    "mean of cross-entropy and KL divergence to the seed's dense model "
                    f"(temperature {DISTILL_TEMPERATURE:g}, scaled by its square)"
                    if settings.distill
                    else "cross-entropy"
                ),
                "taylor_oneshot_calibration": "the first 512 training images, 4 batches",
                "taylor_gradual": "|w * grad| summed over the training steps between updates",
            },
            "recipes": {
                name: {k: v for k, v in asdict(MODELS[name]).items() if k != "build"}
                for name in settings.models
            },
            "patterns": {
                label: {"pattern": PATTERNS[label].pattern, **PATTERNS[label].args}
                for label in settings.patterns
            },
            "estimate_s": round(total_estimate, 1),
            "elapsed_s": None,
            "finished": False,
        },
        "dense": {},
        "runs": [],
        "goals": {},
    })  # fmt: skip
    jobs = [(seed, name) for seed in range(settings.seeds) for name in settings.models]
    done: dict[tuple[int, str], JobResult] = {}

    def collect(job: tuple[int, str], finished: JobResult) -> None:
        """Record one finished (seed, model) job and rewrite the result file, seeds in order."""
        done[job] = finished
        per_seed: dict[str, dict[str, Any]] = {}
        results["dense"] = {}
        for seed, name in sorted(done):
            dense_accuracy, records = done[(seed, name)]
            entry = results["dense"].setdefault(name, {"title": MODELS[name].title, "accuracy": []})
            entry["accuracy"].append(dense_accuracy)
            entry.update(_summary(entry["accuracy"]))
            for label, sparsity, criterion, run in records:
                _record(per_seed, name, PATTERNS[label], sparsity, criterion, run)
        results["runs"] = _runs(per_seed)
        results["goals"] = goals(results)
        results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
        result.save()

    per_job = 1 + settings.runs_per_model()
    with tqdm(total=len(jobs) * per_job, unit="run", dynamic_ncols=True) as progress:
        if min(settings.jobs, len(jobs)) == 1:
            for job in jobs:
                collect(job, study_model(settings, job[1], job[0], data, progress))
        else:  # one process per core, each with settings.threads threads; progress per job
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(settings.jobs, mp_context=context) as pool:
                futures = {
                    pool.submit(_study_job, settings, name, seed): (seed, name)
                    for seed, name in jobs
                }
                for future in as_completed(futures):
                    seed, name = futures[future]
                    progress.set_description(f"seed {seed} {name} done")
                    collect(futures[future], future.result())
                    progress.update(per_job)
    results["meta"]["finished"] = True
    plot(results, result.folder, prefix=f"{result.path.stem}-")
    result.finish(summary(results), table(results))
    elapsed = results["meta"]["elapsed_s"]
    print(f"done in {elapsed / 60:.1f} min (estimated {total_estimate / 60:.1f}); "
          f"wrote {result.path}")  # fmt: skip
    return results


# (dense accuracy, [(pattern label, sparsity, criterion, result)]) of one model and seed
JobResult = tuple[float, list[tuple[str, float, str, RunResult]]]


class _NoProgress:
    def set_description(self, _: str) -> None:
        pass

    def update(self, _: int = 1) -> None:
        pass


def _study_job(settings: Settings, name: str, seed: int) -> JobResult:
    """study_model in a worker process (--jobs): its own data, threads and no progress bar."""
    torch.set_num_threads(settings.threads)
    return study_model(settings, name, seed, load_digits(), _NoProgress())


def study_model(settings: Settings, name: str, seed: int, data: Digits, progress) -> JobResult:
    """Train one model's dense baseline for ``seed``, then every pruning run from it."""
    recipe = MODELS[name]
    train_x, test_x = data.at(recipe.image_size)
    progress.set_description(f"seed {seed} {name} dense")
    torch.manual_seed(seed)
    dense = recipe.build()
    train(
        dense, train_x, data.train_y, epochs=settings.epochs[name], lr=recipe.lr,
        batch=recipe.batch, shift=recipe.shift, background=data.background,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    dense_accuracy = accuracy(predict(dense, test_x), data.test_y)
    records: list[tuple[str, float, str, RunResult]] = []
    progress.update()
    for label in settings.patterns:
        spec = PATTERNS[label]
        sparsities = (
            (spec.fixed_sparsity,) if spec.fixed_sparsity is not None else settings.sparsities
        )
        for criterion in settings.criteria:
            if "oneshot" in settings.schedules:
                for sparsity in sparsities:
                    progress.set_description(
                        f"seed {seed} {name} {label} {sparsity:.0%} {criterion} one-shot"
                    )
                    result = oneshot_run(dense, spec, sparsity, criterion, data, train_x, test_x)
                    records.append((label, sparsity, criterion, result))
                    progress.update()
            if "gradual" in settings.schedules:
                progress.set_description(f"seed {seed} {name} {label} {criterion} gradual")
                torch.manual_seed(seed)
                trajectory = gradual_runs(
                    dense, spec, sparsities, criterion, recipe, data, train_x, test_x,
                    stage_epochs=settings.stage_epochs, seed=seed,
                    check_compiled=settings.compile_check, distill=settings.distill,
                )  # fmt: skip
                for sparsity, result in trajectory.items():
                    records.append((label, sparsity, criterion, result))
                progress.update(len(trajectory))
    return dense_accuracy, records


def _record(per_seed, model, spec, sparsity, criterion, result: RunResult) -> None:
    key = _key(model, spec, sparsity, criterion, result.schedule)
    entry = per_seed.setdefault(
        key,
        {
            "model": model,
            "pattern": spec.label,
            "family": spec.family,
            "group_size": spec.args.get("group_size"),
            "permute": spec.permute,
            "sparsity": sparsity,
            "criterion": criterion,
            "schedule": result.schedule,
            "finetune_epochs": result.finetune_epochs,
            "accuracy": [],
            "actual_sparsity": [],
            "compiled": [],
        },
    )
    entry["accuracy"].append(result.accuracy)
    entry["actual_sparsity"].append(result.actual_sparsity)
    if result.compiled is not None:
        entry["compiled"].append(result.compiled)


def _runs(per_seed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    runs = []
    for entry in per_seed.values():
        run = {k: v for k, v in entry.items() if k != "compiled"}
        run.update(_summary(entry["accuracy"]))
        run["actual_sparsity"] = statistics.fmean(entry["actual_sparsity"])
        if entry["compiled"]:
            checks = [c for c in entry["compiled"] if "error" not in c]
            run["compiled"] = {
                "checked": len(checks),
                "errors": [c["error"] for c in entry["compiled"] if "error" in c],
                "same_predictions": all(c["same_predictions"] for c in checks),
                "max_abs_logit_difference": max(
                    (c["max_abs_logit_difference"] for c in checks), default=None
                ),
                "sparse_layers": [c["sparse_layers"] for c in checks],
                "layers": checks[0]["layers"] if checks else None,
            }
        runs.append(run)
    return runs


# -- goals -----------------------------------------------------------------------------------


def _find(runs, **where) -> list[dict[str, Any]]:
    return [run for run in runs if all(run.get(k) == v for k, v in where.items())]


def _best_group(runs, sparsity: float, permuted: bool | None) -> dict[str, Any] | None:
    """The group-wise run with the best mean at ``sparsity`` (consecutive, permuted or either)."""
    candidates = [
        r for r in runs if r["family"] == "group" and r["sparsity"] == sparsity
        and (permuted is None or r["permute"] == permuted)
    ]  # fmt: skip
    return max(candidates, key=lambda r: r["mean"], default=None)


def _percent_of(runs, pattern: str, sparsity: float) -> float | None:
    found = [r for r in runs if r["pattern"] == pattern and r["sparsity"] == sparsity]
    return 100 * found[0]["mean"] if found else None


def _goal_row(gradual: list[dict[str, Any]], dense_mean: float) -> dict[str, Any]:
    """One model and criterion: best group-wise run against element, dense and filter."""
    row: dict[str, Any] = {}
    for sparsity in (0.75, 0.9):
        group = _best_group(gradual, sparsity, permuted=False)
        if group is None:
            continue
        either = _best_group(gradual, sparsity, permuted=None)
        tag = f"{round(100 * sparsity)}"
        row[f"best_group_{tag}"] = {"pattern": group["pattern"], "accuracy": 100 * group["mean"]}
        row[f"best_group_or_permuted_{tag}"] = {
            "pattern": either["pattern"], "accuracy": 100 * either["mean"],
        }  # fmt: skip
        row[f"group_minus_dense_{tag}"] = 100 * (group["mean"] - dense_mean)
        element = _percent_of(gradual, "element", sparsity)
        if element is not None:
            row[f"element_{tag}"] = element
            row[f"group_minus_element_{tag}"] = 100 * group["mean"] - element
        filter_ = _percent_of(gradual, "filter", sparsity)
        if filter_ is not None:
            row[f"filter_{tag}"] = filter_
            row[f"filter_minus_group_{tag}"] = filter_ - 100 * group["mean"]
            if element is not None:
                row[f"filter_minus_element_{tag}"] = filter_ - element
    return row


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The figures beside each goal of issue 6, per model and criterion (gradual schedule),
    in accuracy points (percent)."""
    runs, summary = results["runs"], {}
    summary["dense_at_least_97"] = {
        name: {"mean": 100 * d["mean"], "met": d["mean"] >= 0.97}
        for name, d in results["dense"].items()
    }
    per_model: dict[str, Any] = {}
    for name, dense in results["dense"].items():
        for criterion in sorted({run["criterion"] for run in runs}):
            gradual = _find(runs, model=name, criterion=criterion, schedule="gradual")
            row = _goal_row(gradual, dense["mean"])
            if row:
                per_model[f"{name}|{criterion}"] = row
    summary["gradual"] = per_model
    # permutation vs none: every (model, G, sparsity, criterion, schedule) measured both ways
    differences = []
    for run in runs:
        if not run["permute"]:
            continue
        plain = _find(
            runs, model=run["model"], family="group", group_size=run["group_size"], permute=False,
            sparsity=run["sparsity"], criterion=run["criterion"], schedule=run["schedule"],
        )  # fmt: skip
        if plain:
            differences.append(
                {
                    "model": run["model"], "group_size": run["group_size"], "sparsity": run["sparsity"],
                    "criterion": run["criterion"], "schedule": run["schedule"],
                    "difference": 100 * (run["mean"] - plain[0]["mean"]),
                }
            )  # fmt: skip
    permutation = {}
    for schedule in sorted({d["schedule"] for d in differences}):
        chosen = [d["difference"] for d in differences if d["schedule"] == schedule]
        permutation[schedule] = {
            "mean_difference": statistics.fmean(chosen),
            "better": sum(d > 0 for d in chosen),
            "equal": sum(d == 0 for d in chosen),
            "worse": sum(d < 0 for d in chosen),
            "comparisons": len(chosen),
        }
    summary["permutation_vs_none"] = {"by_schedule": permutation, "comparisons": differences}
    return summary


# -- output ----------------------------------------------------------------------------------


def _cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return "—"
    text = f"{100 * run['mean']:.1f}"
    if len(run["accuracy"]) > 1:
        text += f" ± {100 * run['std']:.1f}"
    return text


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """INDEX.md's rows: per model and criterion, dense and the gradual schedule's best group
    against element and filter at 75% and 90% (test accuracy, %)."""
    rows = []
    for key, row in results["goals"].get("gradual", {}).items():
        model, criterion = key.split("|")
        line = {"model": model, "criterion": criterion,
                "dense": f"{100 * results['dense'][model]['mean']:.1f}"}  # fmt: skip
        for tag in ("75", "90"):
            best = row.get(f"best_group_{tag}")
            line[f"best group {tag}%"] = best and f"{best['accuracy']:.1f} ({best['pattern']})"
            for family in ("element", "filter"):
                value = row.get(f"{family}_{tag}")
                line[f"{family} {tag}%"] = None if value is None else f"{value:.1f}"
        rows.append(line)
    return rows


def table(results: dict[str, Any]) -> str:
    """The Markdown tables: dense baselines, the goals, then accuracy per schedule and
    criterion, pattern x (model, sparsity)."""
    meta, runs = results["meta"], results["runs"]
    models = list(results["dense"])
    seeds = results["settings"]["seeds"]
    sparsities = sorted({r["sparsity"] for r in runs}) or list(SPARSITIES)
    lines = [
        "# Accuracy on scikit-learn's digits",
        "",
        (
            f"{results['settings']['jobs']} jobs of {results['settings']['threads']} thread(s), "
            f"{meta['elapsed_s'] / 60:.1f} min. Test accuracy in %, "
            f"mean ± standard deviation over {seeds} seed{'s' * (seeds > 1)} (each seed trains its own "
            f"dense model, the start of all its pruning runs). {meta['split']}. First and last layer "
            "dense; the others pruned to the sparsity in the column. Gradual: "
            f"{meta['protocol']['gradual']}; {meta['protocol']['finetune_optimizer']}. "
            f"{meta['protocol']['nm_gradual']}. One-shot: {meta['protocol']['oneshot']}. "
            "Taylor scores |w * grad|."
        ),
        "",
        "## Dense baselines",
        "",
        "| model | test accuracy |",
        "|---|---|",
    ]
    for name in models:
        dense = results["dense"][name]
        lines.append(f"| {dense['title']} | {_cell(dense)} |")
    lines += ["", *goals_table(results), ""]
    schedules = [
        (
            "gradual",
            "Gradual pruning while fine-tuning (cubic schedule; N:M: one-shot + fine-tune)",
        ),
        ("oneshot", "One-shot pruning, no fine-tuning"),
    ]
    header = (
        "| pattern | "
        + " | ".join(f"{name} {round(100 * s)}%" for name in models for s in sparsities)
        + " |"
    )
    for schedule, title in schedules:
        for criterion in sorted({r["criterion"] for r in runs}):
            chosen = [
                r for r in runs if r["criterion"] == criterion
                and (r["schedule"] == schedule or (schedule == "gradual" and r["schedule"] == "oneshot+finetune"))
            ]  # fmt: skip
            if not chosen:
                continue
            lines += [
                f"## {title}, {criterion}",
                "",
                header,
                "|---" * (1 + len(models) * len(sparsities)) + "|",
            ]
            for label in [p for p in PATTERNS if any(r["pattern"] == p for r in chosen)]:
                cells = []
                for name in models:
                    for sparsity in sparsities:
                        found = [r for r in chosen if r["model"] == name and r["pattern"] == label
                                 and math.isclose(r["sparsity"], sparsity)]  # fmt: skip
                        cells.append(_cell(found[0] if found else None))
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += compiled_lines(runs)
    lines += ["Plots: `<run>-accuracy_gradual.png`, `<run>-accuracy_oneshot.png`.", ""]
    return "\n".join(lines)


def compiled_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: whether the compiled group-wise models predict as the masked ones, and how
    many layers the compiler rewrote."""
    compiled = [r for r in runs if r.get("compiled")]
    if not compiled:
        return []
    checks = sum(r["compiled"]["checked"] for r in compiled)
    errors = sorted({e for r in compiled for e in r["compiled"]["errors"]})
    same = all(r["compiled"]["same_predictions"] for r in compiled)
    differences = [
        d for r in compiled if (d := r["compiled"]["max_abs_logit_difference"]) is not None
    ]
    lines = [
        "## Compiled model = masked model",
        "",
        f"Every gradual group-wise model ({checks} compiled) went through "
        '`gs.compile_sparse(decide="always")`: test-set predictions '
        + (
            "identical to the masked model's in every case"
            if same
            else "DIFFER in some cases (see results.json)"
        )
        + (f"; largest logit difference {max(differences):.1e}." if differences else "."),
    ]
    if errors:
        lines.append(f"Compile errors ({len(errors)} kinds): " + "; ".join(errors[:3]))
    lines += ["", "| model | groups | layers rewritten as grouped GEMMs |", "|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in compiled):
        for permute in (False, True):
            chosen = [r for r in compiled if r["model"] == model and r["permute"] == permute]
            counts = [n for r in chosen for n in r["compiled"]["sparse_layers"]]
            if not counts:
                continue
            layers = max(r["compiled"]["layers"] for r in chosen if r["compiled"]["layers"])
            span = (
                f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
            )
            kind = "permuted" if permute else "consecutive"
            lines.append(
                f"| {model} | {kind} | {span} of {layers} (first and last layer stay dense) |"
            )
    lines.append("")
    return lines


# The table's rows per model and criterion: (goal, field of results["goals"]["gradual"], the
# least value that meets it or None for a figure shown without a verdict, the sparsity whose
# best group the figure names)
GOAL_ROWS: tuple[tuple[str, str, float | None, str | None], ...] = (
    ("75%: best group within 1.0 of element", "group_minus_element_75", -1.0, "75"),
    ("75%: best group within 1.5 of dense", "group_minus_dense_75", -1.5, "75"),
    ("75%: filter minus best group (visibly worse)", "filter_minus_group_75", None, None),
    ("75%: filter minus element", "filter_minus_element_75", None, None),
    ("90%: best group within 3 of dense", "group_minus_dense_90", -3.0, "90"),
    ("90%: filter minus best group", "filter_minus_group_90", None, None),
)


def goals_table(results: dict[str, Any]) -> list[str]:
    """Markdown: each goal of issue 6 with the measured figure beside it."""
    summary = results["goals"]
    lines = [
        "## Goals of issue 6 (gradual schedule; points of test accuracy)",
        "",
        "| goal | model, criterion | measured | met |",
        "|---|---|---|---|",
    ]
    for name, entry in summary.get("dense_at_least_97", {}).items():
        lines.append(
            f"| dense >= 97% | {name} | {entry['mean']:.1f}% | {'yes' if entry['met'] else 'no'} |"
        )

    def add(goal: str, key: str, value: float | None, met: bool | None, note: str = "") -> None:
        if value is None:
            return
        verdict = "—" if met is None else ("yes" if met else "no")
        lines.append(f"| {goal} | {key} | {_signed(value)}{note} | {verdict} |")

    for key, row in summary.get("gradual", {}).items():
        label = key.replace("|", ", ")
        for goal, field_, floor, best_of in GOAL_ROWS:
            value = row.get(field_)
            best = row.get(f"best_group_{best_of}") if best_of else None
            met = None if value is None or floor is None else value >= floor
            add(goal, label, value, met, f" ({best['pattern']})" if best else "")
    for schedule, entry in summary.get("permutation_vs_none", {}).get("by_schedule", {}).items():
        lines.append(
            f"| permutation >= none ({schedule}) | all models, G, sparsities, criteria "
            f"({entry['comparisons']} pairs) | {_signed(entry['mean_difference'])} on average; "
            f"better {entry['better']}, equal {entry['equal']}, worse {entry['worse']} | "
            f"{'yes' if entry['mean_difference'] >= 0 else 'no'} |"
        )
    return lines


def plot(results: dict[str, Any], out: Path, prefix: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, models = results["runs"], list(results["dense"])
    criteria = sorted({r["criterion"] for r in runs})
    colors = plt.get_cmap("tab10")
    labels = [p for p in PATTERNS if any(r["pattern"] == p for r in runs)]
    plain_labels = [p for p in labels if not PATTERNS[p].permute]
    written = []
    for schedule in ("gradual", "oneshot"):
        figure, axes = plt.subplots(
            len(criteria), len(models), figsize=(4.2 * len(models), 3.4 * len(criteria)),
            squeeze=False, sharey=True,
        )  # fmt: skip
        for row, criterion in enumerate(criteria):
            for column, name in enumerate(models):
                axis = axes[row][column]
                dense = results["dense"][name]
                axis.axhline(
                    100 * dense["mean"], color="black", linestyle=":", linewidth=1, label="dense"
                )
                for label in labels:
                    spec = PATTERNS[label]
                    base = label.removesuffix(" perm")
                    chosen = sorted(
                        (
                            r for r in runs if r["model"] == name and r["pattern"] == label
                            and r["criterion"] == criterion
                            and (r["schedule"] == schedule or (schedule == "gradual" and r["schedule"] == "oneshot+finetune"))
                        ),
                        key=lambda r: r["sparsity"],
                    )  # fmt: skip
                    if not chosen:
                        continue
                    axis.errorbar(
                        [100 * r["sparsity"] for r in chosen], [100 * r["mean"] for r in chosen],
                        yerr=[100 * r["std"] for r in chosen], label=label,
                        color=colors(plain_labels.index(base) % 10),
                        linestyle="--" if spec.permute else "-",
                        marker="s" if spec.fixed_sparsity is not None else "o", markersize=4, capsize=2,
                    )  # fmt: skip
                axis.set_title(f"{name}, {criterion}", fontsize=10)
                axis.set_xlabel("sparsity (%)")
                axis.set_xticks([50, 75, 90])
                axis.grid(alpha=0.3)
                if column == 0:
                    axis.set_ylabel("test accuracy (%)")
        handles, names = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, names, loc="lower center", ncol=min(7, len(names)), fontsize=8)
        title = (
            "gradual (N:M: one-shot + fine-tune)"
            if schedule == "gradual"
            else "one-shot, no fine-tuning"
        )
        figure.suptitle(f"digits: test accuracy against sparsity, {title}")
        figure.tight_layout(rect=(0, 0.1, 1, 0.95))
        path = out / f"{prefix}accuracy_{schedule}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


# -- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks accuracy",
        description="Accuracy of each pruning pattern, criterion and schedule on digits (issue 6).",
        epilog="The full study prints its estimate first; run it with `nice -n 10` on a shared machine.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="under 3 minutes: 1 seed, 5 patterns at 75%%, magnitude",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: by machine)"
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    parser.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=None, metavar="PATTERN",
                        help=f"of: {', '.join(repr(p) for p in PATTERNS)}")  # fmt: skip
    parser.add_argument("--sparsities", nargs="+", type=float, default=None)
    parser.add_argument("--criteria", nargs="+", choices=CRITERIA, default=None)
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="dense training epochs (default: each model's recipe)",
    )
    parser.add_argument("--stage-epochs", type=int, default=None,
                        help=f"fine-tuning epochs per sparsity stage of the gradual runs (default {STAGE_EPOCHS})")  # fmt: skip
    parser.add_argument(
        "--no-compile-check", action="store_true", help="skip compiling the group-wise models"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="(model, seed) jobs run in parallel processes (default: 2, or 1 on one core)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="fine-tune on the labels alone (default: also distil from the dense model)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    models = tuple(args.models or (QUICK["models"] if quick else DEFAULT_MODELS))
    epochs = {
        name: QUICK["epochs"].get(name, MODELS[name].epochs) if quick else MODELS[name].epochs
        for name in models
    }
    stage_epochs = QUICK["stage_epochs"] if quick else STAGE_EPOCHS
    if args.epochs is not None:
        epochs = dict.fromkeys(models, args.epochs)
    if args.stage_epochs is not None:
        stage_epochs = args.stage_epochs
    if stage_epochs < 1:
        raise SystemExit("--stage-epochs must be at least 1")
    for sparsity in args.sparsities or ():
        gs.patterns.check_sparsity(sparsity)
    seeds = args.seeds if args.seeds is not None else (QUICK["seeds"] if quick else 3)
    if seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit("--jobs and --threads must be at least 1")
    return Settings(
        models=models,
        patterns=tuple(args.patterns or (QUICK["patterns"] if quick else DEFAULT_PATTERNS)),
        sparsities=tuple(args.sparsities or (QUICK["sparsities"] if quick else SPARSITIES)),
        criteria=tuple(args.criteria or (QUICK["criteria"] if quick else CRITERIA)),
        schedules=tuple(args.schedules),
        seeds=seeds,
        epochs=epochs,
        stage_epochs=stage_epochs,
        compile_check=not args.no_compile_check,
        quick=quick,
        threads=args.threads,
        jobs=args.jobs,
        distill=not args.no_distill,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    result = ResultFile("accuracy", argv, asdict(settings), threads=settings.threads,
                        out=args.out, quick=settings.quick)  # fmt: skip
    run_study(settings, result)
    return 0
