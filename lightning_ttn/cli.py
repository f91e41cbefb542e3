"""The LightningCLI behind ``train.py``: always-on checkpointing, LR and TensorBoard logging."""

from __future__ import annotations

import logging
import warnings

from jsonargparse import lazy_instance
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_ttn.callbacks import TensorBoardVisuals
from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.module import MONITOR, VideoClassifier


class VideoCLI(LightningCLI):
    """``fit`` trains, keeps the best and last checkpoints on ``val/acc``, then (by default)
    tests the best checkpoint, so the main job ends with the test accuracy."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TensorBoardVisuals, "visuals")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "lr_monitor.logging_interval": "epoch",
                "trainer.max_epochs": 100,
                "trainer.logger": lazy_instance(
                    TensorBoardLogger, save_dir="lightning_logs", default_hp_metric=False
                ),
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best val/acc checkpoint on the test split.",
        )

    def after_fit(self) -> None:
        if self.config[self.subcommand].test_after_fit and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")


def main() -> None:
    # Show the package's info messages (digit source used, cache rendering, subset sizes).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("lightning_ttn")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    # A deprecation inside Lightning 2.6 under torch 2.13, repeated on every fit; not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    VideoCLI(VideoClassifier, VideoMNISTDataModule, seed_everything_default=0)
