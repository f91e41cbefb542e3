"""LeNet-5 with 3D convolutions (paper Section 3.3) and the model families the study compares.

Owns the vocabulary of conv types (``CONVS``) and model families (``FAMILIES``): the sweep, the
report and the configs use these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from lightning_ttn.conv2plus1d import Conv2Plus1d
from lightning_ttn.layers import TRANSFORMS, TTConv3d

Conv = Literal["conv3d", "ttconv3d", "conv2plus1d"]
CONVS: tuple[str, ...] = Conv.__args__


@dataclass(frozen=True)
class Family:
    """A model family: the conv type of LeNet-5 and, for ``ttconv3d``, the transform.

    Attributes:
        conv: One of ``CONVS``.
        transform: ``TTConv3d``'s transform; ``None`` for the convs that have none.
        label: Long name, e.g. ``LeNet-5-3DTTN``.
    """

    conv: str
    transform: str | None
    label: str


FAMILIES: dict[str, Family] = {
    "3D": Family("conv3d", None, "LeNet-5-3D"),
    "3DTTN": Family("ttconv3d", "similarity", "LeNet-5-3DTTN"),
    # The ablation: K0 repeated over time, Θ fixed at the identity (no transform parameters).
    "3DTTN-fixed": Family("ttconv3d", "none", "LeNet-5-3DTTN-fixed"),
    "2+1D": Family("conv2plus1d", None, "LeNet-5-(2+1)D"),
}


def family_of(conv: str, transform: str = "similarity") -> str:
    """The family name of a conv type and transform (``3DTTN-<transform>`` if not listed)."""
    for name, family in FAMILIES.items():
        if family.conv == conv and (conv != "ttconv3d" or family.transform == transform):
            return name
    return f"3DTTN-{transform}"


class VideoNetwork(nn.Module):
    """Base class of the networks ``VideoClassifier`` trains: ``(B, 1, T, H, W)`` clips to
    ``(B, num_classes)`` logits.

    Subclass it for your own network: LightningCLI then offers it as ``--model.model`` (and only
    the subclasses, not every ``nn.Module``), and checkpoints can rebuild it from
    :attr:`init_args` (``VideoClassifier.load_from_checkpoint(path)`` with no other argument).
    """

    @property
    def init_args(self) -> dict:
        """The constructor arguments that rebuild this network (plain YAML/JSON types)."""
        raise NotImplementedError(f"{type(self).__name__} must define init_args")


class LeNet5(VideoNetwork):
    """LeNet-5 with 3D convolutions on Video-MNIST clips.

    ``conv1 (1->c1, 5x5x5, pad 2) -> ReLU -> MaxPool3d(2) -> conv2 (c1->c2, 5x5x5) -> ReLU ->
    MaxPool3d(2) -> Linear(c2*5*5*5, 120) -> ReLU -> Linear(120, 84) -> ReLU -> Linear(84, 10)``
    on input ``(B, 1, 30, 28, 28)``. The paper's Table 2 widths: 3D (12, 22) and (18, 28);
    3DTTN (18, 28), (12, 22), (4, 14) and (6, 16). Initialization is PyTorch's default for
    ``nn.Conv3d`` and ``nn.Linear`` (Kaiming-uniform) and ``TTConv3d``'s (Gaussian ``K0`` with
    the variance of ``nn.Conv3d``'s default, identity transforms).

    Args:
        channels: Output channels of the two convolutions ``(c1, c2)``.
        conv: ``"conv3d"`` (LeNet-5-3D), ``"ttconv3d"`` (LeNet-5-3DTTN: one transform per output
            channel per transition) or ``"conv2plus1d"`` (spatial then temporal conv, about the
            parameters of the 3D conv).
        transform: ``TTConv3d``'s transform: ``"similarity"`` (the paper's), ``"affine"`` or
            ``"none"`` (K0 repeated over time: the 3DTTN-fixed ablation). Only for ``ttconv3d``.
        num_classes: Number of output classes.
    """

    def __init__(
        self,
        channels: tuple[int, int] = (18, 28),
        conv: Conv = "ttconv3d",
        transform: Literal["similarity", "affine", "none"] = "similarity",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if conv != "ttconv3d" and transform != "similarity":
            raise ValueError(f"transform={transform!r} needs conv='ttconv3d', got conv={conv!r}")
        if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be two positive ints (c1, c2), got {channels!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.channels = tuple(channels)
        self.conv = conv
        self.transform = transform
        self.num_classes = num_classes
        c1, c2 = channels

        def conv_layer(c_in: int, c_out: int, padding: int) -> nn.Module:
            if conv == "ttconv3d":
                return TTConv3d(c_in, c_out, kernel_size=5, padding=padding, transform=transform)
            if conv == "conv2plus1d":
                return Conv2Plus1d(c_in, c_out, kernel_size=5, padding=padding)
            return nn.Conv3d(c_in, c_out, kernel_size=5, padding=padding)

        self.features = nn.Sequential(
            conv_layer(1, c1, padding=2),  # (B, c1, 30, 28, 28)
            nn.ReLU(),
            nn.MaxPool3d(2),  # (B, c1, 15, 14, 14)
            conv_layer(c1, c2, padding=0),  # (B, c2, 11, 10, 10)
            nn.ReLU(),
            nn.MaxPool3d(2),  # (B, c2, 5, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, c2*125)
            nn.Linear(c2 * 5 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, clips: Tensor) -> Tensor:
        """Args:
            clips: ``(B, 1, 30, 28, 28)`` videos.

        Returns:
            Class logits ``(B, num_classes)``.
        """
        return self.classifier(self.features(clips))

    @property
    def init_args(self) -> dict:
        return {"channels": list(self.channels), "conv": self.conv, "transform": self.transform,
                "num_classes": self.num_classes}

    @property
    def family(self) -> str:
        """The family name, e.g. ``3DTTN`` (see ``FAMILIES``)."""
        return family_of(self.conv, self.transform)

    @property
    def name(self) -> str:
        """The paper's name, e.g. ``LeNet-5-3DTTN (18, 28)``."""
        family = FAMILIES.get(self.family)
        label = family.label if family else f"LeNet-5-{self.family}"
        return f"{label} {self.channels}"
