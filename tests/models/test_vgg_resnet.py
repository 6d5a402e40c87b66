"""VGG-16 and ResNet-18/50 match torchvision's published sizes, shapes and state_dict keys."""

import pytest
import torch
from torch import nn

from groupsparse.models import image_inputs, resnet18, resnet50, vgg16


def _parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return vgg16().eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return resnet50().eval()


def test_vgg16_parameter_count(vgg):
    assert _parameter_count(vgg) == 138_357_544


def test_resnet50_parameter_count(resnet):
    assert _parameter_count(resnet) == 25_557_032


def test_resnet18_parameter_count():
    assert _parameter_count(resnet18()) == 11_689_512


def test_vgg16_state_dict_follows_torchvision_naming(vgg):
    state = vgg.state_dict()
    assert len(state) == 32
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert state["features.28.weight"].shape == (512, 512, 3, 3)
    assert state["classifier.0.weight"].shape == (4096, 25088)
    assert state["classifier.6.bias"].shape == (1000,)
    # max-pools sit at the same indices as torchvision's, so conv indices agree too
    pools = [index for index, module in enumerate(vgg.features) if isinstance(module, nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]
    assert isinstance(vgg.avgpool, nn.AdaptiveAvgPool2d) and vgg.avgpool.output_size == (7, 7)


def test_resnet50_state_dict_follows_torchvision_naming(resnet):
    state = resnet.state_dict()
    assert len(state) == 320
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer1.0.downsample.1.running_mean"].shape == (256,)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)
    assert "layer4.2.downsample.0.weight" not in state


def test_resnet50_is_v1_5_stride_on_the_3x3_conv(resnet):
    first = resnet.layer2[0]
    assert first.conv1.stride == (1, 1)
    assert first.conv2.stride == (2, 2)
    assert first.downsample[0].stride == (2, 2)


def test_resnet18_state_dict_follows_torchvision_naming():
    state = resnet18().state_dict()
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert "layer1.0.downsample.0.weight" not in state


def test_num_classes():
    assert resnet18(num_classes=10).fc.out_features == 10


# One 224x224 forward pass each: these are the slow tests of this file.
@torch.no_grad()
def test_vgg16_output_shape(vgg):
    assert vgg(*image_inputs()).shape == (1, 1000)


@torch.no_grad()
def test_resnet50_output_shape(resnet):
    assert resnet(*image_inputs()).shape == (1, 1000)
