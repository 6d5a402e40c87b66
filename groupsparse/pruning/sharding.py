"""The Pruner under torch.distributed: DistributedDataParallel (every rank holds whole weights)
and FSDP2's fully_shard (weights are DTensors, each rank holding a shard). Masks are computed
from whole tensors, so that every rank computes the same ones, then laid out as the weights are.
"""

from __future__ import annotations

import torch

__all__ = [
    "is_distributed",
    "is_sharded",
    "like_weight",
    "same_on_every_rank",
    "sum_over_ranks",
    "whole_tensor",
]


def is_distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a sharded parameter of FSDP2, or its gradient)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered from every rank); a plain tensor as it is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def like_weight(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A whole mask in the layout of ``weight``: on its device, and for a DTensor weight a
    DTensor sharded as it is (every rank holds the whole mask: each keeps its own shard, with
    no communication)."""
    if not is_sharded(weight) or is_sharded(mask):
        return mask.to(weight.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        mask.to(weight.device), weight.device_mesh, weight.placements, src_data_rank=None
    )


def sum_over_ranks(
    saliency: dict[str, torch.Tensor], seen: bool
) -> tuple[dict[str, torch.Tensor], int, int]:
    """(saliency summed over the ranks of the default process group, how many ranks had seen
    gradients, how many ranks); without torch.distributed, the saliency itself and 1 rank."""
    if not is_distributed():
        return saliency, int(seen), 1
    if any(is_sharded(value) for value in saliency.values()):
        # FSDP reduced the gradients over the ranks before the hooks scored them: each rank
        # holds its shard of the same sum, and only whether every rank saw gradients is summed
        flag = torch.tensor([float(seen)])
        torch.distributed.all_reduce(flag)
        return saliency, int(flag.item()), torch.distributed.get_world_size()
    names = list(saliency)
    device = saliency[names[0]].device
    flat = torch.cat(
        [saliency[name].reshape(-1).to(device) for name in names]
        + [torch.tensor([float(seen)], device=device)]
    )
    torch.distributed.all_reduce(flat)
    parts = flat[:-1].split([saliency[name].numel() for name in names])
    summed = {
        name: part.view_as(saliency[name]).to(saliency[name].device)
        for name, part in zip(names, parts)
    }
    return summed, int(flat[-1].item()), torch.distributed.get_world_size()


def same_on_every_rank(
    masks: dict[str, torch.Tensor], layer_sparsity: dict[str, float]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Rank 0's masks on every rank (under torch.distributed). Scores summed over ranks give
    equal masks already; this also covers weights that differ between ranks, such as a
    Pruner built before DistributedDataParallel broadcast rank 0's weights."""
    if not is_distributed():
        return masks, layer_sparsity
    names = list(masks)
    flat = torch.cat([masks[name].reshape(-1).to("cpu", torch.uint8) for name in names])
    if torch.distributed.get_backend() == "nccl":
        flat = flat.cuda()
    torch.distributed.broadcast(flat, src=0)
    parts = flat.cpu().bool().split([masks[name].numel() for name in names])
    shared = [layer_sparsity]
    torch.distributed.broadcast_object_list(shared, src=0)
    return (
        {
            name: part.view_as(masks[name]).to(masks[name].device)
            for name, part in zip(names, parts)
        },
        shared[0],
    )
