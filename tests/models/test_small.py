"""The small models run, take their size arguments, and trace with torch.fx to the same output."""

import pytest
import torch
import torch.fx
from torch import nn

from groupsparse.models import SmallCNN, SmallResNet, SmallViT, demo_cnn

SMALL_MODELS = {
    "cnn": (lambda: SmallCNN(), (2, 1, 8, 8)),
    "resnet": (lambda: SmallResNet(), (2, 1, 8, 8)),
    "resnet-32px": (lambda: SmallResNet(blocks_per_stage=2), (2, 1, 32, 32)),
    "vit": (lambda: SmallViT(), (2, 1, 8, 8)),
    "demo-cnn": (demo_cnn, (1, 3, 56, 56)),
}


@pytest.mark.parametrize("name", list(SMALL_MODELS))
@torch.no_grad()
def test_symbolic_trace_matches_eager(name):
    build, shape = SMALL_MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(shape)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    linears = [
        node
        for node in traced.graph.nodes
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Linear)
    ]
    assert linears, "the linear layers stay visible as modules in the traced graph"


@pytest.mark.parametrize("model_class", [SmallCNN, SmallResNet, SmallViT])
def test_size_arguments(model_class):
    kwargs = {"in_channels": 3, "num_classes": 7, "width": 16}
    if model_class is SmallViT:
        kwargs["image_size"] = 16
    model = model_class(**kwargs)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths[0] == 16
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_small_cnn_layers_and_demo_channels():
    channels = [m.out_channels for m in demo_cnn().modules() if isinstance(m, nn.Conv2d)]
    assert channels == [64, 128, 256]
    model = SmallCNN(layers=(8, "M", 16))
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="patch_size"):
        SmallViT(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="num_heads"):
        SmallViT(width=30, num_heads=4)
    with pytest.raises(ValueError, match="at least one conv"):
        SmallCNN(layers=("M",))


def test_small_models_train():
    """A few optimizer steps lower the loss: the models are usable for the accuracy study."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for model in (SmallCNN(width=8), SmallResNet(width=8), SmallViT(width=16)):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], type(model).__name__
