"""Video-MNIST: digit sources, the clip generator, the on-disk cache and the DataModule."""

from lightning_ttn.data.datamodule import VideoMNISTDataModule
from lightning_ttn.data.mnist import DigitSource, load_digits
from lightning_ttn.data.video_mnist import (
    AUTHORS_MOTION_TABLE,
    GENERATOR_VERSION,
    MOTION_TABLE,
    MOTIONS,
    render_clips,
)

__all__ = [
    "AUTHORS_MOTION_TABLE",
    "GENERATOR_VERSION",
    "MOTIONS",
    "MOTION_TABLE",
    "DigitSource",
    "VideoMNISTDataModule",
    "load_digits",
    "render_clips",
]
