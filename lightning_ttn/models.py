"""LeNet-5-3D and LeNet-5-3DTTN (paper Section 3.3) for Video-MNIST clips."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_ttn.layers import TTConv3d

CONVS = ("conv3d", "ttconv3d")


class LeNet5(nn.Module):
    """LeNet-5 with 3D convolutions: plain ``nn.Conv3d`` (LeNet-5-3D) or ``TTConv3d`` (3DTTN).

    ``conv1 (1->c1, 5x5x5, pad 2) -> ReLU -> MaxPool3d(2) -> conv2 (c1->c2, 5x5x5) -> ReLU ->
    MaxPool3d(2) -> Linear(c2*5*5*5, 120) -> ReLU -> Linear(120, 84) -> ReLU -> Linear(84, 10)``
    on input ``(B, 1, 30, 28, 28)``. The paper's Table 2 sizes: 3D (12, 22) and (18, 28);
    3DTTN (18, 28), (12, 22), (4, 14) and (6, 16). Initialization is PyTorch's default for
    ``nn.Conv3d`` and ``nn.Linear`` (Kaiming-uniform) and ``TTConv3d``'s Gaussian ``K0`` with
    identity transforms, as in the paper.

    Args:
        channels: Output channels of the two convolutions ``(c1, c2)``.
        conv: ``"conv3d"`` for LeNet-5-3D or ``"ttconv3d"`` for LeNet-5-3DTTN (one similarity
            transform per output channel per transition).
        num_classes: Number of output classes.
    """

    def __init__(
        self, channels: tuple[int, int] = (18, 28), conv: str = "ttconv3d", num_classes: int = 10
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be two positive ints (c1, c2), got {channels!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.channels = tuple(channels)
        self.conv = conv
        conv_cls = TTConv3d if conv == "ttconv3d" else nn.Conv3d
        c1, c2 = channels
        self.features = nn.Sequential(
            conv_cls(1, c1, kernel_size=5, padding=2),  # (B, c1, 30, 28, 28)
            nn.ReLU(),
            nn.MaxPool3d(2),  # (B, c1, 15, 14, 14)
            conv_cls(c1, c2, kernel_size=5),  # (B, c2, 11, 10, 10)
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
    def name(self) -> str:
        """The paper's name, e.g. ``LeNet-5-3DTTN (18, 28)``."""
        family = "LeNet-5-3DTTN" if self.conv == "ttconv3d" else "LeNet-5-3D"
        return f"{family} {self.channels}"
