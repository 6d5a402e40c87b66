"""transformers' BertModel (bert-base) and ViTModel (ViT-B/16) built from configs, and tiny
versions for tests. Random weights, no download, eval mode.

transformers is imported inside the functions (it is the ``models`` extra), so importing
``groupsparse.models`` does not need it.

Attention defaults to ``attn_implementation="eager"`` (explicit matmul + softmax). Both
"eager" and "sdpa" are captured whole by Dynamo (one graph, 73 linear calls for
bert-base and ViT-B/16, ``fullgraph=True`` works) and by ``torch.export``; neither model
can be traced by ``torch.fx.symbolic_trace``.

Example::

    >>> model = tiny_bert()
    >>> model(*bert_inputs(model, batch=2, seq_len=16)).last_hidden_state.shape
    torch.Size([2, 16, 64])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .inputs import image_inputs, token_inputs

if TYPE_CHECKING:
    from transformers import BertModel, ViTModel

__all__ = ["bert_base", "bert_inputs", "tiny_bert", "tiny_vit", "vit_b16", "vit_inputs"]

# Small enough for unit tests: 2 layers, hidden 64, 4 heads, intermediate 128.
_TINY: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


def _transformers(caller: str) -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"{caller}() needs the transformers package; install it with "
            "`pip install groupsparse[models]`"
        ) from error
    return transformers


def _bert(caller: str, config_kwargs: dict[str, Any]) -> BertModel:
    transformers = _transformers(caller)
    config = transformers.BertConfig(**config_kwargs)
    return transformers.BertModel(config).eval()


def _vit(caller: str, config_kwargs: dict[str, Any]) -> ViTModel:
    transformers = _transformers(caller)
    config = transformers.ViTConfig(**config_kwargs)
    return transformers.ViTModel(config).eval()


def bert_base(
    num_layers: int = 12, *, attn_implementation: str = "eager", **config_kwargs: Any
) -> BertModel:
    """transformers' BertModel with the bert-base-uncased config (hidden 768, 12 heads,
    intermediate 3072) and ``num_layers`` encoder layers; random weights, eval mode.

    ``config_kwargs`` go to ``BertConfig`` (for example ``add_cross_attention``).

    Example::

        >>> model = bert_base(num_layers=2)
        >>> model(*bert_inputs(model, seq_len=128)).last_hidden_state.shape
        torch.Size([1, 128, 768])
    """
    return _bert(
        "bert_base",
        {
            "num_hidden_layers": num_layers,
            "attn_implementation": attn_implementation,
            **config_kwargs,
        },
    )


def vit_b16(
    num_layers: int = 12, *, attn_implementation: str = "eager", **config_kwargs: Any
) -> ViTModel:
    """transformers' ViTModel with the ViT-B/16 config (224x224 images, 16x16 patches, hidden
    768, 12 heads, intermediate 3072) and ``num_layers`` layers; random weights, eval mode.

    ``config_kwargs`` go to ``ViTConfig`` (for example ``image_size``).

    Example::

        >>> model = vit_b16(num_layers=2)
        >>> model(*vit_inputs(model)).last_hidden_state.shape
        torch.Size([1, 197, 768])
    """
    return _vit(
        "vit_b16",
        {
            "num_hidden_layers": num_layers,
            "attn_implementation": attn_implementation,
            **config_kwargs,
        },
    )


def tiny_bert(*, attn_implementation: str = "eager", **config_kwargs: Any) -> BertModel:
    """A 2-layer BertModel (hidden 64, 4 heads, intermediate 128, vocabulary 1000) for tests.

    Example::

        >>> model = tiny_bert()
        >>> model(*bert_inputs(model, seq_len=8)).last_hidden_state.shape
        torch.Size([1, 8, 64])
    """
    return _bert(
        "tiny_bert",
        {**_TINY, "vocab_size": 1000, "attn_implementation": attn_implementation, **config_kwargs},
    )


def tiny_vit(*, attn_implementation: str = "eager", **config_kwargs: Any) -> ViTModel:
    """A 2-layer ViTModel (32x32 images, 8x8 patches, hidden 64, 4 heads, intermediate 128).

    Example::

        >>> model = tiny_vit()
        >>> model(*vit_inputs(model)).last_hidden_state.shape
        torch.Size([1, 17, 64])
    """
    return _vit(
        "tiny_vit",
        {
            **_TINY,
            "image_size": 32,
            "patch_size": 8,
            "attn_implementation": attn_implementation,
            **config_kwargs,
        },
    )


def bert_inputs(
    model: BertModel, batch: int = 1, seq_len: int = 128, *, seed: int = 0
) -> tuple[torch.Tensor]:
    """``(input_ids,)`` of shape (batch, seq_len) within the model's vocabulary, fixed seed.

    Example::

        >>> bert_inputs(tiny_bert(), batch=2, seq_len=16)[0].shape
        torch.Size([2, 16])
    """
    limit = model.config.max_position_embeddings
    if seq_len > limit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions")
    return token_inputs(batch, seq_len, model.config.vocab_size, seed=seed)


def vit_inputs(model: ViTModel, batch: int = 1, *, seed: int = 0) -> tuple[torch.Tensor]:
    """``(pixel_values,)`` of shape (batch, channels, image_size, image_size) from the model's
    config, fixed seed.

    Example::

        >>> vit_inputs(tiny_vit(), batch=2)[0].shape
        torch.Size([2, 3, 32, 32])
    """
    config = model.config
    return image_inputs(batch, config.image_size, config.num_channels, seed=seed)
