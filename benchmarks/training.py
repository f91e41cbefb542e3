"""Training throughput: one epoch through the Lightning ``Trainer`` vs a bare PyTorch loop.

For LeNet-5-3D and LeNet-5-3DTTN (18, 28), one training epoch of the same Video-MNIST subset
(``VideoMNISTDataModule``, embedded digits, a fresh ``dm.train_dataloader()`` each epoch, so the
same shuffle order) is timed two ways in the same run:

* **bare**: ``model.train()``, SGD with the package recipe's rate, momentum and gradient-norm
  clipping (``Recipe()``) and ``for x, y in loader: loss = F.cross_entropy(model(x), y);
  opt.zero_grad(set_to_none=True); loss.backward(); clip_grad_norm_(...); opt.step()``.
  With ``--bare-accuracy`` it also updates a torchmetrics
  ``MulticlassAccuracy`` every step and computes it at the end of the epoch, as
  ``VideoClassifier`` does; by default it does not (no metric, no logging, no LR scheduler).
* **Lightning**: ``Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
  num_sanity_val_steps=0, accelerator="cpu", devices=1)`` and
  ``trainer.fit(VideoClassifier(model), train_dataloaders=loader)``; only the ``fit`` call is
  timed (the ``Trainer`` and ``VideoClassifier`` are built outside the clock). The module's
  training step also updates the train accuracy, ``self.log``s loss and accuracy, and the
  ``ReduceLROnPlateau`` scheduler is visited at the epoch end (it skips: no ``val/acc``).

Each measurement starts from a fresh model built with the same seed. One warm-up epoch of each
is run first, then ``--repeats`` bare/Lightning pairs, interleaved with the order alternating.
The epoch columns are clips / median epoch time (data loading included in both, since
``num_workers=0``). The per-step columns time only the optimization step: in the bare loop from
the moment a batch is in hand to the end of ``opt.step()``, in Lightning from
``on_train_batch_start`` to ``on_train_batch_end`` (a ``Callback``); the median over all timed
steps. *Paired overhead* is the median over repeats of the ratio of the two adjacent epochs.
*Fixed fit cost* is the ``fit`` wall time outside ``on_train_epoch_start`` ->
``on_train_epoch_end`` (setup, ``configure_optimizers``, teardown): paid once per ``fit``, so its
share shrinks with the epoch length. Torch threads: default unless ``--threads``.

    python benchmarks/training.py --train-videos 200 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, Trainer
from torchmetrics.classification import MulticlassAccuracy

from lightning_ttn.data.datamodule import VideoMNISTDataModule
from lightning_ttn.models import LeNet5
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.recipe import Recipe

RECIPE = Recipe()  # the bare loop reproduces the package recipe's optimizer and clipping

MODELS = [("conv3d", (18, 28)), ("ttconv3d", (18, 28))]


class StepTimer(Callback):
    """Records the wall time of each training step and of the training epoch."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epoch = 0.0
        self._step_start = 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.steps.append(time.perf_counter() - self._step_start)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch = time.perf_counter() - self._epoch_start


def fresh_model(conv: str, channels: tuple[int, int], seed: int) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5(channels, conv)


def bare_epoch(
    dm: VideoMNISTDataModule, conv: str, channels: tuple[int, int], seed: int, accuracy: bool
) -> tuple[float, list[float]]:
    """One epoch of the plain loop; returns (epoch seconds, per-step seconds)."""
    model = fresh_model(conv, channels, seed)
    loader = dm.train_dataloader()
    metric = MulticlassAccuracy(dm.num_classes, average="micro") if accuracy else None
    steps: list[float] = []
    start = time.perf_counter()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=RECIPE.lr, momentum=RECIPE.momentum)
    for x, y in loader:
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if metric is not None:
            metric.update(logits.detach(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE.max_grad_norm)
        opt.step()
        steps.append(time.perf_counter() - t0)
    if metric is not None:
        metric.compute()
    return time.perf_counter() - start, steps


def lightning_epoch(
    dm: VideoMNISTDataModule, conv: str, channels: tuple[int, int], seed: int
) -> tuple[float, list[float], float]:
    """One epoch of ``Trainer.fit``; returns (fit seconds, per-step seconds, epoch seconds)."""
    module = VideoClassifier(fresh_model(conv, channels, seed))
    loader = dm.train_dataloader()
    timer = StepTimer()
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start, timer.steps, timer.epoch


def quiet_lightning() -> None:
    """Silences Lightning's per-fit info lines and the warnings expected in this setup."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*ReduceLROnPlateau conditioned on metric.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*is deprecated.*")


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-videos", type=int, default=200, help="clips per epoch (N)")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed bare/Lightning pairs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each first")
    parser.add_argument(
        "--data-dir", help="render cache root (default: a temporary directory, deleted after)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="model initialization seed")
    parser.add_argument(
        "--bare-accuracy",
        action="store_true",
        help="also update a torchmetrics accuracy in the bare loop, as VideoClassifier does",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()

    with tempfile.TemporaryDirectory(prefix="lightning_ttn_bench_") as tmp:
        dm = VideoMNISTDataModule(
            data_dir=args.data_dir or tmp,
            source="embedded",
            train_videos=args.train_videos,
            batch_size=args.batch_size,
        )
        t0 = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        prep = time.perf_counter() - t0
        n = len(dm.datasets["train"])
        bare_kind = "with" if args.bare_accuracy else "without"
        print(
            f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, CPU, "
            f"{torch.get_num_threads()} threads, N = {n} clips, batch size {args.batch_size}, "
            f"{-(-n // args.batch_size)} steps/epoch; median of {args.repeats} interleaved epochs "
            f"each (warm-up {args.warmup}); bare loop {bare_kind} accuracy update; "
            f"data prepare+setup {prep:.1f} s\n"
        )
        print(
            "| model | bare clips/s | Lightning clips/s | overhead % (epoch) "
            "| bare step (ms) | Lightning step (ms) | overhead % (per step) "
            "| paired overhead % (epoch) | fixed fit cost (ms) | bare epoch range (s) "
            "| Lightning fit range (s) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for conv, channels in MODELS:
            name = LeNet5(channels, conv).name
            runs: dict[str, Callable[[], tuple]] = {
                "bare": partial(bare_epoch, dm, conv, channels, args.seed, args.bare_accuracy),
                "lightning": partial(lightning_epoch, dm, conv, channels, args.seed),
            }
            for _ in range(args.warmup):
                for run in runs.values():
                    run()
            bare_t: list[float] = []
            bare_steps: list[float] = []
            pl_t: list[float] = []
            pl_steps: list[float] = []
            fixed: list[float] = []
            for r in range(args.repeats):
                order = ["bare", "lightning"] if r % 2 == 0 else ["lightning", "bare"]
                for kind in order:
                    if kind == "bare":
                        t, steps = runs[kind]()
                        bare_t.append(t)
                        bare_steps += steps
                    else:
                        t, steps, epoch = runs[kind]()
                        pl_t.append(t)
                        pl_steps += steps
                        fixed.append(t - epoch)
            tb, tl = statistics.median(bare_t), statistics.median(pl_t)
            sb, sl = statistics.median(bare_steps), statistics.median(pl_steps)
            # Each repeat's two epochs ran back to back: their ratio is less exposed to load drift.
            paired = statistics.median(b / a for a, b in zip(bare_t, pl_t, strict=True))
            print(
                f"| {name} | {n / tb:.1f} | {n / tl:.1f} | {100 * (tl / tb - 1):+.1f} "
                f"| {1e3 * sb:.1f} | {1e3 * sl:.1f} | {100 * (sl / sb - 1):+.1f} "
                f"| {100 * (paired - 1):+.1f} | {1e3 * statistics.median(fixed):.0f} "
                f"| {spread(bare_t)} | {spread(pl_t)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
