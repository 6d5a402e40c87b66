"""Example inputs: random images and token ids from a fixed-seed generator (always on the CPU).

Example::

    >>> (images,) = image_inputs(batch=2, size=32)
    >>> images.shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import torch

__all__ = ["image_inputs", "token_inputs"]


def image_inputs(
    batch: int = 1, size: int = 224, channels: int = 3, *, seed: int = 0
) -> tuple[torch.Tensor]:
    """``(images,)``: standard-normal float32 images of shape (batch, channels, size, size).

    Example::

        >>> image_inputs(seed=1)[0].equal(image_inputs(seed=1)[0])
        True
    """
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, size, size, generator=generator),)


def token_inputs(
    batch: int = 1, seq_len: int = 128, vocab_size: int = 30522, *, seed: int = 0
) -> tuple[torch.Tensor]:
    """``(input_ids,)``: int64 token ids of shape (batch, seq_len), uniform in [0, vocab_size).

    Example::

        >>> token_inputs(batch=2, seq_len=16)[0].shape
        torch.Size([2, 16])
    """
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab_size, (batch, seq_len), generator=generator),)
