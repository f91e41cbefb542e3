"""How far the learned TT transforms moved from the identity, in degrees and pixels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ttn.layers import TTConv3d
from lightning_ttn.training.record import TransformDrift


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
