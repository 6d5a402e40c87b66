"""build_model: names, example inputs, errors."""

import pytest
import torch

from groupsparse.models import MODEL_NAMES, build_model

TRANSFORMERS_NAMES = {"bert-base", "vit-b16", "tiny-bert", "tiny-vit"}
# Cheap enough to build and run here; the 224x224 ImageNet models are covered elsewhere.
QUICK_NAMES = ["tiny-bert", "tiny-vit", "small-cnn", "small-resnet", "small-vit", "demo-cnn"]


def test_model_names():
    assert set(MODEL_NAMES) == {
        "vgg16",
        "resnet50",
        "resnet18",
        "bert-base",
        "vit-b16",
        "tiny-bert",
        "tiny-vit",
        "small-cnn",
        "small-resnet",
        "small-vit",
        "demo-cnn",
    }


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg19'") as error:
        build_model("vgg19")
    assert all(name in str(error.value) for name in MODEL_NAMES)


def test_bad_batch_and_unknown_kwargs():
    with pytest.raises(ValueError, match="batch"):
        build_model("small-cnn", batch=0)
    with pytest.raises(TypeError):
        build_model("small-cnn", not_an_argument=1)


@pytest.mark.parametrize("name", QUICK_NAMES)
@torch.no_grad()
def test_builds_in_eval_mode_and_runs_on_its_inputs(name):
    if name in TRANSFORMERS_NAMES:
        pytest.importorskip("transformers")
    model, inputs = build_model(name, batch=2)
    assert isinstance(inputs, tuple) and inputs[0].shape[0] == 2
    assert not model.training
    model(*inputs)


def test_default_input_shapes():
    _, (images,) = build_model("resnet18")
    assert images.shape == (1, 3, 224, 224)
    _, (digits,) = build_model("small-cnn")
    assert digits.shape == (1, 1, 8, 8)
    _, (demo,) = build_model("demo-cnn")
    assert demo.shape == (1, 3, 56, 56)


def test_bert_inputs_have_128_tokens():
    pytest.importorskip("transformers")
    _, (input_ids,) = build_model("tiny-bert")
    assert input_ids.shape == (1, 128)
    _, (input_ids,) = build_model("tiny-bert", seq_len=32, batch=3)
    assert input_ids.shape == (3, 32)


def test_kwargs_reach_the_model_and_inputs():
    model, (images,) = build_model("small-resnet", num_classes=5, width=8, image_size=32)
    assert images.shape == (1, 1, 32, 32)
    assert model(images).shape == (1, 5)
    model, (images,) = build_model("small-vit", image_size=16, patch_size=4, in_channels=3)
    assert images.shape == (1, 3, 16, 16)
    assert model(images).shape == (1, 10)
