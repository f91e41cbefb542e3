"""TensorBoard pictures: input clips, and the learned 3DTT kernels and transforms."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor

from lightning_ttn.layers import TTConv3d
from lightning_ttn.training.diagnostics import kernel_health, similarity_values, transform_drift


def frames_grid(frames: Tensor, zoom: int = 1, pad: int = 1) -> Tensor:
    """Tiles ``(rows, cols, H, W)`` images into one ``(1, rows*(zoom*H+pad), cols*(zoom*W+pad))``
    image.

    Each row is min-max scaled to [0, 1] on its own, so that a filter's or a clip's time course
    is visible whatever its magnitude.
    """
    rows, cols, h, w = frames.shape
    flat = frames.reshape(rows, -1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    frames = ((flat - low) / span).reshape(rows, cols, h, w)
    frames = frames.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    frames = torch.nn.functional.pad(frames, (0, pad, 0, pad), value=1.0)  # white separators
    h, w = frames.shape[-2:]
    return frames.permute(0, 2, 1, 3).reshape(1, rows * h, cols * w)  # (1, rows*H, cols*W)


class TensorBoardVisuals(Callback):
    """Logs a grid of input clips once, and every ``every_n_epochs`` epochs, for each
    ``TTConv3d``, its kernel slices K0..K(T-1) of the first filters, histograms and means of
    its learned scale, rotation (degrees) and translation (pixels), and its drift from the
    identity (``drift/<layer>/mean_abs_rotation_deg`` ..., as in the run record) and its kernel
    health (``health/<layer>/energy_t<t>_over_t0``, ``health/<layer>/collapsed_fraction``).

    Does nothing unless the trainer logs to TensorBoard.

    Args:
        every_n_epochs: Epoch interval of the kernel pictures (the last epoch is always logged).
        num_clips: Input clips in the grid (every second frame is shown).
        num_filters: Filters shown per TT layer (first input channel of each).
    """

    def __init__(self, every_n_epochs: int = 5, num_clips: int = 8, num_filters: int = 8) -> None:
        if every_n_epochs < 1 or num_clips < 1 or num_filters < 1:
            raise ValueError(
                "every_n_epochs, num_clips and num_filters must be >= 1, got "
                f"{every_n_epochs}, {num_clips}, {num_filters}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_clips = num_clips
        self.num_filters = num_filters

    @staticmethod
    def _writer(trainer: Trainer) -> Any | None:
        logger = trainer.logger
        return logger.experiment if isinstance(logger, TensorBoardLogger) else None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        writer = self._writer(trainer)
        if writer is None or trainer.current_epoch != 0 or batch_idx != 0:
            return
        clips = batch[0][: self.num_clips, 0, ::2].detach().float().cpu()  # (N, T/2, H, W)
        writer.add_image("inputs/clips", frames_grid(clips, zoom=2), trainer.global_step)

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = self._writer(trainer)
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if writer is None or not (epoch % self.every_n_epochs == 0 or last):
            return
        step = trainer.global_step
        for name, layer in pl_module.named_modules():
            if not isinstance(layer, TTConv3d):
                continue
            kernel = layer.kernel()[: self.num_filters, 0].float().cpu()  # (F, T, kH, kW)
            writer.add_image(f"kernels/{name}", frames_grid(kernel, zoom=8), step)
            if layer.transform == "similarity":
                values = similarity_values(layer)
            elif layer.transform == "affine":
                values = {"affine": layer.affine}
            else:
                continue
            for key, value in values.items():
                if value.numel() == 0:
                    continue
                writer.add_histogram(f"transforms/{name}/{key}", value.float().cpu(), step)
                writer.add_scalar(f"transforms/{name}/{key}_mean", value.mean().item(), step)
        # How far Θ moved from the identity: the run record's numbers, over training.
        for drift in transform_drift(pl_module):
            for key, value in vars(drift).items():
                if key != "layer":
                    writer.add_scalar(f"drift/{drift.layer}/{key}", value, step)
        # What the built kernel computes over time: slice energy vs K0's, collapsed pairs.
        for health in kernel_health(pl_module):
            for t, ratio in enumerate(health.energy_profile, start=1):
                writer.add_scalar(f"health/{health.layer}/energy_t{t}_over_t0", ratio, step)
            writer.add_scalar(f"health/{health.layer}/collapsed_fraction",
                              health.collapsed_fraction, step)
