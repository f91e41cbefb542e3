"""Stacked multi-run training vs the runs one by one: runs per hour, and the paper sweep's time.

For each model (``--models``, default: every family and width of ``--sweep``) the same runs
(``subset_seed = r``, ``init_seed = r``, ``--train-videos`` videos, ``--epochs`` epochs with a
validation each on ``--val-videos`` clips, a test on ``--test-videos``) are trained, in the same
process and on the same device, each built as the sweep builds it (``build_run``: the run's
``train.py fit`` config parsed by ``VideoCLI``, included in the time):

* **stacked**: ``R`` runs as one ``StackedClassifier`` under the first run's ``Trainer``
  (``fit_and_test_stack``, what ``train_stack`` runs), for each ``R`` of ``--members``; s/run
  is the stack's wall time divided by ``R``;
* **stacked1**: runs one by one as stacks of one (what a sweep with ``stack: 1`` runs;
  ``--loop-runs`` of them, mean), and
* **lightning**: runs one by one as ``train.py fit`` trains them: one ``VideoClassifier``
  through ``fit_and_test`` (automatic optimization, per-step logging and metrics).
  ``--loop lightning`` or ``stacked1`` keeps one of the two.

Times include a device synchronization. An untimed 1-epoch run of every configuration comes
first (``--no-warmup`` skips it). The last table extrapolates the measured per-clip costs (training
clip, evaluation clip, per member) and the per-stack setup to ``--sweep`` (default the paper's
600 runs of 100 epochs): each group of runs of one candidate and size as stacks of ``R``,
validation every ``val_every_n_epochs`` on the whole split (10,000 clips for full MNIST).

    python benchmarks/stacked.py --members 1 2 --epochs 1 --device cpu --threads 1 \\
        --train-videos 20 --val-videos 50 --test-videos 50 --loop-runs 1   # seconds, CPU
    python benchmarks/stacked.py --members 1 8 30 --device cuda --epochs 2 --train-videos 100
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_ttn.data.mnist import SPLIT_SIZES
from lightning_ttn.models import FAMILIES
from lightning_ttn.protocol.runner import build_run
from lightning_ttn.protocol.schema import RunSpec, SweepConfig, load_config, parse_config, plan_runs
from lightning_ttn.training.run import fit_and_test, fit_and_test_stack
from lightning_ttn.training.stacked import StackedClassifier, StackedDataModule, member_bytes


@dataclass
class Measure:
    """One timed configuration: wall seconds per run and per-member phase costs."""

    per_run_s: float
    members: int = 1
    train_clip_s: float = math.nan  # per member and training clip (one epoch's pass)
    eval_clip_s: float = math.nan  # per member and evaluated clip
    setup_s: float = math.nan  # per stack: data staging, members, optimizers
    peak_mib: float = math.nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(args: argparse.Namespace, family: str, channels: tuple[int, int], runs: int,
            output_dir: str) -> SweepConfig:
    return parse_config({
        "output_dir": output_dir, "source": args.source, "data_dir": args.data_dir,
        "sizes": [args.train_videos], "runs": runs, "epochs": args.epochs,
        "val_videos": args.val_videos, "test_videos": args.test_videos,
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "families": {family: [{"name": "w" + "-".join(map(str, channels)),
                               "channels": list(channels)}]},
    })


class PhaseTimer(Callback):
    """Seconds spent in training, validation and test (device synchronized at each boundary)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = {"train": 0.0, "val": 0.0, "test": 0.0}
        self._started: dict[str, float] = {}

    def _start(self, phase: str) -> None:
        _sync(self.device)
        self._started[phase] = time.perf_counter()

    def _stop(self, phase: str) -> None:
        _sync(self.device)
        self.seconds[phase] += time.perf_counter() - self._started.pop(phase)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("train")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("train")  # validation ran inside: subtracted below

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("val")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("test")


def _stacked(specs: list[RunSpec], config: SweepConfig, device: torch.device) -> Measure:
    """One stack of ``specs`` as the sweep trains it (``train_stack`` without the records)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    runs = [build_run(spec, config) for spec in specs]
    trainer = runs[0][2]
    timer = PhaseTimer(device)
    trainer.callbacks.append(timer)
    stack = StackedClassifier([module for module, _, _ in runs])
    fit_and_test_stack(trainer, stack, StackedDataModule([dm for _, dm, _ in runs]),
                       verbose=False)
    _sync(device)
    wall = time.perf_counter() - start
    seconds = timer.seconds
    train = seconds["train"] - seconds["val"]
    recipe, size = specs[0].recipe, len(specs)
    train_clips = recipe.epochs * specs[0].train_videos * size
    validations = recipe.epochs // recipe.val_every_n_epochs
    val_clips = validations * (config.val_videos or 0) * size
    return Measure(
        per_run_s=wall / size,
        members=size,
        train_clip_s=train / train_clips,
        eval_clip_s=(seconds["val"] + seconds["test"]) / (val_clips + (config.test_videos or 0)
                                                          * size),
        setup_s=wall - train - seconds["val"] - seconds["test"],
        peak_mib=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                  else math.nan),
    )


def _lightning(spec: RunSpec, config: SweepConfig, device: torch.device) -> float:
    """Seconds of one run as ``train.py fit`` trains it: one ``VideoClassifier``."""
    _sync(device)
    start = time.perf_counter()
    module, datamodule, trainer = build_run(spec, config)
    fit_and_test(trainer, module, datamodule, init_seed=spec.init_seed, verbose=False)
    _sync(device)
    return time.perf_counter() - start


def _models(args: argparse.Namespace, sweep: SweepConfig) -> list[tuple[str, tuple[int, int]]]:
    if args.models:
        parsed = []
        for text in args.models:
            family, _, widths = text.partition(":")
            parsed.append((family, tuple(int(c) for c in widths.split(","))))
        return parsed
    seen: dict[tuple[str, tuple[int, int]], None] = {}
    for family, candidates in sweep.families.items():
        for candidate in candidates:
            seen[(family, tuple(candidate.channels))] = None
    return list(seen)


def _estimate(sweep: SweepConfig, measures: dict[tuple[str, tuple[int, int]], Measure],
              ) -> tuple[float, int, list[str]]:
    """Seconds the sweep's runs take at the measured per-member costs (runs of unmeasured
    models are skipped: returned count and names)."""
    val_clips = sweep.val_videos or SPLIT_SIZES[sweep.source][1]
    test_clips = sweep.test_videos or SPLIT_SIZES[sweep.source][2]
    total, runs, missing = 0.0, 0, set()
    for spec in plan_runs(sweep):
        key = (spec.family, tuple(spec.candidate.channels))
        if key not in measures:
            missing.add(f"{key[0]}:{','.join(map(str, key[1]))}")
            continue
        m, recipe = measures[key], spec.recipe
        validations = recipe.epochs // recipe.val_every_n_epochs
        clips = recipe.epochs * spec.train_videos
        total += (clips * m.train_clip_s + (validations * val_clips + test_clips) * m.eval_clip_s
                  + m.setup_s / m.members)
        runs += 1
    return total, runs, sorted(missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8, 30],
                        help="stack sizes R to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-videos", type=int, default=100)
    parser.add_argument("--val-videos", type=int, default=100)
    parser.add_argument("--test-videos", type=int, default=100)
    parser.add_argument("--models", nargs="*",
                        help="FAMILY:C1,C2, e.g. 3DTTN:4,14 (default: every model of --sweep)")
    parser.add_argument("--loop", nargs="+", default=["stacked1", "lightning"],
                        choices=["stacked1", "lightning"], help="one-by-one baselines to time")
    parser.add_argument("--loop-runs", type=int, default=2, help="runs timed per baseline")
    parser.add_argument("--source", default="embedded", choices=["embedded", "mnist", "auto"])
    parser.add_argument("--data-dir", default="data", help="digits and rendered cache")
    parser.add_argument("--sweep", default="configs/sweeps/paper.yaml",
                        help="sweep file whose wall time is estimated")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="an untimed 1-epoch run of every configuration first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "lightning_ttn"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sweep = load_config(args.sweep)
    models = _models(args, sweep)
    members = sorted(set(args.members))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{args.train_videos} training videos, {args.epochs} epochs, validation on "
          f"{args.val_videos} clips each epoch, test on {args.test_videos}")

    rows, stacked_at = [], {r: {} for r in members}
    with tempfile.TemporaryDirectory() as output_dir:
        for family, channels in models:
            config = _config(args, family, channels, max(members + [args.loop_runs]),
                             output_dir)
            specs = plan_runs(config)
            if args.warmup:
                short = _config(args, family, channels, max(members), output_dir)
                short = parse_config({**short.to_dict(), "epochs": 1})
                for r in members:
                    _stacked(plan_runs(short)[:r], short, device)
                if "lightning" in args.loop:
                    _lightning(plan_runs(short)[0], short, device)
            loop = {}
            if "stacked1" in args.loop:
                single = [_stacked([s], config, device) for s in specs[:args.loop_runs]]
                loop["stacked1"] = statistics.mean(m.per_run_s for m in single)
            if "lightning" in args.loop:
                loop["lightning"] = statistics.mean(
                    _lightning(s, config, device) for s in specs[:args.loop_runs])
            for r in members:
                measure = _stacked(specs[:r], config, device)
                stacked_at[r][(family, channels)] = measure
                estimate = member_bytes(channels, FAMILIES[family].conv, specs[0].batch_size)
                rows.append((f"{family} {channels}", r, measure, loop, estimate))

    print("\nruns/hour, stacked vs one by one (loop: the mean of --loop-runs single runs; "
          "ratio: loop s/run / stacked s/run;\ntrain/eval ms: stacked cost per member and "
          "training/evaluated clip; setup s: per stack; est. MiB: member_bytes x R)")
    header = (f"{'model':<22} {'R':>3} {'stacked s/run':>13} {'runs/h':>8}")
    for kind in args.loop:
        header += f" {kind + ' s/run':>16} {'runs/h':>8} {'ratio':>6}"
    header += f" {'train ms':>8} {'eval ms':>7} {'setup s':>7} {'peak MiB':>8} {'est. MiB':>8}"
    print(header)
    for model, r, m, loop, estimate in rows:
        line = f"{model:<22} {r:>3} {m.per_run_s:>13.3f} {3600 / m.per_run_s:>8.0f}"
        for kind in args.loop:
            line += (f" {loop[kind]:>16.3f} {3600 / loop[kind]:>8.0f}"
                     f" {loop[kind] / m.per_run_s:>6.2f}")
        line += (f" {1e3 * m.train_clip_s:>8.3f} {1e3 * m.eval_clip_s:>7.3f} {m.setup_s:>7.2f}"
                 f" {m.peak_mib:>8.0f} {r * estimate / 2**20:>8.0f}")
        print(line)

    print(f"\nestimate for {args.sweep} on {name} (from the measured per-clip costs above)")
    for r in members:
        seconds, runs, missing = _estimate(sweep, stacked_at[r])
        note = f" (runs of unmeasured models left out: {', '.join(missing)})" if missing else ""
        label = "one by one (stacks of R=1)" if r == 1 else f"stacks of R={r}"
        print(f"  {label:<32} {runs} runs: {seconds / 3600:8.2f} h{note}")
    if 1 in members and "lightning" in args.loop and "stacked1" in args.loop:
        ratios = [loop["lightning"] / loop["stacked1"] for _, r, _, loop, _ in rows if r == 1]
        print(f"  (train.py fit's single-run path took {statistics.mean(ratios):.2f}x the time "
              "per run of a stack of one here)")


if __name__ == "__main__":
    main()
