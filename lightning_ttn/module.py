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
# input scaling; with a mean-reduced cross-entropy on [0, 1] inputs, SGD needs a rate about
# 1e6 times larger. 0.01 with momentum 0.9 trains both LeNet-5 variants stably from 10 to 4,000
# videos (see README, "Training recipe").
DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.9
# ReduceLROnPlateau: multiply the rate by 0.1 after 10 epochs without a better val/acc.
DEFAULT_LR_FACTOR = 0.1
DEFAULT_LR_PATIENCE = 10
MONITOR = "val/acc"


class VideoClassifier(LightningModule):
    """Trains any clip classifier with cross-entropy, SGD + momentum and plateau LR decay.

    Args:
        model: The network, ``(B, 1, T, H, W) -> (B, num_classes)`` logits, e.g.
            ``lightning_ttn.models.LeNet5``.
        num_classes: Number of classes, for the accuracy metrics.
        optimizer: Optimizer factory (``class_path``/``init_args`` in YAML). Default: SGD with
            ``lr=0.01, momentum=0.9``.
        lr_scheduler: Scheduler factory. Default: ``ReduceLROnPlateau(mode="max", factor=0.1,
            patience=10)`` on ``val/acc``, the paper's decay when validation accuracy stalls.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
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

    def forward(self, clips: Tensor) -> Tensor:
        return self.model(clips)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> Tensor:
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
        # strict=False: with validation every N > 1 epochs, val/acc is absent in the others.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR, "strict": False},
        }
