"""gs.sparsify_ on transformers' causal LMs (GPT2LMHeadModel, LlamaForCausalLM; small configs,
random weights, pruned group-wise to 75%): ``generate()`` with its KV cache runs the sparse
layers, and teacher-forced on the masked model's tokens their logits match the masked model's
at every step (float32 within 1e-4; bfloat16 no worse than 3x eager bfloat16's error against
float32). ``unsparsify_`` gives the masked model back bit for bit, a state_dict round-trips,
and GPT-2's tied LM head stays dense."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.runtime import kernels
from tests.sparsify import max_relative_error

transformers = pytest.importorskip("transformers")
from transformers import LogitsProcessor, LogitsProcessorList

BF16 = kernels.kernel_of("grouped", "linear", "cpu").unavailable(torch.bfloat16)
PROMPT, NEW = 6, 12
VOCAB = 100


def _gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def _llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0,
        eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}


def _pruned(name: str, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = MODELS[name](seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's tied head is left unpruned, with a warning
        masks = gs.prune(model, "group", 0.75, group_size=16)
    return model, masks


def _prompt(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(seed))


class _Force(LogitsProcessor):
    """Teacher forcing inside generate(): step i picks ``tokens[:, i]`` whatever the logits."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - PROMPT
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, self.tokens[:, step : step + 1], 0.0)
        return forced


def _generate(model: nn.Module, prompt: torch.Tensor, tokens: torch.Tensor | None = None):
    """(sequences, logits per step) of greedy generate() with the KV cache; teacher-forced on
    ``tokens`` when given. The logits are the model's own, before any processor."""
    processors = LogitsProcessorList([_Force(tokens)] if tokens is not None else [])
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0,
            logits_processor=processors, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    return out.sequences, torch.stack(out.logits)


def _pruned_names(masks: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name.removesuffix(".weight") for name in masks)


@pytest.mark.parametrize("name", list(MODELS))
def test_generate_teacher_forced_matches_the_masked_model_at_every_step(name):
    model, masks = _pruned(name)
    masked = copy.deepcopy(model)
    prompt = _prompt(1)
    sequences, expected = _generate(masked, prompt)
    report = gs.sparsify_(model, decide="always")
    assert sorted(report.rewritten) == _pruned_names(masks)
    assert all(isinstance(model.get_submodule(n), gs.SparseLayer) for n in report.rewritten)
    forced, logits = _generate(model, prompt, sequences[:, PROMPT:])
    assert torch.equal(forced, sequences)
    assert logits.shape == expected.shape == (NEW, 2, VOCAB)
    for step in range(NEW):
        assert max_relative_error(logits[step], expected[step]) < 1e-4, step


@pytest.mark.skipif(BF16 is not None, reason=str(BF16))
@pytest.mark.parametrize("name", list(MODELS))
def test_bfloat16_generate_is_no_worse_than_3x_eager_bfloat16(name):
    model, _ = _pruned(name)
    prompt = _prompt(2)
    sequences, reference = _generate(model, prompt)  # float32, masked
    tokens = sequences[:, PROMPT:]
    eager = copy.deepcopy(model).to(torch.bfloat16)
    _, eager_logits = _generate(eager, prompt, tokens)
    report = gs.sparsify_(eager, decide="always")  # the bfloat16 copy, swapped in place
    assert {eager.get_submodule(n).weight.dtype for n in report.rewritten} == {torch.bfloat16}
    _, logits = _generate(eager, prompt, tokens)
    ours = max_relative_error(logits.float(), reference)
    baseline = max_relative_error(eager_logits.float(), reference)
    assert ours <= 3 * baseline, (ours, baseline)


@pytest.mark.parametrize("name", list(MODELS))
def test_unsparsify_gives_the_masked_model_back_bit_for_bit(name):
    model, _ = _pruned(name)
    masked = copy.deepcopy(model)
    before = dict(model.named_modules())
    gs.sparsify_(model, decide="always")
    assert gs.unsparsify_(model) > 0
    assert dict(model.named_modules()) == before  # the very same module objects
    assert not any(isinstance(m, gs.SparseLayer) for m in model.modules())
    prompt = _prompt(3)
    expected, got = _generate(masked, prompt), _generate(model, prompt)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert gs.unsparsify_(model) == 0  # nothing left to undo


@pytest.mark.parametrize("name", list(MODELS))
def test_a_sparsified_state_dict_loads_into_a_model_sparsified_alike(name):
    source, masks = _pruned(name, seed=0)
    gs.sparsify_(source, decide="cost")
    state = source.state_dict()
    sparse_keys = [key for key in state if key.endswith(".columns")]
    assert len(sparse_keys) == len(masks)
    # the same architecture and masks, other weights
    target = MODELS[name](seed=1)
    with torch.no_grad():
        for key, mask in masks.items():
            target.get_parameter(key).mul_(mask)
    gs.sparsify_(target, decide="cost")
    target.load_state_dict(state)
    prompt = _prompt(4, batch=1)
    with torch.no_grad():
        assert torch.equal(target(prompt).logits, source(prompt).logits)
    # unsparsify_ after the load gives the dense model the loaded weights stand for
    gs.unsparsify_(source)
    gs.unsparsify_(target)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(target(prompt).logits, source(prompt).logits)


def test_a_dense_state_dict_does_not_load_into_a_sparsified_model():
    model, _ = _pruned("llama")
    dense_state = copy.deepcopy(model.state_dict())
    gs.sparsify_(model, decide="cost")
    with pytest.raises(RuntimeError, match="columns"):
        model.load_state_dict(dense_state)


def test_gpt2s_tied_head_stays_dense_and_says_why():
    model = _gpt2()
    # pruned even the tied head (accelerated_only=False): its weight is the embedding's
    gs.prune(model, "group", 0.75, group_size=16, accelerated_only=False)
    head = model.lm_head
    report = gs.sparsify_(model, decide="always")
    row = report["lm_head"]
    assert row.decision == "dense"
    assert "weight tied to embedding 'transformer.wte'" in row.reason
    assert model.lm_head is head and model.lm_head.weight is model.transformer.wte.weight
    assert len(report.rewritten) == 8  # every Conv1D


def test_decisions_are_timed_on_example_inputs_and_by_the_cost_model_without():
    timed_model, _ = _pruned("gpt2")
    costed_model = copy.deepcopy(timed_model)
    timed = gs.sparsify_(timed_model, {"input_ids": _prompt(5, batch=1)[:, :1]})
    costed = gs.sparsify_(costed_model)
    conv1d = [row for row in timed if row.name != "lm_head"]
    assert all(row.dense_ms is not None and row.sparse_ms is not None for row in conv1d)
    assert all(
        row.reason.startswith("cost model: keeps 25%") for row in costed if row.name != "lm_head"
    )
    assert len(costed.rewritten) == 8
