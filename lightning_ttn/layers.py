"""``TTConv3d``: a drop-in replacement for ``nn.Conv3d`` with a temporally factorized kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ttn.functional import build_tt_kernel, similarity_theta

TRANSFORMS = ("similarity", "affine", "none")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("same", "valid")

_IntOrTriple = int | tuple[int, int, int]


def _triple(value: _IntOrTriple, name: str, minimum: int) -> tuple[int, int, int]:
    """Expands an int to a triple and checks every entry is an int >= ``minimum``."""
    triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(triple) != 3 or not all(isinstance(v, int) and v >= minimum for v in triple):
        raise ValueError(
            f"{name} must be an int >= {minimum} or a triple of them (T, H, W), got {value!r}"
        )
    return triple  # type: ignore[return-value]


class TTConv3d(nn.Module):
    """3D convolution whose kernels are built from one 2D slice and learned affine transforms.

    Mirrors ``nn.Conv3d``: same arguments in the same order, same input/output shapes. Each
    output channel's kernel ``K`` (``T x kH x kW`` per input channel) is rebuilt on every forward
    pass from its first slice ``K0`` and ``T-1`` transforms, slice ``t+1`` being slice ``t``
    resampled through ``Θ_(t,t+1)`` (paper Eq. 1-4, see :mod:`lightning_ttn.functional` for the
    normalized coordinate convention of Θ). The temporal kernel size ``T`` is ``kernel_size[0]``.

    Trainable parameters are exactly ``base`` (``K0``), the transform and ``bias``; there is no
    full-size weight parameter. :meth:`kernel` returns the built 3D kernel (so does the
    read-only :attr:`weight`, for code written for ``nn.Conv3d``), :meth:`to_conv3d` an
    equivalent plain ``nn.Conv3d`` and :meth:`from_conv3d` the reverse (``K0`` from a trained
    kernel). The module can be scripted with ``torch.jit.script``.

    A temporal size ``T = 1`` has no transition to transform: whatever ``transform`` is asked,
    the layer is built as ``transform="none"`` (no transform parameters, kernel ``K0``), the
    2D-kernel ``nn.Conv3d`` it equals with the same number of parameters.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels (kernels).
        kernel_size: ``(T, kH, kW)`` or one int for all three.
        stride: Stride of the convolution.
        padding: Zero-padding added on all three sides, or ``"same"`` / ``"valid"``.
        dilation: Spacing between kernel elements.
        groups: Number of blocked connections from input to output channels.
        bias: If True, adds a learnable bias to the output.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (input padding,
            as in ``nn.Conv3d``; the kernel resampling always uses zeros outside the slice).
        transform: ``"similarity"``: learnable scale, rotation, tx, ty per output channel per
            transition (paper Eq. 2, 4 parameters); ``"affine"``: the full 2x3 matrix (6);
            ``"none"``: no transform parameters, every slice is ``K0`` (the kernel the identity
            transforms give, built by repetition without resampling). Always ``"none"`` when
            ``T = 1`` (stored so in ``self.transform``).
        shared_transform: If True, one transform per output channel is reused for every
            transition (the paper's ``W*H + 4`` variant). No effect with ``transform="none"``
            (stored as given).
        device: Device of the parameters.
        dtype: Dtype of the parameters.
    """

    # Fixed after construction. TorchScript bakes constants into the compiled forward, so that
    # ``F.conv3d`` resolves its str-or-ints ``padding`` overload statically (as in nn.Conv3d).
    __constants__ = [
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
        "padding_mode", "transform", "shared_transform",
    ]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrTriple,
        stride: _IntOrTriple = 1,
        padding: str | _IntOrTriple = 0,
        dilation: _IntOrTriple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        transform: str = "similarity",
        shared_transform: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size, "kernel_size", 1)
        self.stride = _triple(stride, "stride", 1)
        self.dilation = _triple(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in PADDING_STRINGS:
                raise ValueError(
                    f"padding must be one of {PADDING_STRINGS} or non-negative ints, "
                    f"got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
            self.padding: str | tuple[int, int, int] = padding
        else:
            self.padding = _triple(padding, "padding", 0)
        self.groups = groups
        self.padding_mode = padding_mode
        # One slice has no transition to transform: every kind builds the kernel K0, so the layer
        # is the "none" one (no zero-element transform parameters that could never learn).
        self.transform = "none" if self.kernel_size[0] == 1 else transform
        self.shared_transform = shared_transform
        # F.pad amounts for the non-zero padding modes, computed once as nn.Conv3d does.
        self._reversed_padding_repeated_twice = self._explicit_padding()

        factory = {"device": device, "dtype": dtype}
        T, kH, kW = self.kernel_size
        base_shape = (out_channels, in_channels // groups, kH, kW)
        self.base = nn.Parameter(torch.empty(base_shape, **factory))
        n_transforms = 1 if shared_transform else T - 1
        if self.transform == "similarity":
            self.scale = nn.Parameter(torch.empty(out_channels, n_transforms, **factory))
            self.rotation = nn.Parameter(torch.empty(out_channels, n_transforms, **factory))
            self.translation = nn.Parameter(torch.empty(out_channels, n_transforms, 2, **factory))
        elif self.transform == "affine":
            self.affine = nn.Parameter(torch.empty(out_channels, n_transforms, 2, 3, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity transforms, Gaussian ``K0`` and ``nn.Conv3d``'s default bias.

        ``K0 ~ N(0, 1 / (3 * fan_in))`` with ``fan_in = in_channels/groups * T * kH * kW``: the
        variance of ``nn.Conv3d``'s default (Kaiming-uniform, a=sqrt(5)) for the full 3D kernel.
        As the initial kernel is ``K0`` repeated over time, a TT layer starts with the same
        activation scale as the plain layer it replaces, so the two models are comparable. The
        variance is our choice: the paper says only "Gaussian"; the authors' code draws K0 from
        N(0, 1) (``Recipe(k0_init="normal")``).
        """
        fan_in = self.base.shape[1] * math.prod(self.kernel_size)
        nn.init.normal_(self.base, mean=0.0, std=1.0 / math.sqrt(3 * fan_in))
        if self.transform == "similarity":
            nn.init.ones_(self.scale)
            nn.init.zeros_(self.rotation)
            nn.init.zeros_(self.translation)
        elif self.transform == "affine":
            with torch.no_grad():
                self.affine.zero_()
                self.affine[..., 0, 0] = 1.0
                self.affine[..., 1, 1] = 1.0
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def theta(self) -> Tensor:
        """The affine matrices of all transitions, shape ``(out_channels, T-1, 2, 3)``.

        Identity matrices (a read-only expanded view) for ``transform="none"``.
        """
        n_transitions = self.kernel_size[0] - 1
        # Dispatch on the parameters present, not on self.transform: TorchScript then compiles
        # only the branch whose attributes exist.
        if hasattr(self, "scale"):
            theta = similarity_theta(
                self.scale, self.rotation, self.translation[..., 0], self.translation[..., 1]
            )  # (O, n_transforms, 2, 3)
        elif hasattr(self, "affine"):
            theta = self.affine
        else:
            identity = torch.eye(2, 3, dtype=self.base.dtype, device=self.base.device)
            return identity.expand(self.out_channels, n_transitions, 2, 3)
        if self.shared_transform:
            theta = theta.expand(-1, n_transitions, -1, -1)  # (O, T-1, 2, 3)
        return theta

    def kernel(self) -> Tensor:
        """The built 3D kernel, shape ``(out_channels, in_channels/groups, T, kH, kW)``.

        For ``transform="none"`` (and so ``T = 1``) a read-only expanded view of ``K0`` (no
        copy, no resampling).
        """
        if self.transform == "none":
            # What identity transforms give (up to the rounding of the identity resampling),
            # without the T-1 grid_sample calls.
            return self.base.unsqueeze(2).expand(-1, -1, self.kernel_size[0], -1, -1)
        return build_tt_kernel(self.base, self.theta())

    @property
    def weight(self) -> Tensor:
        """Read-only: the built kernel, ``(out_channels, in_channels/groups, T, kH, kW)``.

        As ``nn.Conv3d.weight`` would be read, for code written for ``nn.Conv3d`` that reads the
        kernel (visualization, FLOP counters, norms). Not a parameter: rebuilt from ``K0`` and the
        transforms on every access (one :meth:`kernel` call; differentiable w.r.t. them) and
        returned as a new tensor, so writing into it changes nothing. Initialize ``base`` and the
        transforms instead (or call :meth:`reset_parameters`); assigning to ``weight`` raises
        ``AttributeError``. TorchScript compiles it for scripted code that reads it; from Python,
        call a scripted layer's :meth:`kernel` (PyTorch exposes a scripted module's properties as
        ``property`` objects).
        """
        # A copy: kernel() is a view of base for transform="none", and a write into the weight
        # must reach the parameters in no configuration rather than in some.
        return self.kernel().clone()

    def __setattr__(self, name: str, value: object) -> None:
        # Module.__setattr__ would register a Parameter named "weight" (a KeyError about an
        # existing attribute) or hit the property; say what to do instead.
        if name == "weight":
            raise AttributeError(
                "TTConv3d.weight is read-only: it is built from base (K0) and the transforms on "
                "every access; assign to those or call reset_parameters() instead"
            )
        super().__setattr__(name, value)

    def forward(self, input: Tensor) -> Tensor:
        """Args:
            input: ``(B, C_in, D, H, W)``.

        Returns:
            ``(B, C_out, D', H', W')``, the same shape ``nn.Conv3d`` gives.
        """
        kernel = self.kernel()
        if self.padding_mode == "zeros":
            return F.conv3d(
                input, kernel, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return F.conv3d(padded, kernel, self.bias, self.stride, 0, self.dilation, self.groups)

    def _explicit_padding(self) -> list[int]:
        """``F.pad`` amounts (last dim first) for the non-zero padding modes, as in ``_ConvNd``."""
        pads: list[int] = []
        for i in reversed(range(3)):
            if self.padding == "same":
                total = self.dilation[i] * (self.kernel_size[i] - 1)
                pads += [total // 2, total - total // 2]
            elif self.padding == "valid":
                pads += [0, 0]
            else:
                pads += [self.padding[i]] * 2
        return pads

    @torch.no_grad()
    def to_conv3d(self) -> nn.Conv3d:
        """An ``nn.Conv3d`` with the built kernel and bias copied in (same device and dtype)."""
        conv = nn.Conv3d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.base.device,
            dtype=self.base.dtype,
        )
        conv.weight.copy_(self.kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    @classmethod
    def from_conv3d(
        cls, conv: nn.Conv3d, *, transform: str = "similarity", shared_transform: bool = False
    ) -> TTConv3d:
        """A ``TTConv3d`` with ``conv``'s configuration, ``K0`` its temporal mean kernel.

        Channels, kernel size, stride, padding (also ``"same"``/``"valid"``), dilation, groups,
        bias, padding mode, device and dtype are ``conv``'s; the transforms are the identity,
        ``K0 = conv.weight.mean(dim=2)`` and the bias is copied. New parameters: nothing is
        shared with ``conv``.

        Why the mean: with identity transforms the kernel is ``K0`` repeated ``T`` times, so on
        an input constant over the temporal receptive field the layer responds with
        ``T * (K0 * x) = (sum_t W_t) * x`` (``*``: 2D correlation), exactly ``conv``'s response
        ``sum_t (W_t * x)``; ``sum_t W_t`` or ``T * mean`` as ``K0`` would scale it by ``T``.
        The mean is also the least-squares fit of a kernel constant in time to ``W``, and a
        ``conv`` whose kernel is already constant in time is reproduced (to rounding); so is
        every ``conv`` with ``T = 1``, exactly (``K0`` is its one slice, no transform).

        Args:
            conv: The convolution to mirror (not modified).
            transform: As in the constructor.
            shared_transform: As in the constructor.

        Returns:
            The new layer, in ``conv``'s training mode.
        """
        if not isinstance(conv, nn.Conv3d):
            raise TypeError(f"conv must be an nn.Conv3d, got {type(conv).__name__}")
        if isinstance(conv.weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                "conv has uninitialized (lazy) parameters; run a forward pass before converting"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            transform=transform,
            shared_transform=shared_transform,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.base.copy_(conv.weight.mean(dim=2))  # (O, I/groups, kH, kW)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.transform != "similarity":
            s += f", transform={self.transform!r}"
        if self.shared_transform:
            s += ", shared_transform=True"
        return s
