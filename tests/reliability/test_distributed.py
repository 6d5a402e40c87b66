"""Pruning under torch.distributed: two processes on this machine (gloo, 127.0.0.1), each rank
training on its own batches, the model in DistributedDataParallel or sharded by FSDP2.

- After every step, the Pruner's masks are identical on both ranks.
- The "taylor" scores are summed over the ranks: each update's masks are those of the
  pattern applied to (sum over ranks of each rank's own |w * dL/dw| since the last update),
  checked against a reference each rank computes beside the training step.
- A Pruner built before DistributedDataParallel, on ranks whose initial weights differ, still
  leaves every rank with rank 0's masks; "random" gives the same masks on every rank.
- FSDP2 (``fully_shard``): the masks are DTensors sharded as the weights are, the pruned
  weights are zero in every rank's shard, and the final masks (gathered) equal those of one
  process that trains the same model on both ranks' batches, in the same order, from the
  same seed - for "magnitude" and for "taylor" (which scores FSDP's averaged gradients).
  A Pruner built before fully_shard refuses to step, and calibration= is refused on sharded
  weights, each saying why.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import groupsparse as gs
from groupsparse.layers import gemm_view

WORLD = 2
STEPS = 7
SCHEDULE = {"start": 0, "end": 6, "every": 2}  # updates at 2, 4 and 6 (step 0 prunes nothing)
SPARSITY = 0.75
GROUP_SIZE = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * rank + step)  # every rank its own data
    return torch.randn(8, 3, 6, 6, generator=generator), torch.randint(
        0, 4, (8,), generator=generator
    )


def _gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(WORLD)]
    dist.all_gather(parts, tensor)
    return parts


def _assert_same_masks_on_every_rank(pruner: gs.Pruner, when: str) -> None:
    flat = torch.cat([mask.reshape(-1) for mask in pruner.masks.values()]).to(torch.uint8)
    for rank, other in enumerate(_gathered(flat)):
        assert torch.equal(other, flat), f"{when}: masks of rank {rank} differ"


def _taylor_under_ddp(rank: int) -> None:
    model = _model(seed=0)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    pruner = gs.Pruner(
        model, "group", SPARSITY, "taylor", group_size=GROUP_SIZE, schedule=gs.Gradual(**SCHEDULE)
    )
    weights = {name: model.get_parameter(name) for name in pruner.masks}
    local = {name: torch.zeros_like(weight) for name, weight in weights.items()}
    pruned_by_rank_alone = False
    for step in range(1, STEPS + 1):
        inputs, labels = _batch(rank, step)
        # the reference: this rank's own |w * dL/dw|, before DDP averages the gradients
        loss = nn.functional.cross_entropy(model(inputs), labels)
        gradients = torch.autograd.grad(loss, list(weights.values()))
        masks_before = pruner.masks
        for (name, weight), gradient in zip(weights.items(), gradients):
            local[name] += (weight.detach() * gradient.masked_fill(~masks_before[name], 0)).abs()

        loss = nn.functional.cross_entropy(ddp(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        _assert_same_masks_on_every_rank(pruner, f"taylor, step {step}")

        if pruner.schedule.updates_at(step):
            goal = pruner.schedule.sparsity_at(step, SPARSITY)
            pattern = gs.GroupWise(group_size=GROUP_SIZE)
            for name, own in local.items():
                summed = own.clone()
                dist.all_reduce(summed)
                scores = gemm_view(summed) * gemm_view(masks_before[name])
                expected = pattern.mask(scores, goal).reshape(own.shape)
                assert torch.equal(pruner.masks[name], expected), f"step {step}, {name}"
                alone = pattern.mask(gemm_view(own) * gemm_view(masks_before[name]), goal)
                pruned_by_rank_alone |= not torch.equal(alone.reshape(own.shape), expected)
                own.zero_()
    # the sum mattered: on some rank, its own scores alone would have chosen other masks
    flags = _gathered(torch.tensor([int(pruned_by_rank_alone)]))
    assert sum(int(flag) for flag in flags) > 0
    assert abs(pruner.sparsity - SPARSITY) < 1e-9
    for name, weight in weights.items():  # pruned weights are zero, the weights equal on all ranks
        assert not weight[~pruner.masks[name]].any()
        assert all(torch.equal(other, weight.detach()) for other in _gathered(weight.detach()))
    pruner.remove()


def _pruner_before_ddp(rank: int) -> None:
    model = _model(seed=10 + rank)  # initial weights differ between the ranks
    pruner = gs.Pruner(model, "group", 0.5, group_size=GROUP_SIZE)  # one shot, at step 0
    _assert_same_masks_on_every_rank(pruner, "magnitude, before DDP")
    ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for step in range(2):
        inputs, labels = _batch(rank, step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(inputs), labels).backward()
        optimizer.step()
        pruner.step()
    for name, mask in pruner.masks.items():
        weight = model.get_parameter(name).detach()
        assert not weight[~mask].any()
        assert all(torch.equal(other, weight) for other in _gathered(weight))
    pruner.remove()

    random = gs.Pruner(_model(seed=rank), "group", 0.5, "random", group_size=GROUP_SIZE)
    _assert_same_masks_on_every_rank(random, "random")
    random.remove()


def _worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _taylor_under_ddp(rank)
        _pruner_before_ddp(rank)
        # neither rank tears the group down while the other still talks to it (a rank that
        # left first once took the other down with "terminate called without an active
        # exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_pruner_under_distributed_data_parallel():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_without_torch_distributed_nothing_is_reduced():
    """The same Pruner in one process computes its masks from its own gradients."""
    assert not dist.is_initialized()
    model = _model(seed=0)
    pruner = gs.Pruner(
        model, "group", SPARSITY, "taylor", group_size=GROUP_SIZE, schedule=gs.Gradual(**SCHEDULE)
    )
    inputs, labels = _batch(0, 1)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    pruner.step()
    inputs, labels = _batch(0, 2)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    pruner.step()
    assert 0 < pruner.sparsity < SPARSITY
    pruner.remove()


# ---------------------------------------------------------------------------------------------
# FSDP2

FSDP_CRITERIA = ("magnitude", "taylor")


def _fsdp_model() -> nn.Sequential:
    # the last layer has 5 rows: its shards are uneven (3 and 2 rows), its groups too (4 and 1)
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


def _fsdp_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = _batch(rank, step)
    return inputs, labels % 5


def _fsdp_pruner(model: nn.Module, criterion: str) -> gs.Pruner:
    return gs.Pruner(model, "group", SPARSITY, criterion, group_size=GROUP_SIZE,
                     schedule=gs.Gradual(**SCHEDULE))  # fmt: skip


def _prune_under_fsdp(rank: int, criterion: str) -> dict[str, dict[str, torch.Tensor]]:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _fsdp_model()
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = _fsdp_pruner(model, criterion)
    for step in range(1, STEPS + 1):
        inputs, labels = _fsdp_batch(rank, step)
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        for name, mask in pruner.masks.items():
            weight = model.get_parameter(name)
            assert isinstance(mask, DTensor) and mask.placements == weight.placements, name
            assert mask.to_local().shape == weight.to_local().shape, name
            shard = weight.to_local().detach()
            assert not shard[~mask.to_local()].any(), f"{criterion}, step {step}, {name}"
    assert abs(pruner.sparsity - SPARSITY) < 1e-9
    masks = {name: mask.full_tensor() for name, mask in pruner.masks.items()}
    weights = {name: model.get_parameter(name).full_tensor().detach() for name in masks}
    pruner.remove()
    return {"masks": masks, "weights": weights}


def _refusals_under_fsdp(rank: int) -> None:
    from torch.distributed.fsdp import fully_shard

    model = _fsdp_model()
    pruner = _fsdp_pruner(model, "magnitude")
    fully_shard(model)  # after the Pruner: its weights are not the model's any more
    with pytest.raises(RuntimeError, match="replaced after the Pruner was built .*fully_shard"):
        pruner.step()
    pruner.remove()
    with pytest.raises(ValueError, match="calibration= and loss_fn= cannot score sharded"):
        gs.Pruner(model, "group", SPARSITY, "taylor", group_size=GROUP_SIZE,
                  calibration=[_fsdp_batch(rank, 0)],
                  loss_fn=lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1]))  # fmt: skip


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        runs = {criterion: _prune_under_fsdp(rank, criterion) for criterion in FSDP_CRITERIA}
        _refusals_under_fsdp(rank)
        if rank == 0:
            torch.save(runs, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _prune_in_one_process(criterion: str, mirror_ranks: bool) -> dict[str, dict]:
    """The same training in one process, on both ranks' batches at every step. With
    ``mirror_ranks``, each rank's batch runs its own forward and the loss is their mean, as
    FSDP computes the gradient (each rank's, then averaged); otherwise one forward over the
    two batches together, as a user would write it."""
    model = _fsdp_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = _fsdp_pruner(model, criterion)
    for step in range(1, STEPS + 1):
        batches = [_fsdp_batch(rank, step) for rank in range(WORLD)]
        if mirror_ranks:
            losses = [nn.functional.cross_entropy(model(x), y) for x, y in batches]
            loss = sum(losses) / WORLD
        else:
            inputs, labels = (torch.cat(parts) for parts in zip(*batches))
            loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    masks = pruner.masks
    weights = {name: model.get_parameter(name).detach().clone() for name in masks}
    pruner.remove()
    return {"masks": masks, "weights": weights}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_pruner_under_fsdp2_equals_one_process(tmp_path: Path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_fsdp_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    sharded = torch.load(out)
    torch.set_num_threads(1)  # the ranks' arithmetic: one thread each
    for criterion in FSDP_CRITERIA:
        got = sharded[criterion]
        for mirror_ranks in (True, False):
            alone = _prune_in_one_process(criterion, mirror_ranks)
            assert set(got["masks"]) == set(alone["masks"])
            for name, mask in alone["masks"].items():
                where = f"{criterion}, {name}, mirror_ranks={mirror_ranks}"
                assert torch.equal(got["masks"][name], mask), where
                assert mask.float().mean().item() == pytest.approx(1 - SPARSITY, abs=0.02), where
                if mirror_ranks:  # the same arithmetic: the same weights, to the bit
                    assert torch.equal(got["weights"][name], alone["weights"][name]), where
                else:  # the batch summed in another order: the same weights up to rounding
                    torch.testing.assert_close(
                        got["weights"][name], alone["weights"][name], rtol=1e-5, atol=1e-6
                    )
    # the criteria chose differently: "taylor" scored gradients, not only magnitudes
    magnitude, taylor = (sharded[criterion]["masks"] for criterion in FSDP_CRITERIA)
    assert any(not torch.equal(magnitude[name], taylor[name]) for name in magnitude)
