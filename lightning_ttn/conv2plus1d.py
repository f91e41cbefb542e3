"""``Conv2Plus1d``: the layer-level (2+1)D factorization of a 3D convolution (Tran et al. 2018).

A ``T x k x k`` convolution becomes a spatial ``1 x k x k`` convolution, a ReLU and a temporal
``T x 1 x 1`` convolution, with a middle width chosen so that the pair has about the parameters
of the 3D convolution it replaces (torchvision's ``Conv2Plus1D`` rule). The paper contrasts its
kernel-level factorization with this one; the study uses it as a baseline family (``2+1D``).
"""

from __future__ import annotations

from torch import nn


def middle_channels(in_channels: int, out_channels: int, kernel_size: int) -> int:
    """torchvision's rule ``in*out*k^3 // (in*k^2 + k*out)``: the (2+1)D pair's weights then
    number about ``in*out*k^3``, those of the full 3D kernel."""
    k = kernel_size
    return in_channels * out_channels * k**3 // (in_channels * k**2 + k * out_channels)


class Conv2Plus1d(nn.Sequential):
    """Spatial ``(1, k, k)`` conv -> ReLU -> temporal ``(k, 1, 1)`` conv; same output shape as
    ``nn.Conv3d(in_channels, out_channels, k, padding=padding)``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``k``, the spatial and temporal size of the 3D kernel replaced.
        padding: Zero padding of the 3D kernel replaced (spatial in the first conv, temporal in
            the second).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        mid = middle_channels(in_channels, out_channels, kernel_size)
        k, p = kernel_size, padding
        super().__init__(
            nn.Conv3d(in_channels, mid, (1, k, k), padding=(0, p, p)),  # (B, mid, T, H', W')
            nn.ReLU(),
            nn.Conv3d(mid, out_channels, (k, 1, 1), padding=(p, 0, 0)),  # (B, out, T', H', W')
        )
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
