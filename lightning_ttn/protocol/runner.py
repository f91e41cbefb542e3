"""The sweep runner: train every configuration, size and run of a sweep file, resumably.

``python -m lightning_ttn.sweep --config configs/sweeps/paper.yaml [--shard k/n] [--threads N]
[--dry-run]`` trains the runs of :func:`lightning_ttn.protocol.schema.plan_runs` (run index
outermost) and writes one record per finished run into ``<output_dir>/runs/``. Each run goes
through the same path as ``train.py fit``: its config is written as ``<run_id>.yaml``, parsed
by the same LightningCLI and trained by :func:`lightning_ttn.training.run.fit_and_test`; the
record's ``replay`` field is the ``train.py fit`` command that retrains it. Re-running the same
command skips finished runs; ``--shard k/n`` trains every n-th run from the k-th, so workers on
several machines (e.g. a SLURM array) share one sweep over a shared directory. Each run is
claimed with a non-blocking file lock, so concurrent workers never train the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
import yaml
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
    plan_runs,
    shard_runs,
)
from lightning_ttn.protocol.stacking import stack_groups, train_stacked_specs
from lightning_ttn.training.cli import VideoCLI
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord
from lightning_ttn.training.run import fit_and_test
from lightning_ttn.training.stacked import auto_stack

TrainFn = Callable[[RunSpec, SweepConfig], RunRecord]
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
    family = spec.model
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


def _sweep_overrides(spec: RunSpec, config: SweepConfig) -> list[str]:
    """What a sweep run does differently from its replay: no checkpoint files, no progress
    bar, TensorBoard only if the sweep asks for it."""
    logger: Any = False
    if config.tensorboard:
        logger = {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": f"{config.output_dir}/tensorboard", "name": "",
                          "version": spec.run_id, "default_hp_metric": False},
        }
    return [
        "--trainer.logger", json.dumps(logger),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--checkpoint.save_top_k", "0",
        "--checkpoint.save_last", "false",
    ]


def train_one(spec: RunSpec, config: SweepConfig) -> RunRecord:
    """Trains one run through the ``train.py fit`` path and returns its record.

    The run's config is written beside its record first, then parsed by the same LightningCLI
    (with the sweep's overrides: no checkpoints, quiet) and trained by ``fit_and_test``.
    """
    path = store.replay_config_path(config.output_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(run_config(spec, config), sort_keys=False))
    cli = VideoCLI(
        VideoClassifier, VideoMNISTDataModule,
        args=["--config", str(path), *_sweep_overrides(spec, config)],
        run=False, save_config_callback=None, auto_configure_optimizers=False,
    )
    record = fit_and_test(cli.trainer, cli.model, cli.datamodule, init_seed=spec.init_seed,
                          verbose=False)
    return with_identity(record, spec, config)


def with_identity(record: RunRecord, spec: RunSpec, config: SweepConfig) -> RunRecord:
    """The record with the sweep's identity of its run: id, family, candidate, settings and
    the replay command (whose config is written beside the record if it is not there yet)."""
    path = store.replay_config_path(config.output_dir, spec)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(run_config(spec, config), sort_keys=False))
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


def train_stack(specs: list[RunSpec], config: SweepConfig, device: torch.device
                ) -> list[RunRecord]:
    """Trains runs of one candidate and size as one stacked model (one run: ``train_one``)."""
    if len(specs) == 1:
        return [train_one(specs[0], config)]
    records = train_stacked_specs(specs, config, device)
    return [
        with_identity(dataclasses.replace(record, stack_size=len(specs)), spec, config)
        for record, spec in zip(records, specs, strict=True)
    ]


def claim_and_train_stack(specs: list[RunSpec], config: SweepConfig, device: torch.device
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
        records = train_stack(claimed, config, device)
        for spec, record in zip(claimed, records, strict=True):
            store.write_record(config.output_dir, spec, record)
        return records, held


def claim_and_train(spec: RunSpec, config: SweepConfig, train_fn: TrainFn
                    ) -> tuple[str, RunRecord | None]:
    """Trains a run unless it is finished or another worker holds it.

    Returns:
        ``("finished", None)``, ``("held", None)`` or ``("trained", record)``.
    """
    if store.is_finished(config.output_dir, spec):
        return "finished", None
    with store.claim(config.output_dir, spec) as claimed:
        if not claimed:
            finished = store.is_finished(config.output_dir, spec)
            return ("finished" if finished else "held"), None
        record = train_fn(spec, config)
        store.write_record(config.output_dir, spec, record)
        return "trained", record


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
    train_fn: TrainFn = train_one,
    show_progress: bool = True,
) -> dict[str, int]:
    """Trains the unfinished runs of one shard, one after the other.

    Args:
        config: The sweep.
        shard: ``(k, n)``: train runs ``i`` of the ordered run list with ``i % n == k``.
        train_fn: Trains a run and returns its record (tests pass a fake).
        show_progress: Show a tqdm bar over the shard's runs (finished ones included).

    Returns:
        Counts of the shard's runs: ``total``, ``finished_before``, ``trained`` and ``held``
        (skipped because another worker was training them).
    """
    check_sizes(config)
    config = resolve_source(config)
    specs = shard_runs(plan_runs(config), *shard)
    store.prepare_output_dir(config, check_sizes)
    for moved in store.set_aside_unreadable(config.output_dir, specs):
        print(f"warning: unreadable run record moved to {moved}; the run is trained again",
              file=sys.stderr)
    finished_before = sum(store.is_finished(config.output_dir, s) for s in specs)
    counts = {"total": len(specs), "finished_before": finished_before, "trained": 0, "held": 0}
    device = _device(config)
    stack = _stack_size(config, device, specs)
    with tqdm(total=len(specs), initial=finished_before, unit="run",
              disable=not show_progress) as bar, warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        if stack > 1 and train_fn is train_one:
            pending = [s for s in specs if not store.is_finished(config.output_dir, s)]
            for group in stack_groups(pending, stack):
                records, held = claim_and_train_stack(group, config, device)
                counts["trained"] += len(records)
                counts["held"] += held
                bar.update(len(records))
                for record in records:
                    bar.write(_summary_line(record))
            return counts
        for spec in specs:
            status, record = claim_and_train(spec, config, train_fn)
            if status == "trained":
                counts["trained"] += 1
                bar.update()
                bar.write(_summary_line(record))
            elif status == "held":
                counts["held"] += 1
    return counts


def _device(config: SweepConfig) -> torch.device:
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _stack_size(config: SweepConfig, device: torch.device, specs: list[RunSpec]) -> int:
    """``stack`` of the config; ``auto``: 1 on CPU, on CUDA what fits (runs of a group)."""
    if config.stack != "auto":
        return int(config.stack)
    if device.type != "cuda" or not specs or config.tensorboard:
        return 1
    largest = max(len(g) for g in stack_groups(specs, len(specs)))
    first = specs[0]
    return auto_stack(device, largest, first.candidate.channels, first.model.conv,
                      first.batch_size)


# ----------------------------------------------------------------------------- command line
def parse_shard(text: str) -> tuple[int, int]:
    """Parses ``"k/n"`` into ``(k, n)`` with ``0 <= k < n``.

    Raises:
        SweepConfigError: not of that form.
    """
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SweepConfigError(f"--shard must be k/n (e.g. 0/4), got {text!r}")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or index >= count:
        raise SweepConfigError(f"--shard k/n needs n >= 1 and 0 <= k < n, got {text!r}")
    return index, count


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
