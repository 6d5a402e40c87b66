"""The zoo suite's architectures: transformers' model classes built from configs with random
weights (no download), each with the config the sweep runs, a tiny one for ``--quick`` and
tests, and its inputs.

The sweep's configs are the published models' widths (hidden sizes, heads, FFN ratios,
image and patch sizes), with fewer layers where a full stack would take minutes on one
thread: the layers' shapes, which decide what the compiler can do, are the real ones. Each
entry says which published model it stands for.

A spec is a name with config overrides, as the other suites write them:
``"bert:num_hidden_layers=2"``; ``input_size`` (tokens, image side, audio frames) shapes
the input instead of going to the config.

    >>> ZOO["bert"].family
    'text encoder'
    >>> model, example = build("bert", tiny=True)
    >>> example[0].shape
    torch.Size([1, 16])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .models import parse_model

__all__ = ["FAMILIES", "ZOO", "Architecture", "build", "calibrate_batch_norm", "config_of"]

FAMILIES = (
    "text encoder",
    "decoder",
    "audio encoder",
    "vision transformer",
    "CNN",
    "mobile CNN",
)


@dataclass(frozen=True)
class Architecture:
    """One transformers model class and how the sweep builds and feeds it."""

    name: str
    family: str
    model_class: str  # a transformers class, e.g. "BertModel"
    config_class: str  # e.g. "BertConfig"
    stands_for: str  # the published model whose widths the config has
    config: dict[str, Any]  # the sweep's config
    tiny: dict[str, Any]  # overrides of ``config`` for --quick and tests
    inputs: str  # "tokens", "image" or "audio" (mel frames)
    input_size: int  # tokens, image side or mel frames
    tiny_input_size: int
    part: str | None = None  # a submodule to take ("encoder": Whisper's encoder)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} is not one of {FAMILIES}")
        if self.inputs not in ("tokens", "image", "audio"):
            raise ValueError(f"{self.name}: inputs must be tokens, image or audio")


_BERT_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
_TINY_TEXT = {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
              "num_hidden_layers": 1, "vocab_size": 1000}  # fmt: skip
_TINY_DECODER = {**_TINY_TEXT, "num_key_value_heads": 1}
# decoders run one forward over the prompt with no KV cache: a DynamicCache in the output is
# no tensor, and torch.export (compile_sparse's capture) refuses it ("not a known type";
# gs.sparsify_ is the path for generate() and its cache)
_PREFILL = {"use_cache": False}


def _entries() -> list[Architecture]:
    return [
        # -- text encoders, 128 tokens -------------------------------------------------
        Architecture(
            "bert", "text encoder", "BertModel", "BertConfig", "bert-base-uncased, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4}, _TINY_TEXT, "tokens", 128, 16,
        ),
        Architecture(
            "roberta", "text encoder", "RobertaModel", "RobertaConfig",
            "roberta-base, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "vocab_size": 50265,
             "max_position_embeddings": 514, "pad_token_id": 1},
            {**_TINY_TEXT, "pad_token_id": 1}, "tokens", 128, 16,
        ),
        Architecture(
            "distilbert", "text encoder", "DistilBertModel", "DistilBertConfig",
            "distilbert-base-uncased, 4 of 6 layers",
            {"dim": 768, "hidden_dim": 3072, "n_heads": 12, "n_layers": 4},
            {"dim": 64, "hidden_dim": 128, "n_heads": 2, "n_layers": 1, "vocab_size": 1000},
            "tokens", 128, 16,
        ),
        Architecture(
            "albert", "text encoder", "AlbertModel", "AlbertConfig",
            "albert-base-v2, 4 of 12 layers (one layer's weights, called 4 times)",
            {**_BERT_BASE, "embedding_size": 128, "num_hidden_layers": 4},
            {**_TINY_TEXT, "embedding_size": 32}, "tokens", 128, 16,
        ),
        Architecture(
            "electra", "text encoder", "ElectraModel", "ElectraConfig",
            "electra-base-discriminator, 4 of 12 layers",
            {**_BERT_BASE, "embedding_size": 768, "num_hidden_layers": 4},
            {**_TINY_TEXT, "embedding_size": 64}, "tokens", 128, 16,
        ),
        Architecture(
            "deberta-v2", "text encoder", "DebertaV2Model", "DebertaV2Config",
            "deberta-v3-base, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "vocab_size": 128100,
             "relative_attention": True, "position_buckets": 256, "max_relative_positions": -1,
             "pos_att_type": ["p2c", "c2p"], "norm_rel_ebd": "layer_norm",
             "share_att_key": True, "position_biased_input": False},
            {**_TINY_TEXT, "position_buckets": 16}, "tokens", 128, 16,
        ),
        Architecture(
            "mpnet", "text encoder", "MPNetModel", "MPNetConfig",
            "all-mpnet-base-v2, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4}, _TINY_TEXT, "tokens", 128, 16,
        ),
        Architecture(
            "t5-encoder", "text encoder", "T5EncoderModel", "T5Config",
            "t5-base's encoder, 4 of 12 layers",
            {"d_model": 768, "d_ff": 3072, "d_kv": 64, "num_heads": 12, "num_layers": 4},
            {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 1,
             "vocab_size": 1000},
            "tokens", 128, 16,
        ),
        # -- decoders (the base model, no LM head), 128 tokens, one forward, no KV cache ----
        Architecture(
            "gpt2", "decoder", "GPT2Model", "GPT2Config", "gpt2 (124M), 4 of 12 layers",
            {"n_embd": 768, "n_head": 12, "n_layer": 4, **_PREFILL},
            {"n_embd": 64, "n_head": 2, "n_layer": 1, "vocab_size": 1000}, "tokens", 128, 16,
            notes=("transformers' Conv1D layers: weights stored (in, out)",),
        ),
        Architecture(
            "opt", "decoder", "OPTModel", "OPTConfig", "opt-125m, 4 of 12 layers",
            {"hidden_size": 768, "ffn_dim": 3072, "num_attention_heads": 12,
             "num_hidden_layers": 4, "word_embed_proj_dim": 768, **_PREFILL},
            {"hidden_size": 64, "ffn_dim": 128, "num_attention_heads": 2,
             "num_hidden_layers": 1, "word_embed_proj_dim": 64, "vocab_size": 1000},
            "tokens", 128, 16,
        ),
        Architecture(
            "gpt-neox", "decoder", "GPTNeoXModel", "GPTNeoXConfig",
            "pythia-160m, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "vocab_size": 50304, "rotary_pct": 0.25,
             **_PREFILL},
            _TINY_TEXT, "tokens", 128, 16,
        ),
        Architecture(
            "llama", "decoder", "LlamaModel", "LlamaConfig", "TinyLlama-1.1B, 2 of 22 layers",
            {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
             "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 32000, **_PREFILL},
            _TINY_DECODER, "tokens", 128, 16,
        ),
        Architecture(
            "mistral", "decoder", "MistralModel", "MistralConfig",
            "Mistral-7B's shape at 1/4 width (hidden 1024, FFN 3584, head dim 128, GQA 4:1), "
            "2 layers",
            {"hidden_size": 1024, "intermediate_size": 3584, "num_attention_heads": 8,
             "num_key_value_heads": 2, "head_dim": 128, "num_hidden_layers": 2,
             "vocab_size": 32000, "sliding_window": 4096, **_PREFILL},
            _TINY_DECODER, "tokens", 128, 16,
        ),
        Architecture(
            "qwen2", "decoder", "Qwen2Model", "Qwen2Config", "Qwen2-0.5B, 2 of 24 layers",
            {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
             "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 151936,
             **_PREFILL},
            _TINY_DECODER, "tokens", 128, 16,
        ),
        Architecture(
            "phi", "decoder", "PhiModel", "PhiConfig", "phi-1.5, 2 of 24 layers",
            {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
             "num_hidden_layers": 2, "vocab_size": 51200, "partial_rotary_factor": 0.5,
             **_PREFILL},
            _TINY_TEXT, "tokens", 128, 16,
        ),
        # -- audio -----------------------------------------------------------------------
        Architecture(
            "whisper-encoder", "audio encoder", "WhisperModel", "WhisperConfig",
            "whisper-base's encoder, 4 of 6 layers, 10 s of audio (1000 mel frames)",
            {"d_model": 512, "encoder_layers": 4, "encoder_attention_heads": 8,
             "encoder_ffn_dim": 2048, "decoder_layers": 1, "decoder_attention_heads": 8,
             "num_mel_bins": 80,
             "max_source_positions": 500},
            {"d_model": 64, "encoder_layers": 1, "encoder_attention_heads": 2,
             "encoder_ffn_dim": 128, "decoder_attention_heads": 2, "decoder_ffn_dim": 128,
             "max_source_positions": 16},
            "audio", 1000, 32, part="encoder",
            notes=("the two conv1d layers of the front end stay dense (conv1d)",),
        ),
        # -- vision transformers, 224x224 ----------------------------------------------------
        Architecture(
            "vit", "vision transformer", "ViTModel", "ViTConfig", "vit-base-patch16-224, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "image_size": 224, "patch_size": 16},
            {**_TINY_TEXT, "image_size": 32, "patch_size": 8}, "image", 224, 32,
        ),
        Architecture(
            "deit", "vision transformer", "DeiTModel", "DeiTConfig",
            "deit-small-patch16-224, 6 of 12 layers",
            {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536,
             "num_hidden_layers": 6, "image_size": 224, "patch_size": 16},
            {**_TINY_TEXT, "image_size": 32, "patch_size": 8}, "image", 224, 32,
        ),
        Architecture(
            "beit", "vision transformer", "BeitModel", "BeitConfig",
            "beit-base-patch16-224, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "image_size": 224, "patch_size": 16,
             "use_relative_position_bias": True},
            {**_TINY_TEXT, "image_size": 32, "patch_size": 8}, "image", 224, 32,
        ),
        Architecture(
            "dinov2", "vision transformer", "Dinov2Model", "Dinov2Config",
            "dinov2-small (patch 14), 6 of 12 layers",
            {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 6,
             "image_size": 224, "patch_size": 14, "mlp_ratio": 4},
            {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
             "image_size": 28, "patch_size": 14, "mlp_ratio": 2},
            "image", 224, 28,
        ),
        Architecture(
            "clip-vision", "vision transformer", "CLIPVisionModel", "CLIPVisionConfig",
            "clip-vit-base-patch16's image tower, 4 of 12 layers",
            {**_BERT_BASE, "num_hidden_layers": 4, "image_size": 224, "patch_size": 16},
            {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
             "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
            "image", 224, 32,
        ),
        Architecture(
            "swin", "vision transformer", "SwinModel", "SwinConfig",
            "swin-tiny-patch4-window7-224, depths 2-2-2-2 (of 2-2-6-2)",
            {"embed_dim": 96, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
             "window_size": 7, "image_size": 224, "patch_size": 4},
            {"embed_dim": 32, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4,
             "image_size": 32, "patch_size": 4},
            "image", 224, 32,
        ),
        Architecture(
            "segformer", "vision transformer", "SegformerModel", "SegformerConfig",
            "segformer-b0 (MiT-b0) encoder at 512x512",
            {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2],
             "num_attention_heads": [1, 2, 5, 8], "decoder_hidden_size": 256},
            {"hidden_sizes": [16, 32], "depths": [1, 1], "num_attention_heads": [1, 1],
             "num_encoder_blocks": 2, "sr_ratios": [2, 1], "patch_sizes": [7, 3],
             "strides": [4, 2], "mlp_ratios": [2, 2]},
            "image", 512, 32,
            notes=("Mix-FFN's 3x3 convs are depthwise",),
        ),
        # -- CNNs, 224x224 -------------------------------------------------------------------
        Architecture(
            "resnet", "CNN", "ResNetModel", "ResNetConfig", "resnet-50",
            {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048],
             "embedding_size": 64, "layer_type": "bottleneck"},
            {"depths": [1, 1], "hidden_sizes": [32, 64], "embedding_size": 16},
            "image", 224, 32,
        ),
        Architecture(
            "convnext", "CNN", "ConvNextModel", "ConvNextConfig",
            "convnext-tiny-224, depths 2-2-2-2 (of 3-3-9-3)",
            {"hidden_sizes": [96, 192, 384, 768], "depths": [2, 2, 2, 2]},
            {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2},
            "image", 224, 32,
            notes=("7x7 depthwise convs; the pointwise layers are nn.Linear",),
        ),
        Architecture(
            "regnet", "CNN", "RegNetModel", "RegNetConfig", "regnet-y-040",
            {"embedding_size": 32, "hidden_sizes": [128, 192, 512, 1088],
             "depths": [2, 6, 12, 2], "groups_width": 64, "layer_type": "y"},
            {"embedding_size": 16, "hidden_sizes": [32, 64], "depths": [1, 1],
             "groups_width": 16},
            "image", 224, 32,
            notes=("3x3 grouped convs (64 channels a group)",),
        ),
        Architecture(
            "mobilenet-v2", "mobile CNN", "MobileNetV2Model", "MobileNetV2Config",
            "mobilenet_v2_1.0_224",
            {"depth_multiplier": 1.0, "image_size": 224},
            {"depth_multiplier": 0.35, "image_size": 32},
            "image", 224, 32,
            notes=("3x3 depthwise convs",),
        ),
        Architecture(
            "efficientnet", "mobile CNN", "EfficientNetModel", "EfficientNetConfig",
            "efficientnet-b0",
            {"width_coefficient": 1.0, "depth_coefficient": 1.0, "image_size": 224,
             "hidden_dim": 1280},
            {"width_coefficient": 0.25, "depth_coefficient": 0.25, "image_size": 32,
             "hidden_dim": 320},
            "image", 224, 32,
            notes=("depthwise convs, squeeze-excite",),
        ),
        Architecture(
            "mobilevit", "mobile CNN", "MobileViTModel", "MobileViTConfig", "mobilevit-small",
            {"image_size": 256},
            {"image_size": 32, "hidden_sizes": [32, 48, 64], "neck_hidden_sizes":
             [8, 16, 24, 32, 48, 64, 96]},
            "image", 256, 32,
            notes=("inverted residuals with depthwise convs, then transformer blocks",),
        ),
    ]  # fmt: skip


ZOO: dict[str, Architecture] = {entry.name: entry for entry in _entries()}


def config_of(spec: str, tiny: bool = False) -> tuple[Architecture, dict[str, Any], int]:
    """(the architecture, its config kwargs with the spec's overrides, the input size)."""
    name, overrides = parse_model(spec)
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    entry = ZOO[name]
    config = {**entry.config, **(entry.tiny if tiny else {})}
    input_size = overrides.pop("input_size", entry.tiny_input_size if tiny else entry.input_size)
    return entry, {**config, **overrides}, int(input_size)


def _inputs(entry: Architecture, config: Any, input_size: int, seed: int) -> tuple[torch.Tensor]:
    from groupsparse.models import image_inputs, token_inputs

    match entry.inputs:
        case "tokens":
            return token_inputs(1, input_size, config.vocab_size, seed=seed)
        case "image":
            return image_inputs(1, input_size, config.num_channels, seed=seed)
        case "audio":
            generator = torch.Generator().manual_seed(seed)
            return (torch.randn(1, config.num_mel_bins, input_size, generator=generator),)
    raise ValueError(f"unknown input kind {entry.inputs!r}")


def calibrate_batch_norm(
    model: nn.Module, example: tuple[torch.Tensor, ...], seed: int, batches: int = 8
) -> bool:
    """Give every batch norm of ``model`` PyTorch's default scale and shift (1 and 0) and
    the running statistics of the model's own activations on random inputs shaped like
    ``example`` (``batches`` batches of 4), as a trained network's are. Returns whether the
    model has batch norms.

    Why: from a config, transformers' CNNs have weights of std 0.02, batch norms that
    normalize by mean 0 and variance 1 and (EfficientNet, MobileViT) scales drawn from
    N(0, 0.02), so each layer shrinks the activations: EfficientNet's output was 0 and
    MobileViT's 5e-40 (subnormal), which makes the equivalence check vacuous and the timing
    that of denormal arithmetic. Pruning shrinks activations again, so the sweep calibrates
    the pruned model too (as one does after pruning, before fine-tuning).
    """
    from .checks import fresh_inputs

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_parameters()  # running statistics reset, scale 1, shift 0
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    try:
        with torch.no_grad():
            for index in range(batches):
                parts = [fresh_inputs(example, seed + 1000 * index + k) for k in range(4)]
                model(*(torch.cat(tensors) for tensors in zip(*parts)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()
    return True


def build(
    spec: str, tiny: bool = False, seed: int = 0
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(model in eval mode with random weights from ``seed``, its batch norms calibrated
    (:func:`calibrate_batch_norm`), example inputs, batch 1)."""
    import transformers

    entry, config_kwargs, input_size = config_of(spec, tiny)
    config = getattr(transformers, entry.config_class)(**config_kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, entry.model_class)(config)
    if entry.part is not None:
        model = getattr(model, entry.part)
    example = _inputs(entry, config, input_size, seed)
    model.eval()
    calibrate_batch_norm(model, example, seed)
    return model, example
