from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_ttn.conv2plus1d import Conv2Plus1d, middle_channels
from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import FAMILIES, LeNet5

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


WIDTHS = sorted({channels for _, channels, _ in PAPER_PARAMETER_COUNTS})


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("channels", WIDTHS)
def test_conv2plus1d_has_about_the_parameters_and_the_shapes_of_the_3d_model(channels):
    """torchvision's middle-width rule keeps each (2+1)D pair within 5% of its Conv3d."""
    plain, factored = LeNet5(channels, "conv3d"), LeNet5(channels, "conv2plus1d")
    for conv, pair in zip(plain.features[::3], factored.features[::3], strict=True):
        assert isinstance(pair, Conv2Plus1d)
        assert abs(_count(pair) - _count(conv)) <= 0.05 * _count(conv)
    assert abs(_count(factored) - _count(plain)) <= 0.05 * _count(plain)
    clips = torch.rand(2, 1, 30, 28, 28)
    for a, b in zip(plain.features, factored.features, strict=True):
        clips_a, clips = a(clips), b(clips)
        assert clips_a.shape == clips.shape
    assert factored(torch.rand(2, 1, 30, 28, 28)).shape == (2, 10)


def test_conv2plus1d_is_spatial_then_temporal_with_torchvisions_middle_width():
    pair = Conv2Plus1d(12, 22, kernel_size=5, padding=2)
    spatial, _, temporal = pair
    assert middle_channels(12, 22, 5) == 12 * 22 * 125 // (12 * 25 + 5 * 22) == 80
    assert spatial.kernel_size == (1, 5, 5) and spatial.padding == (0, 2, 2)
    assert temporal.kernel_size == (5, 1, 1) and temporal.padding == (2, 0, 0)
    assert spatial.out_channels == temporal.in_channels == 80


def test_fixed_family_has_no_transform_parameters_and_repeats_k0():
    model = LeNet5((18, 28), "ttconv3d", transform="none")
    assert model.family == "3DTTN-fixed" and model.name == "LeNet-5-3DTTN-fixed (18, 28)"
    layer = model.features[3]
    assert {name for name, _ in layer.named_parameters()} == {"base", "bias"}
    assert torch.equal(layer.kernel(), layer.base.unsqueeze(2).expand(-1, -1, 5, -1, -1))
    # The similarity model minus its 4 transform parameters per channel and transition.
    assert _count(model) == 444_966 - 4 * 4 * (18 + 28)


@pytest.mark.parametrize(
    ("conv", "transform", "family"),
    [("conv3d", "similarity", "3D"), ("ttconv3d", "similarity", "3DTTN"),
     ("ttconv3d", "none", "3DTTN-fixed"), ("conv2plus1d", "similarity", "2+1D")],
)
def test_every_family_name_is_owned_by_models(conv, transform, family):
    assert LeNet5((4, 14), conv, transform=transform).family == family
    assert FAMILIES[family].conv == conv


def test_transform_needs_ttconv3d():
    with pytest.raises(ValueError, match="transform='none' needs conv='ttconv3d'"):
        LeNet5((4, 14), "conv3d", transform="none")
