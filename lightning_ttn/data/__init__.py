"""Video-MNIST: digit sources, the clip generator, the on-disk cache and the DataModule."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_ttn.data.datamodule import VideoMNISTDataModule
    from lightning_ttn.data.mnist import DigitSource, load_digits
    from lightning_ttn.data.video_mnist import GENERATOR_VERSION, MOTION_TABLE, render_clips

# Exports are resolved lazily: the DataModule pulls in pytorch_lightning (seconds to import),
# and `python -m lightning_ttn.data.video_mnist` must not find its module pre-imported.
_EXPORTS = {
    "VideoMNISTDataModule": "datamodule",
    "DigitSource": "mnist",
    "load_digits": "mnist",
    "GENERATOR_VERSION": "video_mnist",
    "MOTION_TABLE": "video_mnist",
    "render_clips": "video_mnist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
