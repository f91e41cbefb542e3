"""What a run's record reports about its fit, kept while it trains: one :class:`FitHistory`
per run, for a single :class:`~lightning_ttn.training.module.VideoClassifier` and for each
member of a :class:`~lightning_ttn.training.stacked.StackedClassifier` alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from lightning_ttn.training.recipe import TestedWeights


@dataclass
class FitHistory:
    """A run's rate, loss and validation histories and the weights its recipe tests.

    Attributes:
        tested_weights: The recipe's ``tested_weights``: ``"best_val"`` keeps a CPU copy of the
            weights at the best validation, ``"last"`` keeps none.
        val_acc_history: ``[epoch, val/acc]`` per validation (1-based epochs).
        train_loss_history: ``[epoch, mean training loss]`` per epoch.
        lr_history: ``[epoch, learning rate]`` at the start of each epoch.
        best_epoch: Epoch of the best validation accuracy (the first of ties).
        best_val_acc: That accuracy (``-inf`` before any validation); the record's
            ``best_val_acc``.
        best_state: The module's ``state_dict`` at ``best_epoch`` (``"best_val"`` only).
        diverged_epoch: The epoch whose training loss was NaN or infinite (``None``: none);
            training stops there.
    """

    tested_weights: TestedWeights
    val_acc_history: list[list[float]] = field(default_factory=list)
    train_loss_history: list[list[float]] = field(default_factory=list)
    lr_history: list[list[float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float = -math.inf
    best_state: dict[str, Tensor] | None = None
    diverged_epoch: int | None = None

    def add_validation(self, epoch: int, value: float, module: nn.Module) -> None:
        """Records a validation accuracy; keeps ``module``'s weights if it is the best so far
        (strictly better: the first of equal accuracies wins)."""
        self.val_acc_history.append([epoch, value])
        if value > self.best_val_acc:
            self.best_val_acc, self.best_epoch = value, epoch
            if self.tested_weights == "best_val":
                self.best_state = {k: v.detach().cpu().clone()
                                   for k, v in module.state_dict().items()}

    def load_tested_weights(self, module: nn.Module) -> int | None:
        """Loads the weights the recipe tests into ``module``; returns their epoch (``None``:
        never validated, the current weights are kept)."""
        if self.tested_weights == "last" or self.best_state is None:
            return self.val_acc_history[-1][0] if self.val_acc_history else None
        module.load_state_dict(self.best_state)
        return self.best_epoch
