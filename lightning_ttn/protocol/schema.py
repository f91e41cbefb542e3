"""The sweep file: its schema, its validation and the ordered list of runs it describes.

Lightning-free, so that the report loads fast. A sweep file is YAML (or JSON); only
``families`` and ``sizes`` are required. Its top level holds the sweep's settings and any
field of :class:`lightning_ttn.training.recipe.Recipe` (the sweep-wide recipe); each candidate
names a width and may override any recipe field::

    output_dir: runs/sweeps/paper      # results, sweep.yaml/sweep.json, locks, tensorboard/
    source: auto                       # auto | embedded | mnist | download
    data_dir: data
    mnist_dir: null                    # MNIST IDX files (default: <data_dir>/mnist)
    render_seed: 0
    motion: table1                     # table1 | authors (lightning_ttn.data.MOTIONS)
    verify: false                      # check the cache's sha256 before every run
    num_workers: 0
    sizes: [10, 20, 30]                # training videos, positive multiples of 10
    runs: 30                           # runs per configuration; run r uses subset_seed=r
    first_run: 0                       # run indices first_run .. first_run + runs - 1
    seed_offset: 0                     # run r initializes its weights with seed_offset + r
    val_videos: null                   # validation clips per run (null: the whole split)
    test_videos: null                  # test clips per run (null: the whole split)
    accelerator: auto
    devices: 1
    deterministic: warn                # true | false | warn (passed to the Trainer)
    tensorboard: false                 # one TensorBoard log per run under <output_dir>/tensorboard
    stack: auto                        # runs trained as one stacked model: auto | 1, 2, ...
    epochs: 100                        # recipe fields: any of Recipe's, e.g. lr, epochs,
    val_every_n_epochs: 1              #   val_every_n_epochs, batch_size_overrides, ...
    families:                          # lightning_ttn.models.FAMILIES
      3D:
        - {name: w18-28, channels: [18, 28]}
      3DTTN:
        - {name: w4-14, channels: [4, 14], lr: 0.01, transform_lr_scale: 10, sizes: [500]}
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_ttn.data import MOTIONS, SOURCES
from lightning_ttn.models import FAMILIES, Family
from lightning_ttn.training.recipe import FIELDS as RECIPE_FIELDS
from lightning_ttn.training.recipe import Recipe

NUM_CLASSES = 10
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CANDIDATE_KEYS = ("name", "channels", "conv", "sizes")


class SweepConfigError(ValueError):
    """The sweep file is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Candidate:
    """One configuration of a family that model selection chooses among.

    Attributes:
        name: Identifier, unique within its family (letters, digits, ``_ . -``).
        channels: Output channels ``(c1, c2)`` of LeNet-5's two convolutions.
        conv: The family's conv type (``lightning_ttn.models.FAMILIES``).
        sizes: Training-set sizes this candidate is trained at; ``None``: all of the sweep's.
        recipe: Recipe fields this candidate overrides, as ``(field, value)`` pairs.
    """

    name: str
    channels: tuple[int, int]
    conv: str
    sizes: tuple[int, ...] | None = None
    recipe: tuple[tuple[str, Any], ...] = ()

    def applies_to(self, train_videos: int) -> bool:
        """Whether the candidate is trained with ``train_videos`` videos."""
        return self.sizes is None or train_videos in self.sizes


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep file (see the module docstring for the meaning of each field)."""

    families: dict[str, tuple[Candidate, ...]]
    sizes: tuple[int, ...]
    recipe: Recipe = field(default_factory=Recipe)
    output_dir: str = "runs/sweep"
    source: str = "auto"
    data_dir: str = "data"
    mnist_dir: str | None = None
    render_seed: int = 0
    motion: str = "table1"
    verify: bool = False
    num_workers: int = 0
    runs: int = 30
    first_run: int = 0
    seed_offset: int = 0
    val_videos: int | None = None
    test_videos: int | None = None
    accelerator: str = "auto"
    devices: int = 1
    # grid_sample (TTConv3d) has no deterministic CUDA backward: "warn" keeps GPU runs alive
    # and is deterministic on CPU.
    deterministic: bool | str = "warn"
    tensorboard: bool = False
    # Runs of one candidate and size trained together as one stacked model
    # (lightning_ttn.training.stacked): "auto" is 1 on CPU (slower there) and on CUDA as many
    # as fit in memory, capped by the group.
    stack: int | str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON types, the recipe's fields at the top level;
        ``parse_config`` of it gives it back."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.pop("recipe")
        families = data.pop("families")
        data["sizes"] = list(self.sizes)
        data.update(self.recipe.to_dict())
        data["families"] = {
            family: [candidate_dict(c) for c in candidates]
            for family, candidates in families.items()
        }
        return data


@dataclass(frozen=True)
class RunSpec:
    """One training run: a candidate of a family, a training-set size and a run index.

    Attributes:
        family: A name of ``lightning_ttn.models.FAMILIES``.
        candidate: The configuration trained.
        train_videos: Training-set size.
        run: Run index ``r``; the training videos are drawn with ``subset_seed=r``.
        init_seed: Weight-initialization seed (``seed_offset + r``).
        recipe: The sweep's recipe with the candidate's overrides.
    """

    family: str
    candidate: Candidate
    train_videos: int
    run: int
    init_seed: int
    recipe: Recipe

    @property
    def run_id(self) -> str:
        """File-name stem of the run's result, e.g. ``3DTTN_n0010_w18-28_r003``."""
        return f"{self.family}_n{self.train_videos:04d}_{self.candidate.name}_r{self.run:03d}"

    @property
    def batch_size(self) -> int:
        """Training batch size (the recipe's rule at this size)."""
        return self.recipe.batch_size_for(self.train_videos)

    @property
    def family_spec(self) -> Family:
        """What the family name stands for: its conv type and transform."""
        return FAMILIES[self.family]


def candidate_dict(candidate: Candidate) -> dict[str, Any]:
    """A candidate as plain YAML/JSON types, as in the sweep file."""
    return {
        "name": candidate.name,
        "channels": list(candidate.channels),
        "conv": candidate.conv,
        "sizes": None if candidate.sizes is None else list(candidate.sizes),
        **dict(candidate.recipe),
    }


def load_config(path: str | Path) -> SweepConfig:
    """Reads and validates a sweep file (YAML or JSON).

    Raises:
        SweepConfigError: the file is unreadable or invalid (the message names the file, the
            key and the value).
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SweepConfigError(f"{path}: cannot read the sweep file: {e}") from e
    try:
        return parse_config(raw)
    except SweepConfigError as e:
        raise SweepConfigError(f"{path}: {e}") from e


def _recipe(base: Recipe, changes: dict[str, Any], where: str) -> Recipe:
    try:
        return base.replace(**changes)
    except (TypeError, ValueError) as e:
        raise SweepConfigError(f"{where}: {e}") from e


def parse_config(raw: Any) -> SweepConfig:
    """Validates a sweep mapping and returns it as a ``SweepConfig``.

    Raises:
        SweepConfigError: a key is unknown or missing, or a value is out of range.
    """
    if not isinstance(raw, dict):
        raise SweepConfigError(f"the sweep file must be a mapping, got {type(raw).__name__}")
    settings = [f.name for f in dataclasses.fields(SweepConfig) if f.name != "recipe"]
    _reject_unknown(raw, settings + list(RECIPE_FIELDS), "top level")
    for key in ("families", "sizes"):
        if key not in raw:
            raise SweepConfigError(f"missing required key {key!r}")
    values = {key: raw[key] for key in settings if key in raw}
    values["recipe"] = _recipe(Recipe(), {k: raw[k] for k in RECIPE_FIELDS if k in raw},
                               "top level")
    values["sizes"] = _size_list(raw["sizes"], "sizes", unique=True)
    values["families"] = _families(raw["families"], values["sizes"], values["recipe"])
    config = SweepConfig(**values)
    _check_scalars(config)
    return config


def _reject_unknown(mapping: dict, allowed: list[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise SweepConfigError(
            f"unknown key(s) {unknown} in {where}; allowed: {', '.join(allowed)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise SweepConfigError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def _size(value: Any, key: str) -> int:
    if not _is_int(value) or value < NUM_CLASSES or value % NUM_CLASSES:
        raise SweepConfigError(
            f"{key}: training-set size must be a positive multiple of {NUM_CLASSES} "
            f"(class-balanced), got {value!r}"
        )
    return value


def _size_list(value: Any, key: str, unique: bool) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise SweepConfigError(f"{key} must be a non-empty list of sizes, got {value!r}")
    sizes = tuple(_size(v, f"{key}[{i}]") for i, v in enumerate(value))
    if unique and len(set(sizes)) != len(sizes):
        raise SweepConfigError(f"{key} lists a size twice: {list(sizes)}")
    return sizes


def _families(
    value: Any, sizes: tuple[int, ...], recipe: Recipe
) -> dict[str, tuple[Candidate, ...]]:
    if not isinstance(value, dict) or not value:
        raise SweepConfigError(
            f"families must map family names ({', '.join(FAMILIES)}) to lists of "
            f"candidates, got {value!r}"
        )
    _reject_unknown(value, tuple(FAMILIES), "families")
    families = {}
    for family, candidates in value.items():
        families[family] = _candidates(family, candidates, recipe)
        for candidate in families[family]:
            extra = sorted(set(candidate.sizes or ()) - set(sizes))
            if extra:
                raise SweepConfigError(
                    f"families.{family}: candidate {candidate.name!r} lists sizes {extra} that "
                    f"are not in the sweep's sizes {list(sizes)}"
                )
        for size in sizes:
            if not any(c.applies_to(size) for c in families[family]):
                raise SweepConfigError(f"families.{family}: no candidate applies to size {size}")
    return families


def _candidates(family: str, value: Any, recipe: Recipe) -> tuple[Candidate, ...]:
    where = f"families.{family}"
    if not isinstance(value, list) or not value:
        raise SweepConfigError(f"{where} must be a non-empty list of candidates, got {value!r}")
    candidates = tuple(
        _candidate(family, item, f"{where}[{i}]", recipe) for i, item in enumerate(value)
    )
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise SweepConfigError(f"{where}: candidate names must be unique, got {names}")
    return candidates


def _candidate(family: str, item: Any, where: str, recipe: Recipe) -> Candidate:
    allowed = _CANDIDATE_KEYS + RECIPE_FIELDS
    if not isinstance(item, dict):
        raise SweepConfigError(f"{where} must be a mapping with keys among {allowed}")
    _reject_unknown(item, allowed, where)
    for key in ("name", "channels"):
        if key not in item:
            raise SweepConfigError(f"{where}: missing required key {key!r}")
    name, channels = item["name"], item["channels"]
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise SweepConfigError(
            f"{where}.name must be letters, digits, '_', '.' or '-' (a file-name part), "
            f"got {name!r}"
        )
    if not (isinstance(channels, list) and len(channels) == 2):
        raise SweepConfigError(f"{where}.channels must be two integers [c1, c2], got {channels!r}")
    channels = tuple(_positive_int(c, f"{where}.channels") for c in channels)
    conv = item.get("conv", FAMILIES[family].conv)
    if conv != FAMILIES[family].conv:
        raise SweepConfigError(
            f"{where}.conv: family {family} uses conv {FAMILIES[family].conv!r}, got {conv!r}"
        )
    overrides = {k: item[k] for k in RECIPE_FIELDS if k in item}
    _recipe(recipe, overrides, where)  # validates the overrides
    sizes = item.get("sizes")
    if sizes is not None:
        sizes = _size_list(sizes, f"{where}.sizes", unique=True)
    return Candidate(name=name, channels=channels, conv=conv, sizes=sizes,
                     recipe=tuple(overrides.items()))


def _check_scalars(config: SweepConfig) -> None:
    _positive_int(config.runs, "runs")
    if config.devices != 1:
        # DDP would re-run this command in every extra process, and each would claim its own
        # run and then average gradients with the others: parallelize runs, not a run.
        raise SweepConfigError(
            f"devices must be 1 (one device per run), got {config.devices!r}; to use several "
            "devices, start one worker per device with --shard k/n"
        )
    for key in ("first_run", "seed_offset", "render_seed", "num_workers"):
        value = getattr(config, key)
        if not _is_int(value) or value < 0:
            raise SweepConfigError(f"{key} must be an integer >= 0, got {value!r}")
    if config.source not in SOURCES:
        raise SweepConfigError(
            f"source must be one of {', '.join(SOURCES)}, got {config.source!r}"
        )
    if config.accelerator not in ACCELERATORS:
        raise SweepConfigError(
            f"accelerator must be one of {', '.join(ACCELERATORS)}, got {config.accelerator!r}"
        )
    if not (isinstance(config.deterministic, bool) or config.deterministic == "warn"):
        raise SweepConfigError(
            f"deterministic must be true, false or warn, got {config.deterministic!r}"
        )
    for key in ("output_dir", "data_dir"):
        if not isinstance(getattr(config, key), str) or not getattr(config, key):
            raise SweepConfigError(f"{key} must be a non-empty path, got {getattr(config, key)!r}")
    if config.mnist_dir is not None and not isinstance(config.mnist_dir, str):
        raise SweepConfigError(f"mnist_dir must be a path or null, got {config.mnist_dir!r}")
    for key in ("tensorboard", "verify"):
        if not isinstance(getattr(config, key), bool):
            raise SweepConfigError(f"{key} must be true or false, got {getattr(config, key)!r}")
    if not (config.stack == "auto" or (_is_int(config.stack) and config.stack >= 1)):
        raise SweepConfigError(f"stack must be auto or an integer >= 1, got {config.stack!r}")
    if config.motion not in MOTIONS:
        raise SweepConfigError(f"motion must be one of {', '.join(MOTIONS)}, got {config.motion!r}")
    for key in ("val_videos", "test_videos"):
        value = getattr(config, key)
        if value is not None and (not _is_int(value) or value < 1 or value % NUM_CLASSES):
            raise SweepConfigError(
                f"{key} must be null (the whole split) or a positive multiple of {NUM_CLASSES} "
                f"(class-balanced), got {value!r}"
            )


def check_split_sizes(config: SweepConfig, split_sizes: tuple[int, int, int]) -> None:
    """Checks the sweep's sizes against the ``(train, val, test)`` clips of its digit source.

    Raises:
        SweepConfigError: a size exceeds its split.
    """
    train, val, test = split_sizes
    sizes = set(config.sizes)
    for candidates in config.families.values():
        sizes.update(s for c in candidates for s in (c.sizes or ()))
    for size in sorted(sizes):
        if size > train:
            raise SweepConfigError(
                f"size {size}: source {config.source!r} has {train} training videos "
                f"({train // NUM_CLASSES} per class); allowed sizes are multiples of "
                f"{NUM_CLASSES} up to {train}"
            )
    for key, available in (("val_videos", val), ("test_videos", test)):
        value = getattr(config, key)
        if value is not None and value > available:
            raise SweepConfigError(
                f"{key}={value} exceeds the {available} clips of the split of source "
                f"{config.source!r}"
            )


def plan_runs(config: SweepConfig) -> list[RunSpec]:
    """All runs of the sweep, run index outermost.

    So a sweep stopped part-way has about the same number of runs at every size and
    configuration; the order is deterministic, which ``--shard`` relies on.
    """
    return [
        RunSpec(
            family=family,
            candidate=candidate,
            train_videos=size,
            run=run,
            init_seed=config.seed_offset + run,
            recipe=config.recipe.replace(**dict(candidate.recipe)),
        )
        for run in range(config.first_run, config.first_run + config.runs)
        for size in config.sizes
        for family, candidates in config.families.items()
        for candidate in candidates
        if candidate.applies_to(size)
    ]


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


def shard_runs(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The runs of shard ``index`` of ``count`` (as :func:`parse_shard` gives them): every
    ``count``-th run from ``index``."""
    return runs[index::count]
