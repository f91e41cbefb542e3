"""The sweep runner: train every configuration, size and run of a sweep file, resumably.

``python -m lightning_ttn.sweep --config configs/sweeps/paper.yaml [--shard k/n] [--threads N]
[--dry-run]`` trains the runs of :func:`lightning_ttn.protocol.schema.plan_runs` (run index
outermost) and writes one record per finished run into ``<output_dir>/runs/``. Each run is
defined as ``train.py fit`` defines it: its config is written as ``<run_id>.yaml`` and parsed
by the same LightningCLI (:func:`build_run`); runs of one candidate and size are trained
``stack`` at a time by :func:`train_stack` under the same ``Trainer``: a single run through
:func:`lightning_ttn.training.run.fit_and_test` (what ``train.py fit`` runs), a larger stack
through :func:`lightning_ttn.training.run.fit_and_test_stack`; the record's
``replay`` field is the ``train.py fit`` command that retrains it alone. Re-running the same
command skips finished runs; ``--shard k/n`` trains every n-th run from the k-th, so workers on
several machines (e.g. a SLURM array) share one sweep over a shared directory. Each run is
claimed with a non-blocking file lock, so concurrent workers never train the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.loggers import TensorBoardLogger
from tqdm import tqdm

from lightning_ttn.data import VideoMNISTDataModule, load_digits
from lightning_ttn.data.mnist import SPLIT_SIZES
from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.protocol import store
from lightning_ttn.protocol.schema import (
    RunSpec,
    SweepConfig,
    SweepConfigError,
    candidate_dict,
    check_split_sizes,
    load_config,
    parse_config,
    parse_shard,
    plan_runs,
    shard_runs,
)
from lightning_ttn.protocol.stacking import check_stack, stack_groups
from lightning_ttn.training.cli import VideoCLI
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord
from lightning_ttn.training.run import fit_and_test, fit_and_test_stack
from lightning_ttn.training.stacked import (
    StackedClassifier,
    StackedDataModule,
    StackLogger,
    auto_stack,
)

TrainFn = Callable[[RunSpec, SweepConfig], RunRecord]
StackTrainFn = Callable[[list[RunSpec], SweepConfig], list[RunRecord]]
# Lightning's hints that do not apply to tiny, single-process sweep runs.
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\).*",  # torch 2.13 deprecation inside Lightning 2.6
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*LightningCLI's args parameter is intended to run from within Python.*",
)


# ----------------------------------------------------------------------------- one run
def run_config(spec: RunSpec, config: SweepConfig) -> dict[str, Any]:
    """The ``train.py fit`` config of a run: what it trains, on which data, with which recipe.

    Replaying it (``python train.py fit --config <it>``) retrains the run exactly: same
    training videos (``subset_seed=r``), weight seed, recipe and evaluation subsets. Logs and
    checkpoints of a replay go to ``lightning_logs/replay/<run_id>``.
    """
    family = spec.family_spec
    init_args: dict[str, Any] = {"channels": list(spec.candidate.channels), "conv": family.conv}
    if family.conv == "ttconv3d":
        init_args["transform"] = family.transform
    return {
        "seed_everything": spec.init_seed,
        "model": {
            "model": {"class_path": "lightning_ttn.models.LeNet5", "init_args": init_args},
            "recipe": spec.recipe.to_dict(),
        },
        "data": {
            "data_dir": config.data_dir,
            "source": config.source,
            "mnist_dir": config.mnist_dir,
            "render_seed": config.render_seed,
            "motion": config.motion,
            "verify": config.verify,
            "train_videos": spec.train_videos,
            "val_videos": config.val_videos,
            "test_videos": config.test_videos,
            "subset_seed": spec.run,
            "num_workers": config.num_workers,
        },
        "trainer": {
            "accelerator": config.accelerator,
            "devices": config.devices,
            "deterministic": config.deterministic,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "lightning_logs", "name": f"replay/{spec.run_id}",
                              "default_hp_metric": False},
            },
        },
    }


def _sweep_overrides() -> list[str]:
    """What a sweep run does differently from its replay: no checkpoint files, no progress
    bar, no logger (``train_stack`` adds TensorBoard if the sweep asks for it)."""
    return [
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--checkpoint.save_top_k", "0",
        "--checkpoint.save_last", "false",
    ]


class _SweepCLI(VideoCLI):
    """``VideoCLI`` with its parser built once per process: building it (every argument of the
    Trainer, model, data and callbacks) takes longer than parsing a run's config, and a stack
    parses ``R`` of them. Parsing does not change the parser.

    Once the parser is built, everything alive (modules, classes, the parser) is moved out of
    the garbage collector's full passes (``gc.freeze``): they live as long as the worker, and
    with them each full pass took about 0.17 s, one every other run of a sweep.
    """

    _shared_parser: LightningArgumentParser | None = None

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        if add_subcommands or main_kwargs or subparser_kwargs:
            raise ValueError("the sweep parses a run's config without subcommands or kwargs")
        if _SweepCLI._shared_parser is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            _SweepCLI._shared_parser = self.parser
            gc.collect()  # no garbage into the permanent generation
            gc.freeze()
        self.parser = _SweepCLI._shared_parser


def build_run(
    spec: RunSpec, config: SweepConfig, args: Sequence[str] = ()
) -> tuple[VideoClassifier, VideoMNISTDataModule, Trainer]:
    """A run's module (initial weights: ``seed_everything(init_seed)``), data module and
    trainer, as ``train.py fit`` builds them.

    The run's config is written beside its record first, then parsed by the same LightningCLI
    with the sweep's overrides (no checkpoints, quiet) and ``args`` (more ``train.py``
    arguments, e.g. ``--trainer.precision 64-true``).
    """
    path = store.replay_config_path(config.output_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(run_config(spec, config), sort_keys=False))
    cli = _SweepCLI(
        VideoClassifier, VideoMNISTDataModule,
        args=["--config", str(path), *_sweep_overrides(), *args],
        run=False, save_config_callback=None, auto_configure_optimizers=False,
        # Saves no parsed config into the hparams: a sweep saves no checkpoints to load.
        load_from_checkpoint_support=False,
    )
    return cli.model, cli.datamodule, cli.trainer


def train_stack(specs: Sequence[RunSpec], config: SweepConfig) -> list[RunRecord]:
    """Trains runs of one candidate and size (a single run is a stack of one) and returns their
    records, in ``specs`` order.

    Each run is built by :func:`build_run`; one run is trained as ``train.py fit`` trains it
    (``fit_and_test``), ``R > 1`` runs as one ``StackedClassifier`` on a ``StackedDataModule``
    by the first run's trainer, through ``fit_and_test_stack``. With ``tensorboard: true`` each
    run logs into ``<output_dir>/tensorboard/<run_id>``.

    Raises:
        ValueError: the runs are not one candidate and size (:func:`check_stack`).
    """
    check_stack(specs)
    runs = [build_run(spec, config) for spec in specs]
    trainer = runs[0][2]
    loggers = {
        spec.run_id: TensorBoardLogger(save_dir=f"{config.output_dir}/tensorboard", name="",
                                       version=spec.run_id, default_hp_metric=False)
        for spec in specs
    } if config.tensorboard else {}
    if len(runs) == 1:
        # A stack of one is the single run, the very code `train.py fit` and its replay run
        # (the stacked module sums in another order: equal only up to float rounding).
        (module, datamodule, _), spec = runs[0], specs[0]
        trainer.logger = loggers.get(spec.run_id)
        record = fit_and_test(trainer, module, datamodule, spec.init_seed, verbose=False)
        return [with_identity(record, spec, config)]
    if loggers:
        trainer.logger = StackLogger(loggers)
    stack = StackedClassifier([module for module, _, _ in runs], [s.run_id for s in specs])
    datamodule = StackedDataModule([dm for _, dm, _ in runs])
    records = fit_and_test_stack(trainer, stack, datamodule, [s.init_seed for s in specs],
                                 verbose=False)
    return [with_identity(record, spec, config)
            for record, spec in zip(records, specs, strict=True)]


def train_one(spec: RunSpec, config: SweepConfig) -> RunRecord:
    """Trains one run (a stack of one: :func:`train_stack`) and returns its record."""
    return train_stack([spec], config)[0]


def with_identity(record: RunRecord, spec: RunSpec, config: SweepConfig) -> RunRecord:
    """The record with the sweep's identity of its run: id, family, candidate, settings and
    the replay command (its config, written by :func:`build_run`)."""
    path = store.replay_config_path(config.output_dir, spec)
    settings = {
        k: v for k, v in config.to_dict().items()
        if k in ("source", "render_seed", "motion", "val_videos", "test_videos", "seed_offset",
                 "deterministic")
    }
    return dataclasses.replace(
        record,
        run_id=spec.run_id,
        family=spec.family,
        candidate=candidate_dict(spec.candidate),
        run=spec.run,
        settings=settings,
        replay=["train.py", "fit", "--config", str(path)],
    )


def claim_and_train_stack(specs: list[RunSpec], config: SweepConfig, train_fn: StackTrainFn
                          ) -> tuple[list[RunRecord], int]:
    """Claims the stack's runs one by one (skipping finished runs and runs other workers hold),
    trains the claimed ones together and writes their records.

    Returns:
        The records written and the number of runs held by other workers.
    """
    with contextlib.ExitStack() as claims:
        claimed = [spec for spec in specs
                   if claims.enter_context(store.claim(config.output_dir, spec))]
        held = sum(not store.is_finished(config.output_dir, s) for s in specs) - len(claimed)
        if not claimed:
            return [], held
        records = train_fn(claimed, config)
        for spec, record in zip(claimed, records, strict=True):
            store.write_record(config.output_dir, spec, record)
        return records, held


# ----------------------------------------------------------------------------- the sweep
def resolve_source(config: SweepConfig) -> SweepConfig:
    """The config with ``source: auto`` replaced by what it finds now (``mnist`` or ``embedded``).

    Resolved once per worker, and saved in sweep.json, so that every run of a sweep uses the
    same digits: a worker that would resolve differently (MNIST appeared or became unreachable)
    stops at the resume check instead of mixing sources.
    """
    if config.source != "auto":
        return config
    resolved = load_digits("auto", config.data_dir, config.mnist_dir).name
    return parse_config({**config.to_dict(), "source": resolved})


def check_sizes(config: SweepConfig) -> None:
    """Checks the sweep's sizes against its digit source's splits (``SweepConfigError``)."""
    check_split_sizes(config, SPLIT_SIZES[config.source])


def _summary_line(record: RunRecord) -> str:
    best = record.best_val_acc if record.best_val_acc is not None else math.nan
    return (
        f"{record.run_id}: best val acc {best:.4f} (epoch {record.best_epoch}), "
        f"test acc {record.test_acc:.4f}, {record.wall_time_s or 0:.1f} s"
    )


def run_sweep(
    config: SweepConfig,
    shard: tuple[int, int] = (0, 1),
    train_fn: TrainFn | None = None,
    show_progress: bool = True,
) -> dict[str, int]:
    """Trains the unfinished runs of one shard, stack by stack (:func:`train_stack`).

    Args:
        config: The sweep.
        shard: ``(k, n)``: train runs ``i`` of the ordered run list with ``i % n == k``.
        train_fn: Trains one run and returns its record, instead of :func:`train_stack` on
            stacks of ``config.stack`` runs (tests pass a fake).
        show_progress: Show a tqdm bar over the shard's runs (finished ones included).

    Returns:
        Counts of the shard's runs: ``total``, ``finished_before``, ``trained`` and ``held``
        (skipped because another worker was training them).
    """
    check_sizes(config)  # before resolving "auto", which may look for MNIST
    resolved = resolve_source(config)
    if resolved.source != config.source:
        check_sizes(resolved)
    config = resolved
    specs = shard_runs(plan_runs(config), *shard)
    store.prepare_output_dir(config)
    for moved in store.set_aside_unreadable(config.output_dir, specs):
        print(f"warning: unreadable run record moved to {moved}; the run is trained again",
              file=sys.stderr)
    finished_before = sum(store.is_finished(config.output_dir, s) for s in specs)
    counts = {"total": len(specs), "finished_before": finished_before, "trained": 0, "held": 0}
    if train_fn is None:
        train: StackTrainFn = train_stack
        stack = _stack_size(config, _device(config), specs)
    else:
        train, stack = (lambda group, cfg: [train_fn(spec, cfg) for spec in group]), 1
    pending = [s for s in specs if not store.is_finished(config.output_dir, s)]
    with tqdm(total=len(specs), initial=finished_before, unit="run",
              disable=not show_progress) as bar, warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for group in stack_groups(pending, stack):
            records, held = claim_and_train_stack(group, config, train)
            counts["trained"] += len(records)
            counts["held"] += held
            bar.update(len(records))
            for record in records:
                bar.write(_summary_line(record))
    return counts


def _device(config: SweepConfig) -> torch.device:
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _stack_size(config: SweepConfig, device: torch.device, specs: list[RunSpec]) -> int:
    """``stack`` of the config; ``auto``: 1 on CPU, on CUDA what fits (runs of a group)."""
    if config.stack != "auto":
        return int(config.stack)
    if device.type != "cuda" or not specs:
        return 1
    largest = max(len(g) for g in stack_groups(specs, len(specs)))
    first = specs[0]
    return auto_stack(device, largest, first.candidate.channels, first.family_spec.conv,
                      first.batch_size)


# ----------------------------------------------------------------------------- command line
def _print_plan(config: SweepConfig, shard: tuple[int, int]) -> None:
    all_runs = plan_runs(config)
    specs = shard_runs(all_runs, *shard)
    pending = [s for s in specs if not store.is_finished(config.output_dir, s)]
    print(f"sweep: {len(all_runs)} runs into {config.output_dir}/runs")
    print(f"shard {shard[0]}/{shard[1]}: {len(specs)} runs, {len(specs) - len(pending)} finished, "
          f"{len(pending)} to train")
    for spec in pending[:10]:
        print(f"  {spec.run_id} (channels {spec.candidate.channels}, lr {spec.recipe.lr}, "
              f"batch {spec.batch_size}, init seed {spec.init_seed})")
    if len(pending) > 10:
        print(f"  ... and {len(pending) - 10} more")


def write_failure(error: OSError, config: SweepConfig, shard: tuple[int, int]) -> str:
    """One paragraph for a failed file operation: which file, why, what is kept, what next."""
    where = error.filename or config.output_dir
    reason = error.strerror or str(error)
    if error.errno is not None:
        reason += f" ({errno.errorcode.get(error.errno, error.errno)})"
    try:
        specs = shard_runs(plan_runs(config), *shard)
        finished = f"{sum(store.is_finished(config.output_dir, s) for s in specs)} of {len(specs)}"
    except OSError:
        finished = "the"
    return (f"cannot write {where}: {reason}. {finished} runs of this shard are finished and "
            "kept (records are written atomically, none is half-written); fix the cause and "
            "rerun the same command to resume.")


def _silence_lightning() -> None:
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ttn.sweep",
        description="Train the runs of a sweep file; re-running resumes.",
    )
    parser.add_argument(
        "--config", required=True, help="sweep YAML, e.g. configs/sweeps/paper.yaml"
    )
    parser.add_argument("--shard", default="0/1", help="k/n: train every n-th run from the k-th")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs only")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        shard = parse_shard(args.shard)
        if args.dry_run:  # run_sweep checks the sizes itself
            check_sizes(config)
    except SweepConfigError as e:
        parser.exit(2, f"error: {e}\n")
    if args.dry_run:
        try:
            _print_plan(config, shard)
        except BrokenPipeError:  # `--dry-run | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    _silence_lightning()
    try:
        counts = run_sweep(config, shard)
    except SweepConfigError as e:
        parser.exit(2, f"error: {e}\n")
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # disk full, permission denied, read-only file system ...
        parser.exit(1, f"error: {write_failure(e, config, shard)}\n")
    print(f"shard {shard[0]}/{shard[1]}: {counts['trained']} trained, "
          f"{counts['finished_before']} finished before, {counts['held']} held by other workers, "
          f"{counts['total']} in total")
