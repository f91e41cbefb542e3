from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import LeNet5

# Table 2 of the paper: trainable parameters of each model size it reports.
PAPER_PARAMETER_COUNTS = [
    ("conv3d", (12, 22), 375_668),
    ("conv3d", (18, 28), 496_430),
    ("ttconv3d", (18, 28), 444_966),
    ("ttconv3d", (12, 22), 348_612),
    ("ttconv3d", (4, 14), 222_940),
    ("ttconv3d", (6, 16), 254_058),
]


@pytest.mark.parametrize(("conv", "channels", "expected"), PAPER_PARAMETER_COUNTS)
def test_parameter_counts_match_paper_table_2(conv, channels, expected):
    model = LeNet5(channels=channels, conv=conv)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("conv", ["conv3d", "ttconv3d"])
def test_forward_shape_and_layer_types(conv):
    model = LeNet5(channels=(4, 14), conv=conv)
    logits = model(torch.rand(3, 1, 30, 28, 28))
    assert logits.shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv3d, TTConv3d))]
    assert [type(m) for m in convs] == [TTConv3d if conv == "ttconv3d" else nn.Conv3d] * 2
    assert convs[0].padding == (2, 2, 2) and convs[1].padding == (0, 0, 0)


def test_names_follow_the_paper():
    assert LeNet5((18, 28), "ttconv3d").name == "LeNet-5-3DTTN (18, 28)"
    assert LeNet5((12, 22), "conv3d").name == "LeNet-5-3D (12, 22)"


def test_default_init_is_pytorch_default_and_identity_transforms():
    torch.manual_seed(0)
    model = LeNet5((18, 28), "ttconv3d")
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            # kaiming_uniform_(a=sqrt(5)) bounds the weights by 1/sqrt(fan_in)
            assert layer.weight.abs().max() <= 1 / math.sqrt(layer.in_features)
        if isinstance(layer, TTConv3d):
            assert torch.equal(layer.scale, torch.ones_like(layer.scale))
            assert not layer.rotation.any() and not layer.translation.any()
            kernel = layer.kernel()
            assert torch.allclose(kernel, layer.base.unsqueeze(2).expand_as(kernel))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conv": "conv2d"}, "conv must be one of"),
        ({"channels": (0, 4)}, r"channels must be two positive ints .*\(0, 4\)"),
        ({"channels": (4,)}, "channels must be two positive ints"),
        ({"num_classes": 1}, "num_classes must be an int >= 2, got 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LeNet5(**kwargs)
