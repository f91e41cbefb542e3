"""The paper's protocol (Sections 3.4-3.5): train every configuration, size and run of a sweep.

``python -m lightning_ttn.sweep --config configs/sweeps/paper.yaml [--shard k/n] [--threads N]
[--dry-run]`` trains the runs of ``lightning_ttn.sweep_config.plan_runs`` (run index outermost)
and writes one JSON file per finished run into ``<output_dir>/runs/``. Re-running the same
command skips finished runs; ``--shard k/n`` trains every n-th run from the k-th, so workers on
several machines (e.g. a SLURM array) share one sweep over a shared directory. Each run is
claimed with a non-blocking file lock, so concurrent workers never train the same run, and a
worker that dies releases its lock (the OS drops it) so its run is redone by the next one.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import platform
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch
from filelock import FileLock, Timeout
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tqdm import tqdm

import lightning_ttn
from lightning_ttn import data as video_mnist
from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.models import LeNet5
from lightning_ttn.module import (
    DEFAULT_LR_FACTOR,
    DEFAULT_LR_PATIENCE,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_MOMENTUM,
    MONITOR,
    VideoClassifier,
)
from lightning_ttn.sweep_config import (
    RESUMABLE_KEYS,
    RunSpec,
    SweepConfig,
    SweepConfigError,
    candidate_dict,
    config_differences,
    dump_config,
    load_config,
    parse_config,
    plan_runs,
    shard_runs,
)

TrainFn = Callable[[RunSpec, SweepConfig], dict[str, Any]]
DataModuleFactory = Callable[[RunSpec, SweepConfig], LightningDataModule]
# Lightning's hints that do not apply to tiny, single-process sweep runs.
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\).*",  # torch 2.13 deprecation inside Lightning 2.6
)


# ----------------------------------------------------------------------------- one run
class BestValidationWeights(Callback):
    """Records ``val/acc`` after every validation and keeps a CPU copy of the best weights.

    Replaces checkpoint files: the sweep tests the best-validation weights right after ``fit``.
    The first of equal accuracies wins (the earliest epoch).

    Attributes:
        history: ``(epoch, val_acc)`` pairs; ``epoch`` counts completed training epochs.
        best_epoch: Epoch of the best validation accuracy (``None`` before any validation).
        best_val_acc: The best validation accuracy.
        best_state: CPU copy of the module's ``state_dict`` at ``best_epoch``.
    """

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_val_acc = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        accuracy = float(trainer.callback_metrics[MONITOR])
        epoch = trainer.current_epoch + 1
        self.history.append((epoch, accuracy))
        if accuracy > self.best_val_acc:
            self.best_epoch, self.best_val_acc = epoch, accuracy
            state = pl_module.state_dict()
            self.best_state = {k: v.detach().cpu().clone() for k, v in state.items()}


def video_mnist_datamodule(spec: RunSpec, config: SweepConfig) -> LightningDataModule:
    """The Video-MNIST data of a run: ``spec.train_videos`` clips drawn with ``subset_seed=r``."""
    return video_mnist.VideoMNISTDataModule(
        data_dir=config.data_dir,
        source=config.source,
        train_videos=spec.train_videos,
        val_videos=config.val_videos,
        test_videos=config.test_videos,
        subset_seed=spec.run,
        batch_size=spec.batch_size,
        num_workers=config.num_workers,
        render_seed=config.render_seed,
        mnist_dir=config.mnist_dir,
    )


def _trainer(spec: RunSpec, config: SweepConfig, best: BestValidationWeights) -> Trainer:
    logger: TensorBoardLogger | bool = False
    if config.tensorboard:
        logger = TensorBoardLogger(
            save_dir=str(Path(config.output_dir) / "tensorboard"),
            name="",
            version=spec.run_id,
            default_hp_metric=False,
        )
    return Trainer(
        max_epochs=config.epochs,
        check_val_every_n_epoch=config.val_every_n_epochs,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        callbacks=[best],
        accelerator=config.accelerator,
        devices=config.devices,
        deterministic=config.deterministic,
    )


def train_one(
    spec: RunSpec,
    config: SweepConfig,
    make_datamodule: DataModuleFactory = video_mnist_datamodule,
) -> dict[str, Any]:
    """Trains one run and tests its best-validation weights.

    The weights are initialized right after ``seed_everything(spec.init_seed)``; the training
    videos depend on the run index only, so run r of every model sees the same videos.

    Args:
        spec: The run.
        config: The sweep (epochs, validation interval, data and trainer settings).
        make_datamodule: Builds the run's data module (tests pass a fake one).

    Returns:
        ``val_acc_history`` (``[epoch, acc]`` pairs), ``best_epoch``, ``best_val_acc``,
        ``test_acc`` (of the best-validation weights), ``num_parameters`` and ``data_source``.
    """
    datamodule = make_datamodule(spec, config)
    pytorch_lightning.seed_everything(spec.init_seed, workers=True, verbose=False)
    model = LeNet5(channels=spec.candidate.channels, conv=spec.candidate.conv)
    optimizer = functools.partial(
        torch.optim.SGD, lr=spec.candidate.lr, momentum=DEFAULT_MOMENTUM
    )
    module = VideoClassifier(model, optimizer=optimizer)
    best = BestValidationWeights()
    trainer = _trainer(spec, config, best)
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule)
        module.load_state_dict(best.best_state)
        test_metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {
        "val_acc_history": [list(pair) for pair in best.history],
        "best_epoch": best.best_epoch,
        "best_val_acc": best.best_val_acc,
        "test_acc": float(test_metrics["test/acc"]),
        "num_parameters": module.num_parameters,
        # What source="auto" resolved to ("mnist" or "embedded"), where the data module says.
        "data_source": getattr(datamodule, "source_name", None),
    }


# ----------------------------------------------------------------------------- result files
def runs_dir(config: SweepConfig) -> Path:
    """Directory of the result, lock and temporary files of the runs."""
    return Path(config.output_dir) / "runs"


def result_path(config: SweepConfig, spec: RunSpec) -> Path:
    """The JSON file of a finished run."""
    return runs_dir(config) / f"{spec.run_id}.json"


def _remove_stale_temp_files(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


@functools.cache
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _provenance() -> dict[str, Any]:
    return {
        # CPU results depend on the thread count (reduction order inside conv3d).
        "torch_threads": torch.get_num_threads(),
        # The recipe constants of VideoClassifier that the sweep file does not set.
        "recipe": {
            "momentum": DEFAULT_MOMENTUM,
            "max_grad_norm": DEFAULT_MAX_GRAD_NORM,
            "plateau_factor": DEFAULT_LR_FACTOR,
            "plateau_patience_validations": DEFAULT_LR_PATIENCE,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__,
            "lightning_ttn": lightning_ttn.__version__,
        },
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
    }


def run_record(
    spec: RunSpec, config: SweepConfig, metrics: dict[str, Any], wall_time_s: float
) -> dict[str, Any]:
    """The content of a run's JSON file: what was trained, the metrics and the provenance."""
    settings = {
        k: v
        for k, v in config.to_dict().items()
        if k not in RESUMABLE_KEYS and k not in ("families", "sizes")
    }
    return {
        "run_id": spec.run_id,
        "family": spec.family,
        "candidate": candidate_dict(spec.candidate),
        "train_videos": spec.train_videos,
        "run": spec.run,
        "subset_seed": spec.run,
        "init_seed": spec.init_seed,
        "batch_size": spec.batch_size,
        "settings": settings,
        **metrics,
        "wall_time_s": wall_time_s,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **_provenance(),
    }


def claim_and_train(
    spec: RunSpec, config: SweepConfig, train_fn: TrainFn
) -> tuple[str, dict | None]:
    """Trains a run unless it is finished or another worker holds it.

    Returns:
        ``("finished", None)``, ``("held", None)`` or ``("trained", record)``.
    """
    path = result_path(config, spec)
    if path.exists():
        return "finished", None
    lock = FileLock(str(path.with_suffix(".lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return "held", None
    try:
        if path.exists():  # finished by another worker between the check and the claim
            return "finished", None
        _remove_stale_temp_files(path)  # left by a worker killed while writing this run
        start = time.perf_counter()
        metrics = train_fn(spec, config)
        record = run_record(spec, config, metrics, time.perf_counter() - start)
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")
        return "trained", record
    finally:
        lock.release()


# ----------------------------------------------------------------------------- the sweep
def resolve_source(config: SweepConfig) -> SweepConfig:
    """The config with ``source: auto`` replaced by what it finds now (``mnist`` or ``embedded``).

    Resolved once per worker, and saved in sweep.json, so that every run of a sweep uses the
    same digits: a worker that would resolve differently (MNIST appeared or became unreachable)
    stops at the resume check instead of mixing sources. The split sizes are re-checked against
    the resolved source (e.g. 5,000 training videos need full MNIST).

    Raises:
        SweepConfigError: the sizes do not fit the resolved source.
    """
    if config.source != "auto":
        return config
    resolved = video_mnist.load_digits("auto", config.data_dir, config.mnist_dir).name
    return parse_config({**config.to_dict(), "source": resolved})


def prepare_output_dir(config: SweepConfig) -> None:
    """Creates the output directory and saves the resolved config as sweep.yaml/sweep.json.

    Raises:
        SweepConfigError: the directory holds a sweep whose run-defining settings differ.
    """
    output = Path(config.output_dir)
    runs_dir(config).mkdir(parents=True, exist_ok=True)
    # Workers starting together must not both pass the check and write different configs.
    with FileLock(str(output / "sweep.lock")):
        _check_and_save_config(config, output)


def _check_and_save_config(config: SweepConfig, output: Path) -> None:
    saved_path = output / "sweep.json"
    if saved_path.exists():
        saved = parse_config(json.loads(saved_path.read_text()))
        differences = config_differences(saved, config)
        if differences:
            raise SweepConfigError(
                f"{output} holds results of a sweep with different {', '.join(differences)} "
                f"(see {saved_path}); only {', '.join(RESUMABLE_KEYS)} may change on resume. "
                "Use the same settings or another output_dir."
            )
    yaml_text, json_text = dump_config(config)
    write_text_atomic(output / "sweep.yaml", yaml_text)
    write_text_atomic(saved_path, json_text)


def _summary_line(record: dict[str, Any]) -> str:
    return (
        f"{record['run_id']}: best val acc {record.get('best_val_acc', math.nan):.4f} "
        f"(epoch {record.get('best_epoch')}), test acc {record.get('test_acc', math.nan):.4f}, "
        f"{record['wall_time_s']:.1f} s"
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
        train_fn: Trains a run and returns its metrics (tests pass a fake).
        show_progress: Show a tqdm bar over the shard's runs (finished ones included).

    Returns:
        Counts of the shard's runs: ``total``, ``finished_before``, ``trained`` and ``held``
        (skipped because another worker was training them).
    """
    config = resolve_source(config)
    specs = shard_runs(plan_runs(config), *shard)
    prepare_output_dir(config)
    finished_before = sum(result_path(config, s).exists() for s in specs)
    counts = {"total": len(specs), "finished_before": finished_before, "trained": 0, "held": 0}
    with tqdm(
        total=len(specs), initial=finished_before, unit="run", disable=not show_progress
    ) as bar:
        for spec in specs:
            status, record = claim_and_train(spec, config, train_fn)
            if status == "trained":
                counts["trained"] += 1
                bar.update()
                bar.write(_summary_line(record))
            elif status == "held":
                counts["held"] += 1
    return counts


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
    pending = [s for s in specs if not result_path(config, s).exists()]
    print(f"sweep: {len(all_runs)} runs into {config.output_dir}/runs")
    print(f"shard {shard[0]}/{shard[1]}: {len(specs)} runs, {len(specs) - len(pending)} finished, "
          f"{len(pending)} to train")
    for spec in pending[:10]:
        print(f"  {spec.run_id} (channels {spec.candidate.channels}, lr {spec.candidate.lr}, "
              f"batch {spec.batch_size}, init seed {spec.init_seed})")
    if len(pending) > 10:
        print(f"  ... and {len(pending) - 10} more")


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
    except SweepConfigError as e:
        parser.exit(2, f"error: {e}\n")
    if args.dry_run:
        _print_plan(config, shard)
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
    print(f"shard {shard[0]}/{shard[1]}: {counts['trained']} trained, "
          f"{counts['finished_before']} finished before, {counts['held']} held by other workers, "
          f"{counts['total']} in total")


if __name__ == "__main__":
    main()
