"""The LightningCLI behind ``train.py``: the recipe drives the trainer, fit tests and records.

``fit`` trains through the one run entry (:func:`lightning_ttn.training.run.fit_and_test`):
it keeps the best and last checkpoints on ``val/acc``, tests the weights the recipe names and
writes the run record ``run.json`` into the log directory.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import lazy_instance
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.models import LeNet5
from lightning_ttn.training.callbacks import TensorBoardVisuals
from lightning_ttn.training.checkpoint import check_ckpt_path, network_class_paths
from lightning_ttn.training.module import MONITOR, VideoClassifier
from lightning_ttn.training.recipe import batch_size_for
from lightning_ttn.training.run import fit_and_test

log = logging.getLogger(__name__)


class SaveConfigIntoLogDir(SaveConfigCallback):
    """Saves ``config.yaml`` into the logger's directory, and nowhere without a logger (Lightning
    would write it into the working directory, and refuse the next run there)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


class ShortErrorParser(LightningArgumentParser):
    """Reports a bad argument in two lines (the value and what is allowed), not the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if "class_path" in message:
            message += "\n  allowed networks: " + ", ".join(network_class_paths())
        sys.stderr.write(f"error: {message.strip()}\n(see {self.prog} --help)\n")
        sys.exit(2)


class VideoCLI(LightningCLI):
    """LightningCLI for :class:`VideoClassifier` on :class:`VideoMNISTDataModule`.

    The recipe owns the epochs, the validation interval and the batch size: they are set with
    ``--model.recipe.epochs``, ``--model.recipe.val_every_n_epochs``,
    ``--model.recipe.batch_size`` (and ``batch_size_overrides``), not on the trainer or data.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No --weights_only: checkpoints are only ever read with weights_only=True.
        return {name: skip | {"weights_only"} for name, skip in LightningCLI.subcommands().items()}

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyperparameters into the config before anything else:
        # the file is checked first, so a refused one is a short error (and imports nothing).
        if self.config.get("subcommand"):
            check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = ShortErrorParser
        return super().init_parser(**kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer; Lightning's refusal of its settings (an accelerator this machine lacks,
        a device count the accelerator cannot give) becomes a short ``ValueError``."""
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as e:
            raise ValueError(_refused_trainer(e, self._get(self.config_init, "trainer"))) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TensorBoardVisuals, "visuals")
        parser.link_arguments("model.recipe.epochs", "trainer.max_epochs")
        parser.link_arguments("model.recipe.val_every_n_epochs", "trainer.check_val_every_n_epoch")
        parser.link_arguments(
            ("model.recipe.batch_size", "model.recipe.batch_size_overrides", "data.train_videos"),
            "data.batch_size",
            compute_fn=batch_size_for,
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

    def _no_log_dir(self) -> bool:
        # fast_dev_run replaces the logger by a DummyLogger, which has no directory either.
        return self.trainer.logger is None or bool(self.trainer.fast_dev_run)

    def before_fit(self) -> None:
        if isinstance(self.trainer.strategy.launcher, _MultiProcessingLauncher):
            strategy = self._get(self.config_init, "trainer")["strategy"]
            raise ValueError(
                f"trainer.strategy={_setting(strategy)!r} is not supported by fit: its worker "
                "processes hand back neither the training history nor the best weights, so the "
                "run would test and record the wrong weights; use --trainer.strategy ddp"
            )
        # Without a logger (fast_dev_run, --trainer.logger false) checkpoints would land in the
        # working directory; they are kept only where the user asked for them.
        if self._no_log_dir():
            for callback in self.trainer.checkpoint_callbacks:
                if callback.dirpath is None:
                    callback.save_top_k, callback.save_last = 0, False
                    log.info("no logger: no checkpoints are saved (set --checkpoint.dirpath)")

    def fit(self, model: VideoClassifier, datamodule: LightningDataModule | None = None,
            **kwargs: Any) -> None:
        """``fit`` = the run entry: fit, test the recipe's weights, write ``run.json``."""
        record = fit_and_test(
            self.trainer, model, datamodule,
            init_seed=self.config[self.subcommand].seed_everything,
            ckpt_path=kwargs.get("ckpt_path"),
        )
        if self._no_log_dir():
            return
        path = f"{self.trainer.log_dir}/run.json"  # a broadcast: every rank must ask
        if self.trainer.is_global_zero:
            write_text_atomic(path, record.to_json())
            log.info("run record: %s", path)

    def validate(self, model: VideoClassifier, datamodule: LightningDataModule | None = None,
                 **kwargs: Any) -> None:
        self.trainer.validate(model, datamodule=datamodule, weights_only=True, **kwargs)

    def test(self, model: VideoClassifier, datamodule: LightningDataModule | None = None,
             **kwargs: Any) -> None:
        self.trainer.test(model, datamodule=datamodule, weights_only=True, **kwargs)

    def before_predict(self) -> None:
        # Each process would predict its share of the clips and only one would write.
        processes = self.trainer.num_devices * self.trainer.num_nodes
        if processes > 1:
            raise ValueError(
                f"predict runs in one process (one predictions.csv of every test clip), got "
                f"{processes} processes: use --trainer.devices 1"
            )

    def predict(self, model: VideoClassifier, datamodule: LightningDataModule | None = None,
                **kwargs: Any) -> None:
        """Predicts the test clips and writes ``predictions.csv`` (clip index in the test split,
        label, predicted class, class probabilities) into the log directory."""
        batches = self.trainer.predict(model, datamodule=datamodule,
                                       ckpt_path=kwargs.get("ckpt_path"), weights_only=True)
        labels = torch.cat([b[0] for b in batches]).tolist()
        probabilities = torch.cat([b[1] for b in batches]).float()
        clips = datamodule.datasets["test"].rows.tolist() if datamodule else range(len(labels))
        if self._no_log_dir():
            print("no logger: predictions are not written (set --trainer.logger)")
            return
        directory = Path(self.trainer.log_dir)  # a broadcast: every rank must ask
        if not self.trainer.is_global_zero:
            return
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["clip,label,predicted," + ",".join(
            f"p{c}" for c in range(probabilities.shape[1]))]
        for clip, label, p in zip(clips, labels, probabilities, strict=True):
            lines.append(f"{clip},{label},{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p))
        path = directory / "predictions.csv"
        write_text_atomic(path, "\n".join(lines) + "\n")
        print(f"wrote {len(labels)} predictions to {path}")


def _setting(value: Any) -> Any:
    """A trainer setting as the user wrote it (a class name for an object)."""
    return value if isinstance(value, (str, int, list, type(None))) else type(value).__name__


def _refused_trainer(error: MisconfigurationException, trainer: dict[str, Any]) -> str:
    """Lightning's reason, the settings it refused and what this machine offers, in one line."""
    settings = ", ".join(
        f"{key}={_setting(trainer.get(key))!r}" for key in ("accelerator", "devices", "strategy")
    )
    available = [name for name in sorted(AcceleratorRegistry.available_accelerators())
                 if AcceleratorRegistry[name]["accelerator"].is_available()]
    return (f"trainer settings refused ({settings}): {str(error).strip()} "
            f"Accelerators available here: {', '.join(available)}")


def main() -> None:
    # Show the package's info messages (digit source used, cache rendering, subset sizes).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("lightning_ttn")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    # A deprecation inside Lightning 2.6 under torch 2.13, repeated on every fit; not ours to fix.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        VideoCLI(VideoClassifier, VideoMNISTDataModule, seed_everything_default=0,
                 auto_configure_optimizers=False, save_config_callback=SaveConfigIntoLogDir)
    # A bad value found by a constructor, a refused trainer setting or checkpoint: no traceback.
    except ValueError as e:
        sys.exit(f"error: {e}")
