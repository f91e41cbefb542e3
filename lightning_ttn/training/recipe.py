"""The training recipe: every training choice of a run in one typed record.

The defaults here are the project's recipe and are written nowhere else: the LightningModule,
the CLI (``--model.recipe.*``), the sweep (top-level keys and candidate overrides) and the
benchmarks all read them from :class:`Recipe`. Adding a training choice is one new field here
plus the code that applies it. Lightning-free, so the report can read recorded recipes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Optimizer = Literal["sgd"]
LRSchedule = Literal["plateau", "halve_every_10", "constant"]
TestedWeights = Literal["best_val", "last"]
InputScaling = Literal["unit", "raw"]
K0Init = Literal["fan_in", "normal"]
Conv3dStart = Literal["random", "time_constant"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd",),
    "lr_schedule": ("plateau", "halve_every_10", "constant"),
    "tested_weights": ("best_val", "last"),
    "input_scaling": ("unit", "raw"),
    "k0_init": ("fan_in", "normal"),
    "conv3d_start": ("random", "time_constant"),
}


def _small_data_batch_sizes() -> dict[int, int]:
    return {10: 10}


@dataclass(frozen=True)
class Recipe:
    """How one run is trained and which weights are tested.

    Args:
        optimizer: ``"sgd"``: SGD with ``momentum`` (cross-entropy, mean over the batch).
        lr: Learning rate. Ours; the paper's 1e-8 to 5e-9 belong to its raw 0-255 inputs and
            N(0, 1) ``K0`` (the authors' recipe, ``configs/recipes/authors.yaml``). With [0, 1]
            inputs 0.05 leaves PyTorch's small-output default init within about 10 steps, which
            matters at 10 videos (one step per epoch); 0.01 needed 30-40 steps.
        momentum: SGD momentum (the paper's 0.9).
        max_grad_norm: Clip the global gradient norm to this value; ``None``: no clipping. Ours:
            without it, SGD occasionally takes a step on the TT transforms large enough to
            scramble every kernel at once and training collapses to chance.
        transform_lr_scale: Multiplier of ``lr`` for the TT transform parameters (scale, rotation,
            translation or affine), in their own optimizer parameter group: the transforms
            barely leave the identity at the shared rate.
        lr_schedule: ``"plateau"`` (ours): multiply the rate by ``plateau_factor`` once more than
            ``plateau_patience`` validations in a row brought no better ``val/acc``
            (``ReduceLROnPlateau``). ``"halve_every_10"`` (what the authors' code intends,
            ``omg_emotion/main_file.py``): after epochs 1, 11, 21, ... halve the rate unless the
            validation accuracy is higher than at the previous check. ``"constant"``: no
            schedule; what the authors' code actually does, since its halved rate never reaches
            the optimizer (it is built once, before the epoch loop). The paper describes an
            exponential decay checked every 10th epoch.
        plateau_factor: Decay factor of the ``plateau`` rule.
        plateau_patience: Patience of the ``plateau`` rule, counted in validations.
        epochs: Training epochs.
        val_every_n_epochs: Validate every this many epochs; ``epochs`` must be a multiple.
        batch_size: Training clips per batch.
        batch_size_overrides: Training-set size -> batch size, taking precedence over
            ``batch_size`` (the paper: 10 at 10 videos, one clip per class).
        tested_weights: ``"best_val"`` (ours): the weights of the best validation accuracy
            (the first of ties); ``"last"`` (the authors' code): the last epoch's.
        input_scaling: ``"unit"``: clips in [0, 1]; ``"raw"``: 0-255 (the authors' code).
        k0_init: Initialization of the convolutions: ``"fan_in"`` (ours: ``TTConv3d``'s K0 from
            N(0, 1/(3 fan_in)), the variance of ``nn.Conv3d``'s default, which the plain convs
            keep) or ``"normal"`` (the authors' code, ``k0_init='normal'``: K0 and the weights
            and biases of every plain ``nn.Conv3d`` drawn from N(0, 1); the paper only says
            "Gaussian" for K0).
        conv3d_start: ``"random"``: every plain ``nn.Conv3d`` starts as initialized;
            ``"time_constant"`` (ours, a mechanism check): each of its temporal slices starts as
            slice 0, i.e. the kernel a ``TTConv3d`` has at Θ = identity (K0 repeated), and
            trains freely from there. ``TTConv3d`` layers are not touched.
    """

    optimizer: Optimizer = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    max_grad_norm: float | None = 1.0
    transform_lr_scale: float = 1.0
    lr_schedule: LRSchedule = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    epochs: int = 100
    val_every_n_epochs: int = 1
    batch_size: int = 20
    batch_size_overrides: dict[int, int] = field(default_factory=_small_data_batch_sizes)
    tested_weights: TestedWeights = "best_val"
    input_scaling: InputScaling = "unit"
    k0_init: K0Init = "fan_in"
    conv3d_start: Conv3dStart = "random"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"recipe.{name}={getattr(self, name)!r} is not one of {allowed}"
                )
        for name in ("lr", "transform_lr_scale", "plateau_factor"):
            _check_positive(name, getattr(self, name))
        if not 0 <= _number(self.momentum, "momentum") < 1:
            raise ValueError(f"recipe.momentum={self.momentum!r} must be in [0, 1)")
        if self.max_grad_norm is not None:
            _check_positive("max_grad_norm", self.max_grad_norm)
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"recipe.plateau_factor={self.plateau_factor!r} must be in (0, 1)")
        for name in ("plateau_patience", "epochs", "val_every_n_epochs", "batch_size"):
            _check_int(name, getattr(self, name), minimum=0 if name == "plateau_patience" else 1)
        if self.epochs % self.val_every_n_epochs:
            raise ValueError(
                f"recipe.epochs ({self.epochs}) must be a multiple of recipe.val_every_n_epochs "
                f"({self.val_every_n_epochs}), else the last epochs are trained but never "
                "validated"
            )
        if not isinstance(self.batch_size_overrides, dict):
            raise ValueError(
                "recipe.batch_size_overrides must map training-set sizes to batch sizes, got "
                f"{self.batch_size_overrides!r}"
            )
        # JSON turns integer keys into strings; accept their round trip.
        overrides = {_as_int_key(k): v for k, v in self.batch_size_overrides.items()}
        for key, value in overrides.items():
            _check_int(f"batch_size_overrides key {key!r}", key, minimum=1)
            _check_int(f"batch_size_overrides[{key}]", value, minimum=1)
        object.__setattr__(self, "batch_size_overrides", overrides)

    def batch_size_for(self, train_videos: int | None) -> int:
        """The batch size used with ``train_videos`` training videos."""
        return batch_size_for(self.batch_size, self.batch_size_overrides, train_videos)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types; ``Recipe(**recipe.to_dict())`` gives it back."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied (validated).

        Raises:
            ValueError: a change names no recipe field, or has a value out of range.
        """
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; allowed: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"recipe.{name}={value!r} must be a finite number")
    return float(value)


def _check_positive(name: str, value: Any) -> None:
    if not _number(value, name) > 0:
        raise ValueError(f"recipe.{name}={value!r} must be > 0")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"recipe.{name}={value!r} must be an integer >= {minimum}")


def batch_size_for(batch_size: int, overrides: dict | None, train_videos: int | None) -> int:
    """The batch size with ``train_videos`` training videos: its override, else ``batch_size``.

    Also the CLI's link into ``data.batch_size``, which sees the overrides before the recipe
    validates them (keys may still be YAML/JSON strings).
    """
    return {_as_int_key(k): v for k, v in (overrides or {}).items()}.get(train_videos, batch_size)


def _as_int_key(key: Any) -> Any:
    return int(key) if isinstance(key, str) and key.isdigit() else key
