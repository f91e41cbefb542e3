"""``RunRecord``: what one training run was and what it measured, as saved in its JSON file.

Written by the run entry (``lightning_ttn.training.run``) for ``train.py fit`` and every sweep
run, read back by the report through the same type. Lightning-free on purpose: the report and
the statistics import this module without importing Lightning.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TransformDrift:
    """How far one TT layer's learned transforms moved from the identity.

    Per transition of each output channel: ``|rotation|`` in degrees, ``|scale - 1|`` and the
    length of the translation in kernel pixels (Θ's translation is in normalized units, one unit
    being ``kW/2`` pixels in x and ``kH/2`` in y).

    Attributes:
        layer: Module name, e.g. ``features.0``.
        mean_abs_rotation_deg: Mean ``|rotation|`` (degrees per transition).
        max_abs_rotation_deg: Largest ``|rotation|``.
        mean_abs_scale_change: Mean ``|scale - 1|``.
        max_abs_scale_change: Largest ``|scale - 1|``.
        mean_translation_px: Mean translation length (pixels per transition).
        max_translation_px: Largest translation length.
    """

    layer: str
    mean_abs_rotation_deg: float
    max_abs_rotation_deg: float
    mean_abs_scale_change: float
    max_abs_scale_change: float
    mean_translation_px: float
    max_translation_px: float


@dataclass(frozen=True)
class KernelHealth:
    """What one TT layer's built kernel computes over time (is Θ still a motion?).

    Each transition resamples the previous slice with zeros outside it, so a large scale or a
    shift past the kernel's edge empties every later slice, and zero padding then gives Θ no
    gradient to come back: the kernel has collapsed in time. Slice energy is the norm
    ``||W[o, :, t]||`` over input channels and pixels, compared with K0's (``t = 0``).

    Attributes:
        layer: Module name, e.g. ``features.0``.
        energy_profile: ``||W_t|| / ||W_0||`` for ``t = 1 .. T-1``, mean over output channels
            (1.0 everywhere: K0 repeated, time-constant).
        collapsed_fraction: Fraction of (output channel, transition) pairs whose slice energy
            is below :data:`COLLAPSE_THRESHOLD` of K0's.
    """

    layer: str
    energy_profile: list[float]
    collapsed_fraction: float


# A slice with less than this fraction of K0's energy counts as collapsed.
COLLAPSE_THRESHOLD = 0.1


@dataclass(frozen=True)
class RunRecord:
    """One run's JSON file. Field names are stable: old files stay readable.

    Identity of a sweep run (``None`` for a plain ``train.py fit``):

    Attributes:
        run_id: File-name stem, e.g. ``3DTTN_n0010_w18-28_r003``.
        family: Model family (``lightning_ttn.models.FAMILIES``).
        candidate: The sweep candidate as in the sweep file (name, model and recipe fields).
        run: Run index ``r`` of the sweep.
        settings: The sweep's run-defining settings.
        replay: Arguments after ``python``, run from the repository root, that retrain this run
            exactly (``["train.py", "fit", "--config", <the run's config>]``).

    What was trained:

    Attributes:
        model_name: e.g. ``LeNet-5-3DTTN (18, 28)``.
        num_parameters: Trainable parameters.
        train_videos: Training videos (``None``: the whole split).
        subset_seed: Seed of the training subset and shuffle order.
        init_seed: Seed of the weight initialization (``seed_everything``).
        batch_size: Training batch size.
        data_source: ``mnist`` or ``embedded``.
        recipe: The run's :class:`lightning_ttn.training.recipe.Recipe` as a mapping.

    What it measured:

    Attributes:
        val_acc_history: ``[epoch, val_acc]`` after each validation (epochs completed).
        train_loss_history: ``[epoch, mean training loss]`` of every epoch.
        lr_history: ``[epoch, learning rate]`` in effect during every epoch.
        best_epoch: Epoch of the best validation accuracy (the first of ties).
        best_val_acc: The best validation accuracy.
        tested_epoch: Epoch whose weights were tested (``recipe.tested_weights``).
        test_acc: Test accuracy of the tested weights.
        test_loss: Test loss of the tested weights.
        transforms: Θ drift of every TT layer after training (empty without TT layers).
        kernel_health: Temporal energy profile of every TT layer's built kernel after training.
        diverged: The training loss became NaN or infinite; training stopped there.
        diverged_epoch: The epoch (1-based) in which it did (``None``: it did not).

    Provenance:

    Attributes:
        wall_time_s: Seconds from the start of fit to the end of the test.
        finished_at: UTC time, ISO format.
        torch_threads: ``torch.get_num_threads()`` (CPU results depend on it).
        device: Where it ran: ``cpu`` or the GPU's name, e.g. ``cuda: NVIDIA H200``.
        stack_size: Runs trained together as one stacked model (1: alone). A stacked run's
            replay retrains it alone, equal up to floating-point rounding.
        versions: Python, torch, Lightning and lightning_ttn versions.
        git_commit: Commit of the code, if in a git checkout.
        hostname: Machine name.
    """

    best_val_acc: float
    test_acc: float
    num_parameters: int
    best_epoch: int | None = None
    val_acc_history: list[list[float]] = field(default_factory=list)
    run_id: str | None = None
    family: str | None = None
    candidate: dict[str, Any] | None = None
    train_videos: int | None = None
    run: int | None = None
    subset_seed: int | None = None
    init_seed: int | None = None
    batch_size: int | None = None
    settings: dict[str, Any] | None = None
    replay: list[str] | None = None
    model_name: str | None = None
    data_source: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train_loss_history: list[list[float]] = field(default_factory=list)
    lr_history: list[list[float]] = field(default_factory=list)
    tested_epoch: int | None = None
    test_loss: float | None = None
    transforms: list[TransformDrift] = field(default_factory=list)
    kernel_health: list[KernelHealth] = field(default_factory=list)
    diverged: bool = False
    diverged_epoch: int | None = None
    wall_time_s: float | None = None
    finished_at: str | None = None
    torch_threads: int | None = None
    device: str | None = None
    stack_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    hostname: str | None = None

    @property
    def candidate_name(self) -> str:
        """Name of the sweep candidate (``model_name`` outside a sweep)."""
        if self.candidate is not None:
            return self.candidate["name"]
        return self.model_name or "?"

    @property
    def failed(self) -> bool:
        """Diverged, by its flag or (records written before the flag) a non-finite loss."""
        losses = [loss for _, loss in self.train_loss_history]
        return self.diverged or not all(map(math.isfinite, losses))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, in the order of the fields."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Strict JSON (readable by jq or JavaScript): a non-finite number becomes ``null``."""
        return json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Reads a record written by this or an earlier version (missing fields: defaults).

        Raises:
            ValueError: not a mapping, a required field is missing or a field is unknown.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a run record must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run record field(s) {unknown}")
        values = dict(data)
        values["transforms"] = [TransformDrift(**t) for t in values.get("transforms", [])]
        values["kernel_health"] = [KernelHealth(**h) for h in values.get("kernel_health", [])]
        # Strict JSON writes a non-finite number as null; in memory it is NaN again.
        for key in ("best_val_acc", "test_acc"):
            if key in values and values[key] is None:
                values[key] = math.nan
        for key in ("train_loss_history", "val_acc_history", "lr_history"):
            values[key] = [[e, math.nan if v is None else v] for e, v in values.get(key, [])]
        try:
            return cls(**values)
        except TypeError as e:  # a required field is missing
            raise ValueError(f"incomplete run record: {e}") from e

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """Reads a run JSON file (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def versions() -> dict[str, str]:
    """Versions of the software a result depends on (read without importing Lightning)."""
    packages = {"torch": "torch", "pytorch_lightning": "pytorch-lightning",
                "lightning_ttn": "lightning_ttn"}
    found = {"python": platform.python_version()}
    for key, distribution in packages.items():
        try:
            found[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[key] = "unknown"
    return found


@functools.cache
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout this package runs from, if any."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """``finished_at``, ``versions``, ``git_commit`` and ``hostname`` for a record."""
    return {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
    }
