"""How far the learned TT transforms moved from the identity (degrees, pixels) and what the
built kernels compute over time (their temporal energy profile)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ttn.layers import TTConv3d
from lightning_ttn.training.record import COLLAPSE_THRESHOLD, KernelHealth, TransformDrift


def similarity_values(layer: TTConv3d) -> dict[str, Tensor]:
    """A similarity layer's transforms in readable units, each ``(O, transitions)``.

    Θ's translation is in normalized kernel coordinates: one unit is ``kW/2`` pixels in x and
    ``kH/2`` in y (so its gradient is ``kW/2`` times the per-pixel one).
    """
    _, k_h, k_w = layer.kernel_size
    return {
        "scale": layer.scale.detach(),
        "rotation_deg": torch.rad2deg(layer.rotation.detach()),
        "tx_px": layer.translation.detach()[..., 0] * k_w / 2,
        "ty_px": layer.translation.detach()[..., 1] * k_h / 2,
    }


@torch.no_grad()
def transform_drift(model: nn.Module) -> list[TransformDrift]:
    """Per similarity ``TTConv3d`` of ``model``: mean and max ``|rotation|`` (degrees per
    transition), ``|scale - 1|`` and translation length (pixels per transition)."""
    drifts = []
    for name, layer in model.named_modules():
        if not isinstance(layer, TTConv3d) or layer.transform != "similarity":
            continue
        values = similarity_values(layer)
        if values["scale"].numel() == 0:
            continue
        rotation = values["rotation_deg"].abs().double()
        scale = (values["scale"] - 1).abs().double()
        shift = torch.hypot(values["tx_px"], values["ty_px"]).double()
        drifts.append(TransformDrift(
            layer=name,
            mean_abs_rotation_deg=rotation.mean().item(),
            max_abs_rotation_deg=rotation.max().item(),
            mean_abs_scale_change=scale.mean().item(),
            max_abs_scale_change=scale.max().item(),
            mean_translation_px=shift.mean().item(),
            max_translation_px=shift.max().item(),
        ))
    return drifts


@torch.no_grad()
def kernel_health(model: nn.Module) -> list[KernelHealth]:
    """Per ``TTConv3d`` of ``model`` with ``T > 1``: the temporal energy profile of its built
    kernel (``||W_t|| / ||W_0||`` per transition, mean over output channels) and the fraction of
    (channel, transition) pairs below :data:`COLLAPSE_THRESHOLD` of K0's energy."""
    health = []
    for name, layer in model.named_modules():
        if not isinstance(layer, TTConv3d) or layer.kernel_size[0] < 2:
            continue
        kernel = layer.kernel().double()  # (O, I, T, kH, kW)
        energy = kernel.transpose(1, 2).flatten(2).norm(dim=2)  # (O, T)
        ratio = energy[:, 1:] / energy[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
        health.append(KernelHealth(
            layer=name,
            energy_profile=ratio.mean(dim=0).tolist(),
            collapsed_fraction=(ratio < COLLAPSE_THRESHOLD).double().mean().item(),
        ))
    return health
