"""``VideoClassifier``: any clip classifier trained by a :class:`Recipe` as a LightningModule."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import VideoNetwork
from lightning_ttn.training.checkpoint import (
    CheckpointError,
    build_network,
    load_checkpoint,
    plain_hyperparameters,
)
from lightning_ttn.training.history import FitHistory
from lightning_ttn.training.recipe import Recipe
from lightning_ttn.training.schedules import HalveEveryTenEpochs

MONITOR = "val/acc"
DEFAULT_RECIPE = Recipe()
# TTConv3d parameters that form Θ; they get the learning rate lr * transform_lr_scale.
TRANSFORM_PARAMETERS = ("scale", "rotation", "translation", "affine")


def transform_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The transform parameters (Θ) of every ``TTConv3d`` in ``model``."""
    return [
        parameter
        for layer in model.modules() if isinstance(layer, TTConv3d)
        for name, parameter in layer.named_parameters(recurse=False)
        if name in TRANSFORM_PARAMETERS
    ]


@torch.no_grad()
def normal_conv_init(model: nn.Module) -> None:
    """The authors' ``k0_init='normal'``: N(0, 1) for every ``TTConv3d``'s K0 and for the
    weights and biases of every plain ``nn.Conv3d`` (their ``LeNet5_3d``, ``omg_emotion``)."""
    for layer in model.modules():
        if isinstance(layer, TTConv3d):
            nn.init.normal_(layer.base)
        elif isinstance(layer, nn.Conv3d):
            nn.init.normal_(layer.weight)
            if layer.bias is not None:
                nn.init.normal_(layer.bias)


@torch.no_grad()
def time_constant_start(model: nn.Module) -> None:
    """Every plain ``nn.Conv3d`` kernel becomes its first temporal slice repeated over time (the
    kernel of a ``TTConv3d`` at Θ = identity); it trains freely afterwards."""
    for layer in model.modules():
        if isinstance(layer, nn.Conv3d):  # TTConv3d is not one
            weight = layer.weight  # (O, I, T, kH, kW)
            # A copy of slice 0 first: copying a view of itself onto itself overlaps in memory.
            weight.copy_(weight[:, :, :1].clone().expand_as(weight))


def _history_field(name: str) -> property:
    """``FitHistory.<name>`` as an attribute of the module."""
    return property(lambda self: getattr(self.history, name),
                    lambda self, value: setattr(self.history, name, value))


def tensorboard_hparams(module: VideoClassifier, datamodule: Any) -> dict[str, Any]:
    """A run's hparams for TensorBoard's HPARAMS tab: its recipe, model and data settings."""
    params = {
        **{f"recipe/{k}": v for k, v in module.recipe.to_dict().items()},
        "model_name": module.model_name,
        "num_parameters": module.num_parameters,
    }
    for key in ("train_videos", "batch_size", "subset_seed", "source", "motion"):
        if hasattr(datamodule, key):
            params[f"data/{key}"] = getattr(datamodule, key)
    if getattr(datamodule, "source_name", None):
        params["data/source"] = datamodule.source_name
    return params


class VideoClassifier(LightningModule):
    """Trains a clip classifier with cross-entropy as its :class:`Recipe` says, and keeps the
    weights the recipe tests (best validation or last) in memory.

    Args:
        model: The network, ``(B, 1, T, H, W) -> (B, num_classes)`` logits: a
            ``lightning_ttn.models.VideoNetwork`` such as ``LeNet5`` (any ``nn.Module`` works
            from Python; checkpoints rebuild it from its ``init_args`` when it has them).
        recipe: Every training choice (optimizer, learning rate, clipping, schedule, epochs,
            batch size, tested weights, input scaling, K0 init); ``--model.recipe.lr`` etc.
        num_classes: Number of classes, for the accuracy metrics.
    """

    def __init__(
        self, model: VideoNetwork, recipe: Recipe = DEFAULT_RECIPE, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.recipe = recipe
        if recipe.k0_init == "normal":
            normal_conv_init(model)
        if recipe.conv3d_start == "time_constant":
            time_constant_start(model)
        # Kept out of hparams: LightningCLI re-parses a checkpoint's hparams as init arguments.
        self.model_name = getattr(model, "name", type(model).__name__)
        self.num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # hp/best_val_acc for TensorBoard's HPARAMS tab (synced across DDP ranks)
        self.val_acc_max = MaxMetric()
        # What the run record reports; filled during fit.
        self.history = FitHistory(recipe.tested_weights)
        self._loss_sum = 0.0
        self._loss_count = 0

    def forward(self, clips: Tensor) -> Tensor:
        if self.recipe.input_scaling == "raw":
            clips = clips * 255.0  # the data module serves [0, 1]
        return self.model(clips)

    def _step(
        self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy
    ) -> Tensor:
        clips, labels = batch  # (B, 1, T, H, W), (B,)
        logits = self(clips)
        loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, sync_dist=True,
                 prog_bar=stage != "test", batch_size=labels.shape[0])
        # Logging the metric object lets torchmetrics sync its counts across DDP ranks.
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        loss = self._step(batch, "train", self.train_acc)
        # A diverged run stops at once instead of training on NaN; every rank takes the same
        # decision (an inf on one rank only would otherwise desynchronize DDP).
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss), all=False):
            self.diverged_epoch = self.current_epoch + 1
            self.trainer.should_stop = True
            self._loss_sum = self._loss_sum + loss.detach() * batch[1].shape[0]
            self._loss_count += batch[1].shape[0]
            return None  # no backward, no step: the weights stay those before the NaN
        # A tensor sum: no device synchronization per step.
        self._loss_sum = self._loss_sum + loss.detach() * batch[1].shape[0]
        self._loss_count += batch[1].shape[0]
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(labels (B,), class probabilities (B, num_classes))``."""
        clips, labels = batch
        return labels, self(clips).softmax(dim=1)

    def on_fit_start(self) -> None:
        # Registers the hparams with the metrics TensorBoard's HPARAMS tab compares runs by.
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.log_hyperparams(tensorboard_hparams(self, self.trainer.datamodule),
                                        {"hp/best_val_acc": 0.0, "hp/test_acc": 0.0})

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.lr_history.append([self.current_epoch + 1, lr])
        self.log("lr", lr, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            mean = float(self._loss_sum) / self._loss_count
            self.train_loss_history.append([self.current_epoch + 1, mean])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        accuracy = self.val_acc.compute()
        self.val_acc_max(accuracy)
        # Already synced by torchmetrics: equal on all ranks, so the sync_dist mean is exact.
        self.log("hp/best_val_acc", self.val_acc_max.compute(), sync_dist=True)
        if self.trainer.state.fn != "fit":
            return
        self.history.add_validation(self.current_epoch + 1, float(accuracy), self)

    def on_test_epoch_end(self) -> None:
        self.log("hp/test_acc", self.test_acc.compute(), sync_dist=True)

    def load_tested_weights(self) -> int | None:
        """Loads the weights the recipe tests; returns their epoch (``None``: never validated,
        the current weights are kept)."""
        return self.history.load_tested_weights(self)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str, map_location: Any = None, **kwargs: Any
    ) -> VideoClassifier:
        """Lightning's ``load_from_checkpoint`` with ``weights_only=True`` only: a checkpoint
        holding anything but tensors and plain data is refused (it could run code). Without
        ``model=`` the network is rebuilt from the class path and ``init_args`` the checkpoint
        carries, which must name an imported ``VideoNetwork`` subclass.

        Raises:
            CheckpointError: the checkpoint is refused (the message says why).
        """
        if kwargs.pop("weights_only", True) is not True:
            raise ValueError("VideoClassifier loads checkpoints with weights_only=True only")
        checkpoint = load_checkpoint(checkpoint_path)
        if "model" not in kwargs:
            kwargs["model"] = build_network(checkpoint, checkpoint_path)
        # Checkpoints written from Python (no LightningCLI instantiator) hold the recipe as a
        # dict: the constructor needs the dataclass.
        hparams = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        if "recipe" not in kwargs and isinstance(hparams.get("recipe"), dict) and (
            "_instantiator" not in hparams
        ):
            try:
                kwargs["recipe"] = DEFAULT_RECIPE.replace(**hparams["recipe"])
            except ValueError as e:
                raise CheckpointError(f"checkpoint {checkpoint_path}: {e}") from None
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, weights_only=True, **kwargs
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain types only, so that the checkpoint loads with weights_only=True.
        for key in (self.CHECKPOINT_HYPER_PARAMS_KEY, "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain_hyperparameters(checkpoint[key])
        if isinstance(self.model, VideoNetwork):
            network = type(self.model)
            checkpoint["network"] = {
                "class_path": f"{network.__module__}.{network.__qualname__}",
                "init_args": self.model.init_args,
            }
        # A resumed fit must still know its best weights and histories.
        checkpoint["run_state"] = {
            "val_acc_history": self.val_acc_history,
            "train_loss_history": self.train_loss_history,
            "lr_history": self.lr_history,
            "best_epoch": self.best_epoch,
            "best_value": self.history.best_val_acc,
            "best_state": self.best_state,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("run_state")
        if state is not None:
            self.val_acc_history = state["val_acc_history"]
            self.train_loss_history = state["train_loss_history"]
            self.lr_history = state["lr_history"]
            self.best_epoch = state["best_epoch"]
            self.history.best_val_acc = state["best_value"]
            self.best_state = state["best_state"]

    # The history's fields under the names the checkpoint hooks and callers use.
    val_acc_history = _history_field("val_acc_history")
    train_loss_history = _history_field("train_loss_history")
    lr_history = _history_field("lr_history")
    best_epoch = _history_field("best_epoch")
    diverged_epoch = _history_field("diverged_epoch")
    best_state = _history_field("best_state")

    def configure_optimizers(self) -> dict[str, Any]:
        recipe = self.recipe
        transforms = transform_parameters(self.model)
        if transforms and recipe.transform_lr_scale != 1.0:
            ids = {id(p) for p in transforms}
            groups = [
                {"params": [p for p in self.parameters() if id(p) not in ids]},
                {"params": transforms, "lr": recipe.lr * recipe.transform_lr_scale},
            ]
        else:
            groups = [{"params": list(self.parameters())}]
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
        if recipe.lr_schedule == "constant":
            return {"optimizer": optimizer}
        if recipe.lr_schedule == "plateau":
            scheduler: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=recipe.plateau_factor,
                patience=recipe.plateau_patience,
            )
        else:
            scheduler = HalveEveryTenEpochs(optimizer, recipe.val_every_n_epochs)
        # Stepped with the validations: in between, val/acc is a stale value the rules would
        # count as "no improvement". Not strict: a fit without validation keeps its rate.
        schedule = {"scheduler": scheduler, "monitor": MONITOR,
                    "frequency": recipe.val_every_n_epochs, "strict": False}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val is None and self.recipe.max_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.recipe.max_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
