"""The one run entry: fit, keep the weights the recipe tests, test them, return a record.

``train.py fit`` (``lightning_ttn.training.cli``) trains through :func:`fit_and_test`, every
sweep run (``lightning_ttn.protocol.runner``) through :func:`fit_and_test_stack`: the same
``Trainer`` loop with ``R >= 1`` runs of one model as one
:class:`~lightning_ttn.training.stacked.StackedClassifier`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import torch
from pytorch_lightning import LightningDataModule, Trainer

from lightning_ttn.training.diagnostics import kernel_health, transform_drift
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord, provenance
from lightning_ttn.training.stacked import StackedClassifier, StackedDataModule


def device_name(device: torch.device) -> str:
    """``cpu`` or the GPU's name, e.g. ``cuda: NVIDIA H200``, for a run record."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def fit_and_test(
    trainer: Trainer,
    module: VideoClassifier,
    datamodule: LightningDataModule,
    init_seed: int | None = None,
    ckpt_path: str | None = None,
    verbose: bool = True,
) -> RunRecord:
    """Trains ``module``, loads the weights its recipe tests and tests them.

    Args:
        trainer: The trainer (epochs and validation interval as in ``module.recipe``).
        module: The model and its recipe.
        datamodule: The data; its ``train_videos``, ``subset_seed`` and ``batch_size`` (if it
            has them) go into the record.
        init_seed: The seed the weights were initialized with, for the record.
        ckpt_path: Checkpoint to resume the fit from.
        verbose: Print Lightning's test table.

    Returns:
        The run's record (no sweep identity: the sweep adds it).
    """
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    tested_epoch = module.load_tested_weights()
    metrics = trainer.test(module, datamodule=datamodule, verbose=verbose)[0]
    return _record(trainer, module, datamodule, init_seed, tested_epoch,
                   float(metrics["test/acc"]), float(metrics["test/loss"]),
                   time.perf_counter() - start)


def fit_and_test_stack(
    trainer: Trainer,
    stack: StackedClassifier,
    datamodule: StackedDataModule,
    init_seeds: Sequence[int | None] | None = None,
    verbose: bool = True,
) -> list[RunRecord]:
    """:func:`fit_and_test` for the ``R`` runs of a stack: one fit, one test, one record per
    member (``wall_time_s``: the stack's time divided by ``R``, each member's share).

    Args:
        trainer: The trainer (epochs and validation interval as in the members' recipe).
        stack: The members.
        datamodule: Member ``r``'s data module is ``datamodule.members[r]``.
        init_seeds: The seeds the members' weights were initialized with, for the records.
        verbose: Print Lightning's test table.
    """
    size = len(stack)
    init_seeds = [None] * size if init_seeds is None else list(init_seeds)
    if len(init_seeds) != size or len(datamodule.members) != size:
        raise ValueError(f"{size} members need {size} init seeds and data modules, got "
                         f"{len(init_seeds)} and {len(datamodule.members)}")
    start = time.perf_counter()
    trainer.fit(stack, datamodule=datamodule)
    tested_epochs = stack.load_tested_weights()
    trainer.test(stack, datamodule=datamodule, verbose=verbose)
    share = (time.perf_counter() - start) / size
    return [
        dataclasses.replace(
            _record(trainer, run, dm, seed, tested_epoch, test_acc, test_loss, share),
            stack_size=size,
        )
        for run, dm, seed, tested_epoch, (test_acc, test_loss) in zip(
            stack.runs, datamodule.members, init_seeds, tested_epochs, stack.test_results,
            strict=True,
        )
    ]


def _record(
    trainer: Trainer, module: VideoClassifier, datamodule: LightningDataModule,
    init_seed: int | None, tested_epoch: int | None, test_acc: float, test_loss: float,
    wall_time_s: float,
) -> RunRecord:
    best = module.history.best_val_acc
    return RunRecord(
        best_epoch=module.best_epoch,
        best_val_acc=best if math.isfinite(best) else math.nan,
        test_acc=test_acc,
        test_loss=test_loss,
        num_parameters=module.num_parameters,
        val_acc_history=module.val_acc_history,
        train_loss_history=module.train_loss_history,
        lr_history=module.lr_history,
        tested_epoch=tested_epoch,
        model_name=module.model_name,
        # What source="auto" resolved to ("mnist" or "embedded"), where the data module says.
        data_source=getattr(datamodule, "source_name", None),
        train_videos=getattr(datamodule, "train_videos", None),
        subset_seed=getattr(datamodule, "subset_seed", None),
        batch_size=getattr(datamodule, "batch_size", None),
        init_seed=init_seed,
        recipe=module.recipe.to_dict(),
        transforms=transform_drift(module.model),
        kernel_health=kernel_health(module.model),
        diverged=module.diverged_epoch is not None,
        diverged_epoch=module.diverged_epoch,
        wall_time_s=wall_time_s,
        # CPU results depend on the thread count (reduction order inside conv3d).
        torch_threads=torch.get_num_threads(),
        # The strategy's device: Lightning moves the module back to the CPU after fit/test.
        device=device_name(trainer.strategy.root_device),
        **provenance(),
    )
