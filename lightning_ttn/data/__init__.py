"""Video-MNIST: digit sources, the clip generator, the on-disk cache and the DataModule.

``VideoMNISTDataModule`` is imported on first use, so that Lightning-free code (the sweep
schema, the report) can read this package's vocabularies (``MOTIONS``, ``mnist.SOURCES``)
without importing Lightning.
"""

from typing import Any

from lightning_ttn.data.mnist import SOURCES, DigitSource, load_digits
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
    "SOURCES",
    "DigitSource",
    "VideoMNISTDataModule",
    "load_digits",
    "render_clips",
]


def __getattr__(name: str) -> Any:
    if name == "VideoMNISTDataModule":
        from lightning_ttn.data.datamodule import VideoMNISTDataModule

        return VideoMNISTDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
