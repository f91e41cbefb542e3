"""Tests of ``convert_conv3d``: every ``nn.Conv3d`` with ``T > 1`` becomes a ``TTConv3d``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ttn import TTConv3d, convert_conv3d
from lightning_ttn.convert import KEPT_TEMPORAL_SIZE_ONE

F64 = torch.float64
CONFIG = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "padding_mode",
)


class Block(nn.Module):
    """R(2+1)D/R3D basic block: conv-BN-ReLU-conv-BN plus a shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding="same", groups=2, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(  # 1x1x1 projection
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyR3D(nn.Module):
    """A small R3D: strided stem, two residual stages, a dilated replicate-padded head conv."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 8, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False),
            nn.BatchNorm3d(8),
            nn.ReLU(),
        )
        self.stages = nn.ModuleList([Block(8, 8, 1), Block(8, 16, 2)])
        self.head = nn.Conv3d(16, 16, 3, padding=2, dilation=2, padding_mode="replicate")
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.pool(torch.relu(self.head(x))).flatten(1))


def convs(model: nn.Module, cls: type[nn.Module]) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tt_params(conv: nn.Conv3d) -> int:
    """Parameters of the similarity ``TTConv3d`` replacing ``conv``: K0, 4 per transition, bias."""
    T, kH, kW = conv.kernel_size
    bias = conv.out_channels if conv.bias is not None else 0
    return conv.out_channels * (conv.in_channels // conv.groups * kH * kW + 4 * (T - 1)) + bias


def test_converts_the_temporal_convs_of_an_r3d_in_place_and_keeps_the_1x1x1():
    torch.manual_seed(0)
    model = TinyR3D()
    before = convs(model, nn.Conv3d)
    others = {n: m for n, m in model.named_modules() if not isinstance(m, nn.Conv3d)}
    x = torch.randn(2, 3, 4, 16, 16)  # (B, C, D, H, W)
    expected_shape = model(x).shape
    n_before = n_params(model)

    conversion = convert_conv3d(model)

    assert conversion.module is model  # children replaced in place
    shortcut = "stages.1.shortcut.0"  # the 1x1x1 projection
    assert conversion.kept == {shortcut: KEPT_TEMPORAL_SIZE_ONE}
    assert convs(model, nn.Conv3d) == {shortcut: before[shortcut]}  # the same object, untouched
    after = convs(model, TTConv3d)
    assert len(before) == 7 and set(conversion.converted) == after.keys() == before.keys() - {
        shortcut
    }
    assert conversion.summary() == (
        "converted 6 nn.Conv3d to TTConv3d, kept 1 (temporal kernel size 1: nothing to factorize)"
    )
    for name, layer in after.items():
        conv = before[name]
        assert layer.kernel_size[0] > 1, name
        for field in CONFIG:
            assert getattr(layer, field) == getattr(conv, field), (name, field)
        assert (layer.bias is None) == (conv.bias is None), name
        torch.testing.assert_close(layer.base, conv.weight.mean(dim=2), atol=0, rtol=0)
    # Every other module is the same object as before.
    for name, module in model.named_modules():
        if name in others:
            assert module is others[name], name
    assert n_params(model) == n_before - sum(
        n_params(before[name]) - tt_params(before[name]) for name in after
    )
    out = model(x)
    assert out.shape == expected_shape
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.numel() > 0, name
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_temporal_size_one_conv_is_kept():
    conv = nn.Conv3d(2, 4, (1, 3, 3))
    conversion = convert_conv3d(conv)
    assert conversion.module is conv and conversion.converted == ()
    assert conversion.kept == {"": KEPT_TEMPORAL_SIZE_ONE}
    assert conversion.summary() == (
        "converted 0 nn.Conv3d to TTConv3d, kept 1 (temporal kernel size 1: nothing to factorize)"
    )


def test_temporally_constant_kernels_are_reproduced():
    # K0 = temporal mean: a conv whose weight is the same in every slice converts to itself.
    torch.manual_seed(0)
    model = TinyR3D().to(F64).eval()
    with torch.no_grad():
        for conv in convs(model, nn.Conv3d).values():
            conv.weight.copy_(conv.weight[:, :, :1].expand_as(conv.weight))
    x = torch.randn(2, 3, 4, 16, 16, dtype=F64)
    expected = model(x)
    convert_conv3d(model, transform="none")
    assert not model.training and all(not m.training for m in model.modules())
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=0)


def test_transform_arguments_are_passed_on():
    model = convert_conv3d(TinyR3D(), transform="affine", shared_transform=True).module
    layers = convs(model, TTConv3d).values()
    assert all(layer.transform == "affine" and layer.shared_transform for layer in layers)


def test_a_conv_is_returned_as_a_new_layer():
    conv = nn.Conv3d(2, 4, 3, padding="valid", dtype=F64)
    conversion = convert_conv3d(conv)
    layer = conversion.module
    assert conversion.converted == ("",) and conversion.kept == {}
    assert type(layer) is TTConv3d and isinstance(conv, nn.Conv3d)
    assert layer.padding == "valid" and layer.base.dtype == F64


def test_shared_conv_stays_shared():
    conv = nn.Conv3d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    model.add_module("again", conv)  # the same conv under a third name
    model.add_module("pointwise", nn.Conv3d(2, 2, 1))
    model.add_module("pointwise_again", model.pointwise)
    conversion = convert_conv3d(model)
    assert isinstance(model[0], TTConv3d) and model[0] is model[2] is model.again
    assert conversion.converted == ("0",)  # once, under its first name
    assert conversion.kept == {"pointwise": KEPT_TEMPORAL_SIZE_ONE}
    assert type(model.pointwise) is nn.Conv3d and model.pointwise is model.pointwise_again


def test_model_without_conv3d_is_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), TTConv3d(4, 4, 3))
    children = list(model.children())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    conversion = convert_conv3d(model)
    assert conversion.module is model and conversion.converted == () and conversion.kept == {}
    assert conversion.summary() == "converted 0 nn.Conv3d to TTConv3d"
    assert list(model.children()) == children
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.parametrize("value", [None, "model", nn.Conv3d])
def test_non_module_raises(value):
    with pytest.raises(TypeError, match="module must be an nn.Module, got"):
        convert_conv3d(value)


def test_invalid_transform_raises():
    with pytest.raises(ValueError, match="transform must be one of"):
        convert_conv3d(TinyR3D(), transform="rigid")
