"""transformers' BERT and ViT built from configs: sizes, eval mode, eager attention, Dynamo."""

import sys

import pytest
import torch

from groupsparse.models import bert_base, bert_inputs, tiny_bert, tiny_vit, vit_b16, vit_inputs

pytest.importorskip("transformers")


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_tiny_bert_runs():
    model = tiny_bert()
    assert not model.training
    assert model.config._attn_implementation == "eager"
    (input_ids,) = bert_inputs(model, batch=2, seq_len=16)
    assert input_ids.dtype == torch.int64 and int(input_ids.max()) < model.config.vocab_size
    with torch.no_grad():
        assert model(input_ids).last_hidden_state.shape == (2, 16, 64)


def test_tiny_vit_runs():
    model = tiny_vit()
    assert not model.training
    (pixel_values,) = vit_inputs(model, batch=2)
    assert pixel_values.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert model(pixel_values).last_hidden_state.shape == (2, 17, 64)


def test_inputs_are_fixed_by_the_seed():
    model = tiny_bert()
    assert bert_inputs(model, seed=3)[0].equal(bert_inputs(model, seed=3)[0])
    assert not bert_inputs(model, seed=3)[0].equal(bert_inputs(model, seed=4)[0])


def test_bert_inputs_longer_than_the_positions_raise():
    with pytest.raises(ValueError, match="positions"):
        bert_inputs(tiny_bert(), seq_len=513)


@pytest.mark.slow
def test_full_size_parameter_counts():
    """bert-base-uncased and ViT-B/16 (with pooler) have their published sizes."""
    assert _parameter_count(bert_base()) == 109_482_240
    assert _parameter_count(vit_b16()) == 86_389_248


def test_config_kwargs_reach_the_config():
    assert bert_base(num_layers=1, hidden_dropout_prob=0.0).config.hidden_dropout_prob == 0.0
    assert tiny_vit(image_size=64).config.image_size == 64


@pytest.mark.parametrize("build, make_inputs", [(tiny_bert, bert_inputs), (tiny_vit, vit_inputs)])
@torch.no_grad()
def test_dynamo_captures_one_graph(build, make_inputs):
    torch._dynamo.reset()
    model = build()
    inputs = make_inputs(model)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(*inputs).last_hidden_state, model(*inputs).last_hidden_state, rtol=0, atol=0
    )


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install groupsparse\[models\]"):
        tiny_bert()
