"""Functional core of the temporally factorized (3DTT) convolution, paper Section 3.1.

A 3DTT kernel is one learned 2D slice ``K0`` plus one 2x3 affine matrix per transition
``t -> t+1``; slice ``t+1`` is slice ``t`` resampled bilinearly through its matrix (Eq. 3-4).

Coordinate convention of Θ (the same as ``F.affine_grid`` with ``align_corners=False``):
kernel positions are *normalized* to [-1, 1], x to the right (columns) and y downwards (rows),
-1 and +1 being the outer edges of the border pixels. Θ maps an output position to the position
it samples in the previous slice, ``K_{t+1}(p) = K_t(Θ [p; 1])``. Consequences, both tested:

* translation: ``tx = +2/kW`` (one pixel) moves the kernel content one pixel to the **left**;
  ``ty = +2/kH`` moves it one pixel **up**.
* rotation: ``r > 0`` rotates the sampling grid clockwise as displayed (rows growing
  downwards), so the kernel content turns **counter-clockwise** by ``r`` per transition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity_theta(scale: Tensor, rotation: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Affine matrices of the paper's Eq. 2, element-wise over any common leading shape.

    ``Θ = [[s cos r, -s sin r, tx s cos r - ty s sin r],
           [s sin r,  s cos r, tx s sin r + ty s cos r]]``, i.e. ``A = s R(r)`` and the
    translation column is ``A @ (tx, ty)``.

    Args:
        scale: Scale ``s`` (1 = identity; ``s > 1`` samples a larger area, shrinking the content).
        rotation: Rotation ``r`` in radians (see the module docstring for the direction).
        tx: Horizontal translation in normalized units (``2/kW`` is one pixel).
        ty: Vertical translation in normalized units (``2/kH`` is one pixel).

    Returns:
        Tensor of shape ``(*shape, 2, 3)`` where ``shape`` is the broadcast shape of the inputs.
    """
    # Indexed, not unpacked: TorchScript cannot unpack a list of statically unknown length.
    broadcast = torch.broadcast_tensors(scale, rotation, tx, ty)
    scale, rotation, tx, ty = broadcast[0], broadcast[1], broadcast[2], broadcast[3]
    s_cos = scale * torch.cos(rotation)
    s_sin = scale * torch.sin(rotation)
    row_x = torch.stack([s_cos, -s_sin, tx * s_cos - ty * s_sin], dim=-1)
    row_y = torch.stack([s_sin, s_cos, tx * s_sin + ty * s_cos], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)  # (*shape, 2, 3)


def build_tt_kernel(base: Tensor, theta: Tensor) -> Tensor:
    """Builds the 3D kernel from its first slice and the per-transition transforms (Eq. 3-4).

    Slice 0 is ``base``; slice ``t+1`` is slice ``t`` resampled through ``theta[:, t]``
    sequentially as in the paper's Eq. 3, bilinear with zeros outside (Eq. 4). ``align_corners``
    is False: our choice; the authors' code effectively uses True. All input-channel slices of
    one output channel share that channel's transform. Θ's rotation is a true rotation only
    for square kernels: on a ``kH != kW`` kernel the normalized coordinates also stretch it.

    Args:
        base: First temporal slice ``K0``, shape ``(O, I, kH, kW)``.
        theta: Affine matrices in normalized coordinates, shape ``(O, T-1, 2, 3)``.

    Returns:
        The kernel, shape ``(O, I, T, kH, kW)``, differentiable w.r.t. both inputs.
    """
    # Shapes as lists and compared entry by entry, so that TorchScript can compile the checks.
    if base.dim() != 4:
        raise ValueError(f"base must have shape (O, I, kH, kW), got {list(base.shape)}")
    if (
        theta.dim() != 4
        or theta.shape[0] != base.shape[0]
        or theta.shape[2] != 2
        or theta.shape[3] != 3
    ):
        raise ValueError(
            f"theta must have shape (O, T-1, 2, 3) with O={base.shape[0]}, "
            f"got {list(theta.shape)}"
        )
    # The paper's fixed sampling (Eq. 4: bilinear, zero outside the slice) is passed explicitly,
    # so that a change of PyTorch's defaults can never change the kernel; as literals, because
    # TorchScript cannot read module-level constants.
    slices = [base]
    for t in range(theta.shape[1]):
        # The output channels are the batch of the spatial transformer, so each gets its own Θ.
        grid = F.affine_grid(theta[:, t], list(base.shape), align_corners=False)
        slices.append(
            F.grid_sample(
                slices[-1],
                grid,  # (O, kH, kW, 2)
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
        )
    return torch.stack(slices, dim=2)  # (O, I, T, kH, kW)


def tt_conv3d(
    input: Tensor,
    base: Tensor,
    theta: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int, int] = 1,
    padding: str | int | tuple[int, int, int] = 0,
    dilation: int | tuple[int, int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """3D convolution with a 3DTT kernel: :func:`build_tt_kernel`, then ``F.conv3d``.

    Args:
        input: Input of shape ``(B, C_in, D, H, W)``.
        base: First kernel slice ``K0``, shape ``(C_out, C_in / groups, kH, kW)``.
        theta: Transforms, shape ``(C_out, T-1, 2, 3)``; ``T`` is the temporal kernel size.
        bias: Optional bias of shape ``(C_out,)``.
        stride: As in ``F.conv3d``.
        padding: As in ``F.conv3d`` (zero padding; ``"same"`` and ``"valid"`` allowed).
        dilation: As in ``F.conv3d``.
        groups: As in ``F.conv3d``.

    Returns:
        Output of shape ``(B, C_out, D', H', W')``, exactly ``F.conv3d`` with the built kernel.
    """
    kernel = build_tt_kernel(base, theta)  # (C_out, C_in/groups, T, kH, kW)
    return F.conv3d(input, kernel, bias, stride, padding, dilation, groups)
