"""Learning-rate rules of the recipe that PyTorch does not ship."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau


class HalveEveryTenEpochs(ReduceLROnPlateau):
    """The rule the authors' code intends (``omg_emotion/main_file.py``, ``run``): the validation
    accuracy is checked after epochs 1, 11, 21, ... (their 0-based epochs 0, 10, 20, ...); at
    each check but the first, every group's rate is halved unless the accuracy is strictly
    higher than at the previous check.

    A ``ReduceLROnPlateau`` so that Lightning passes it ``val/acc`` after each validation, which
    must run every epoch.

    Args:
        optimizer: The optimizer whose rates are halved.
        val_every_n_epochs: Epochs between two validations; must be 1.
    """

    def __init__(self, optimizer: Optimizer, val_every_n_epochs: int) -> None:
        if val_every_n_epochs != 1:
            raise ValueError(
                "lr_schedule='halve_every_10' checks validation accuracy at epochs 1, 11, 21, "
                f"...: it needs val_every_n_epochs=1, got {val_every_n_epochs}"
            )
        super().__init__(optimizer, mode="max", factor=0.5, patience=0)
        self.epochs_seen = 0
        self.previous_check = -math.inf

    def step(self, metrics: float, epoch: int | None = None) -> None:  # type: ignore[override]
        self.epochs_seen += 1
        if (self.epochs_seen - 1) % 10:
            return
        accuracy = float(metrics)
        if self.epochs_seen > 1 and not accuracy > self.previous_check:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.5
        self.previous_check = accuracy
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
