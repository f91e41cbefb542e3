"""``VideoClassifier``: the paper's training recipe (Section 3.4) as a ``LightningModule``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

# Defaults of the recipe. The paper's learning rates (1e-8 to 5e-9) belong to its own loss and
# input scaling; with a mean-reduced cross-entropy on [0, 1] inputs SGD needs far larger ones.
# 0.05 with momentum 0.9 and gradient clipping leaves PyTorch's small-output default init within
# about 10 steps, which matters at 10 videos (one step per epoch); 0.01 needed 30-40 steps, by
# which time the plateau rule had already cut the rate (README, "Training recipe").
DEFAULT_LR = 0.05
DEFAULT_MOMENTUM = 0.9
# ReduceLROnPlateau: multiply the rate by 0.1 once more than 10 validations in a row brought no
# better val/acc (PyTorch's `patience`); with validation every epoch, the paper's 10 epochs.
DEFAULT_LR_FACTOR = 0.1
DEFAULT_LR_PATIENCE = 10
# Plain SGD + momentum occasionally takes a step on the TT transforms (scale, rotation) large
# enough to scramble every kernel, and training collapses to chance; clipping the global
# gradient norm at 1.0 prevents it and leaves ordinary steps untouched (README, recipe).
DEFAULT_MAX_GRAD_NORM = 1.0
MONITOR = "val/acc"


class VideoClassifier(LightningModule):
    """Trains any clip classifier with cross-entropy, SGD + momentum and plateau LR decay.

    Args:
        model: The network, ``(B, 1, T, H, W) -> (B, num_classes)`` logits, e.g.
            ``lightning_ttn.models.LeNet5``.
        num_classes: Number of classes, for the accuracy metrics.
        optimizer: Optimizer factory (``class_path``/``init_args`` in YAML). Default: SGD with
            ``lr=0.05, momentum=0.9``.
        lr_scheduler: Scheduler factory. Default: ``ReduceLROnPlateau(mode="max", factor=0.1,
            patience=10)`` on ``val/acc``, the paper's decay when validation accuracy stalls.
            A ``ReduceLROnPlateau`` is stepped after each validation (every
            ``check_val_every_n_epoch`` epochs), so its patience counts validations; other
            schedulers step every epoch.
        max_grad_norm: Clip the global gradient norm to this value (None: no clipping). The
            Trainer's ``gradient_clip_val``, when set, takes precedence.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        max_grad_norm: float | None = DEFAULT_MAX_GRAD_NORM,
    ) -> None:
        super().__init__()
        # The model is saved in checkpoints as weights; its constructor arguments are recorded
        # by LightningCLI's config, so it is kept out of hparams.
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        # Kept out of hparams: LightningCLI re-parses a checkpoint's hparams as init arguments.
        self.model_name = getattr(model, "name", type(model).__name__)
        self.num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.best_val_acc = MaxMetric()
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")

    def forward(self, clips: Tensor) -> Tensor:
        return self.model(clips)

    def _step(
        self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy
    ) -> Tensor:
        clips, labels = batch  # (B, 1, T, H, W), (B,)
        logits = self.model(clips)
        loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, sync_dist=True,
                 prog_bar=stage != "test", batch_size=labels.shape[0])
        # Logging the metric object lets torchmetrics sync its counts across DDP ranks.
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        clips, _ = batch
        return self.model(clips).argmax(dim=1)

    def on_fit_start(self) -> None:
        # Registers the hparams with the metrics TensorBoard's HPARAMS tab compares runs by.
        if isinstance(self.logger, TensorBoardLogger):
            params = {
                **self.hparams, "model_name": self.model_name, "num_parameters": self.num_parameters
            }
            self.logger.log_hyperparams(params, {"hp/best_val_acc": 0.0, "hp/test_acc": 0.0})

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.best_val_acc(self.val_acc.compute())
        # Already synced by torchmetrics: equal on all ranks, so the sync_dist mean is exact.
        self.log("hp/best_val_acc", self.best_val_acc.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log("hp/test_acc", self.test_acc.compute(), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(self.parameters(), lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=DEFAULT_LR_FACTOR, patience=DEFAULT_LR_PATIENCE
            )
        else:
            scheduler = self.scheduler_factory(optimizer)
        schedule: dict[str, Any] = {"scheduler": scheduler, "monitor": MONITOR}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Step with the validations: in between, val/acc is a stale value that the plateau
            # scheduler would count as "no improvement". Not strict: a fit without validation
            # keeps its rate (with a warning).
            every = self.trainer.check_val_every_n_epoch if self._trainer is not None else None
            schedule.update(frequency=every or 1, strict=False)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val is None and self.hparams.max_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.max_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
