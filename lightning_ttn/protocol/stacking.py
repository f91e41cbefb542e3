"""Sweep runs trained as stacks (:mod:`lightning_ttn.training.stacked`): which runs go together,
their members and data, built exactly as ``train_one`` builds a single run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning_fabric.utilities.seed import seed_everything

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.models import LeNet5
from lightning_ttn.protocol.schema import NUM_CLASSES, RunSpec, SweepConfig
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord
from lightning_ttn.training.stacked import StackData, set_determinism, stack_data, train_stacked


def build_member(spec: RunSpec) -> VideoClassifier:
    """A sweep run's module with its initial weights, as ``train_one`` builds it:
    ``seed_everything(init_seed)``, then ``LeNet5``, then ``VideoClassifier`` (``k0_init``)."""
    family = spec.model
    seed_everything(spec.init_seed, workers=True, verbose=False)
    kwargs = {"transform": family.transform} if family.conv == "ttconv3d" else {}
    model = LeNet5(tuple(spec.candidate.channels), family.conv, **kwargs)
    return VideoClassifier(model, spec.recipe, num_classes=NUM_CLASSES)


def check_stack(specs: Sequence[RunSpec]) -> None:
    """Checks that ``specs`` can be one stack: one family, candidate, size and recipe, distinct
    run indices.

    Raises:
        ValueError: they cannot (the message names what differs).
    """
    if not specs:
        raise ValueError("a stack needs at least one run")
    first = specs[0]
    for spec in specs[1:]:
        differs = [
            what for what, a, b in (
                ("family", spec.family, first.family),
                ("candidate", spec.candidate, first.candidate),
                ("training-set size", spec.train_videos, first.train_videos),
                ("recipe", spec.recipe, first.recipe),
            ) if a != b
        ]
        if differs:
            raise ValueError(
                f"a stack trains runs of one candidate and size (only the run index differs): "
                f"{spec.run_id} differs from {first.run_id} in {', '.join(differs)}"
            )
    runs = [spec.run for spec in specs]
    if len(set(runs)) != len(runs):
        raise ValueError(f"a stack must not train a run twice, got run indices {runs}")


def prepare_stack(
    specs: Sequence[RunSpec], config: SweepConfig
) -> tuple[list[VideoClassifier], StackData, str | None]:
    """The members (:func:`build_member`), their clips and the digit source of a stack of sweep
    runs, as ``train_one``'s data module gives each run its data: ``subset_seed = run``, the
    sweep's source, cache and evaluation subsets (the cache is looked up once for all members).

    Raises:
        ValueError: the runs are not one candidate and size (:func:`check_stack`).
    """
    check_stack(specs)
    datamodules = [
        VideoMNISTDataModule(
            data_dir=config.data_dir, source=config.source, train_videos=spec.train_videos,
            val_videos=config.val_videos, test_videos=config.test_videos, subset_seed=spec.run,
            batch_size=spec.batch_size, num_workers=0, render_seed=config.render_seed,
            mnist_dir=config.mnist_dir, motion=config.motion, verify=config.verify,
        )
        for spec in specs
    ]
    datamodules[0].prepare_data()  # loads the digits, renders the cache entry if missing
    for dm in datamodules:
        dm.digits, dm.cache_entry = datamodules[0].digits, datamodules[0].cache_entry
        dm.setup()  # all splits
    modules = [build_member(spec) for spec in specs]
    return modules, stack_data(datamodules), datamodules[0].source_name


def train_stacked_specs(
    specs: Sequence[RunSpec],
    config: SweepConfig,
    device: str | torch.device,
    dtype: torch.dtype = torch.float32,
    timings: dict[str, float] | None = None,
) -> list[RunRecord]:
    """Trains sweep runs of one candidate and size as one stack; records in ``specs`` order.

    :func:`prepare_stack`, then :func:`train_stacked` after :func:`set_determinism` as the
    single run's ``Trainer`` sets it. The records lack the sweep identity
    (``run_id``, ``family``, ``candidate``, ``run``, ``settings``, ``replay``), which the sweep
    adds as for ``train_one``.

    Raises:
        ValueError: the runs are not one candidate and size (:func:`check_stack`).
    """
    modules, data, source = prepare_stack(specs, config)
    set_determinism(config.deterministic)
    return train_stacked(
        modules, data, [spec.run for spec in specs], init_seeds=[spec.init_seed for spec in specs],
        device=device, dtype=dtype, data_source=source, timings=timings,
    )


def stack_groups(specs: Sequence[RunSpec], stack: int) -> list[list[RunSpec]]:
    """Splits runs into stacks of at most ``stack`` runs of one family, candidate and size.

    The order of first appearance is kept: groups in the order their first run appears, runs
    in their order within a group.
    """
    if stack < 1:
        raise ValueError(f"stack must be >= 1, got {stack}")
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        key = (spec.family, spec.candidate.name, spec.train_videos)
        groups.setdefault(key, []).append(spec)
    return [g[i:i + stack] for g in groups.values() for i in range(0, len(g), stack)]
