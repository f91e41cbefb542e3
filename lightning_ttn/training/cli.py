"""The LightningCLI behind ``train.py``: the recipe drives the trainer, fit tests and records.

``fit`` trains through the one run entry (:func:`lightning_ttn.training.run.fit_and_test`):
it keeps the best and last checkpoints on ``val/acc``, tests the weights the recipe names and
writes the run record ``run.json`` into the log directory.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from jsonargparse import lazy_instance
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.models import LeNet5
from lightning_ttn.training.callbacks import TensorBoardVisuals
from lightning_ttn.training.module import MONITOR, VideoClassifier
from lightning_ttn.training.run import fit_and_test

log = logging.getLogger(__name__)


def _batch_size(batch_size: int, overrides: dict, train_videos: int | None) -> int:
    return {int(k): v for k, v in (overrides or {}).items()}.get(train_videos, batch_size)


class VideoCLI(LightningCLI):
    """LightningCLI for :class:`VideoClassifier` on :class:`VideoMNISTDataModule`.

    The recipe owns the epochs, the validation interval and the batch size: they are set with
    ``--model.recipe.epochs``, ``--model.recipe.val_every_n_epochs``,
    ``--model.recipe.batch_size`` (and ``batch_size_overrides``), not on the trainer or data.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TensorBoardVisuals, "visuals")
        parser.link_arguments("model.recipe.epochs", "trainer.max_epochs")
        parser.link_arguments("model.recipe.val_every_n_epochs", "trainer.check_val_every_n_epoch")
        parser.link_arguments(
            ("model.recipe.batch_size", "model.recipe.batch_size_overrides", "data.train_videos"),
            "data.batch_size",
            compute_fn=_batch_size,
        )
        parser.set_defaults(
            {
                "model.model": lazy_instance(LeNet5),
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": lazy_instance(
                    TensorBoardLogger, save_dir="lightning_logs", default_hp_metric=False
                ),
            }
        )

    def fit(self, model: VideoClassifier, datamodule: LightningDataModule | None = None,
            **kwargs: Any) -> None:
        """``fit`` = the run entry: fit, test the recipe's weights, write ``run.json``."""
        record = fit_and_test(
            self.trainer, model, datamodule,
            init_seed=self.config[self.subcommand].seed_everything,
            ckpt_path=kwargs.get("ckpt_path"),
        )
        if self.trainer.logger is None:
            return
        path = f"{self.trainer.log_dir}/run.json"  # a broadcast: every rank must ask
        if self.trainer.is_global_zero:
            write_text_atomic(path, record.to_json())
            log.info("run record: %s", path)


def main() -> None:
    # Show the package's info messages (digit source used, cache rendering, subset sizes).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("lightning_ttn")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    # A deprecation inside Lightning 2.6 under torch 2.13, repeated on every fit; not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    VideoCLI(VideoClassifier, VideoMNISTDataModule, seed_everything_default=0,
             auto_configure_optimizers=False)
