"""``convert_conv3d`` on other people's 3D networks: MONAI's DenseNet121 and UNet.

Skipped where MONAI is not installed (it is not in requirements.txt; ``pip install monai`` keeps
the installed torch).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ttn import TTConv3d, convert_conv3d
from lightning_ttn.convert import KEPT_TEMPORAL_SIZE_ONE

nets = pytest.importorskip("monai.networks.nets")

from test_convert import n_params, tt_params  # noqa: E402  (tests/ is on sys.path)

# (network, input (B, C, D, H, W), nn.Conv3d with T > 1, with T = 1, parameters before, after).
# DenseNet121 pools by 32: H, W = 64 leave 2x2 positions in its last block, so that its 3x3
# kernels' off-centre taps, and with them rotation and scale, get a gradient.
NETWORKS = {
    "densenet121": (
        lambda: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3),
        (2, 1, 32, 64, 64), 59, 61, 11_245_699, 6_967_043,
    ),
    "unet": (
        lambda: nets.UNet(
            spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
            num_res_units=2,
        ),
        (2, 1, 8, 16, 16), 10, 1, 18_269, 8_853,
    ),
}


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_converted_monai_network_trains_every_parameter(network):
    make, shape, n_converted, n_kept, params_before, params_after = NETWORKS[network]
    torch.manual_seed(0)
    model = make()
    before = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv3d)}
    assert n_params(model) == params_before

    conversion = convert_conv3d(model)

    assert conversion.module is model
    assert len(conversion.converted) == n_converted and len(conversion.kept) == n_kept
    assert set(conversion.converted) | set(conversion.kept) == before.keys()  # every conv once
    assert not set(conversion.converted) & set(conversion.kept)
    assert set(conversion.kept.values()) == {KEPT_TEMPORAL_SIZE_ONE}
    for name, module in model.named_modules():
        if name in conversion.kept:
            assert module is before[name] and module.kernel_size[0] == 1, name
        elif isinstance(module, TTConv3d):
            assert name in conversion.converted and module.kernel_size[0] > 1, name
    # UNet's up-sampling ConvTranspose3d is no nn.Conv3d: left as it is.
    assert n_params(model) == params_after == params_before - sum(
        n_params(before[name]) - tt_params(before[name]) for name in conversion.converted
    )
    out = model(torch.randn(shape))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.numel() > 0, name
        assert p.grad is not None and p.grad.abs().sum() > 0, name
