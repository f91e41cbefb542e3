"""Stacked multi-run training: ``R`` runs of one candidate and size trained as one model, by
the same Lightning ``Trainer`` loop as a single run.

The paper's protocol is 600 small runs (30 per configuration). One LeNet-5 leaves a GPU mostly
idle, so the runs of one candidate and training-set size (which differ only in their run index:
training subset, shuffle order and initial weights) are trained together:

* :class:`StackedLeNet5` keeps the ``R`` member ``LeNet5`` modules as they are (each member's
  parameters are its own tensors) and runs them in one pass: each convolution is one grouped
  ``F.conv3d`` over the members' concatenated weights, each ``Linear`` one ``torch.baddbmm`` over
  their stacked weights. Grouped convolutions, not ``torch.func.vmap``: ``vmap(grad)`` over 8
  LeNets was 11x slower than a loop on CPU and ``F.affine_grid`` has no batching rule.
* :class:`StackedClassifier` is the ``LightningModule`` of a stack: ``R`` ``VideoClassifier``
  runs, each built as for a run of its own, trained with manual optimization (one optimizer,
  clipping and LR schedule per member) and evaluated in one pass per batch;
  :class:`StackedDataModule` serves each member its own training batches (its data module's
  loader: its subset and shuffle order) and the validation and test clips they share;
  :class:`StackLogger` writes each member's metrics into its own logger.
* ``lightning_ttn.training.run.fit_and_test_stack`` fits and tests a stack and returns one
  record per member; the sweep trains every run that way (a single run is a stack of one).

On CPU a stack is slower than the runs one by one (a grouped stack of 8 LeNet-5-3D ran at
0.6-0.8x the speed of a loop on 2 cores): :func:`auto_stack` returns 1 there. The point is the
GPU, where one LeNet-5 run is launch-bound. ``benchmarks/stacked.py`` measures both.

Equivalence (``tests/test_stacked.py``, CPU, float64): a stacked member ends with the weights of
the same run trained alone by ``train.py fit`` to 1e-10 and the same accuracies, epochs and
learning rates; losses agree to rounding. In float32, and on a GPU, the grouped kernels sum in
another order than the single-run ones, so a stacked run is the same run up to rounding (like a
rerun on another device), not bit for bit: on the CPU a float32 sweep in stacks of 4 gives the
accuracies, epochs and rates of stacks of 1, its losses and Θ drift to about 1e-6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_ttn.conv2plus1d import middle_channels
from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.functional import build_tt_kernel, similarity_theta
from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import LeNet5
from lightning_ttn.training.diagnostics import kernel_health, transform_drift
from lightning_ttn.training.module import VideoClassifier, tensorboard_hparams

# Clip geometry of Video-MNIST (LeNet5's first Linear assumes it).
_FRAMES, _SIZE = 30, 28


# ----------------------------------------------------------------------------- the model
class StackedLeNet5(nn.Module):
    """``R`` LeNet-5 models of one architecture evaluated in one pass.

    The members stay ordinary ``LeNet5`` modules (``self.members``) and own their parameters;
    the forward pass concatenates their weights on the fly, so an optimizer of member ``r``'s
    parameters trains member ``r`` and ``members[r](x)`` is still that member alone.

    Args:
        members: The models, all with the same conv type, transform, widths and classes.

    Raises:
        ValueError: no members, a member is not a ``LeNet5``, or the architectures differ.
    """

    def __init__(self, members: Sequence[LeNet5]) -> None:
        super().__init__()
        if not members:
            raise ValueError("StackedLeNet5 needs at least one member")
        for i, member in enumerate(members):
            if not isinstance(member, LeNet5):
                raise ValueError(f"member {i} is a {type(member).__name__}, not a LeNet5")
            # repr lists every layer's configuration (widths, kernel, padding, transform).
            if repr(member) != repr(members[0]):
                raise ValueError(
                    f"members must share one architecture: member 0 is {members[0].name}, "
                    f"member {i} is {member.name} (or their layers differ)"
                )
        for layer in members[0].modules():
            if getattr(layer, "padding_mode", "zeros") != "zeros":
                raise ValueError(f"only zero padding is stacked, got {layer}")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, clips: Tensor) -> Tensor:
        """Args:
            clips: Member ``r``'s clips at ``[:, r]``: ``(B, R, 1, T, H, W)`` or
                ``(B, R, T, H, W)``; or ``(B, 1, T, H, W)``: the same clips for every member.

        Returns:
            Logits ``(R, B, num_classes)``; ``[r]`` is ``members[r]`` on its clips.
        """
        size = len(self.members)
        if clips.dim() == 6:
            if clips.shape[1:3] != (size, 1):
                raise ValueError(f"expected (B, {size}, 1, T, H, W), got {tuple(clips.shape)}")
            clips = clips.flatten(1, 2)  # (B, R, T, H, W)
        if clips.dim() != 5 or clips.shape[1] not in (1, size):
            raise ValueError(
                f"expected clips (B, {size}, 1, T, H, W), (B, {size}, T, H, W) or (B, 1, T, H, W),"
                f" got {tuple(clips.shape)}"
            )
        shared = clips.shape[1] == 1  # every member sees the same clips (R = 1: either way)
        x, _ = self._stacked([m.features for m in self.members], clips, shared)  # (B, R*c2, 5,5,5)
        x, _ = self._stacked([m.classifier for m in self.members], x, False)
        return x  # (R, B, num_classes)

    def _stacked(self, layers: list[nn.Module], x: Tensor, shared: bool) -> tuple[Tensor, bool]:
        """Runs the members' corresponding ``layers`` on the stacked activation ``x``.

        Before the classifier ``x`` is ``(B, R*C, ...)``, member ``r`` owning channels
        ``r*C .. (r+1)*C - 1`` (``shared``: ``(B, C, ...)``, the same for all members); from the
        ``Flatten`` on it is ``(R, B, features)``. Returns the new activation and ``shared``.
        """
        first = layers[0]
        if isinstance(first, nn.Sequential):  # features, classifier, Conv2Plus1d
            for i in range(len(first)):
                x, shared = self._stacked([layer[i] for layer in layers], x, shared)
            return x, shared
        if isinstance(first, (nn.Conv3d, TTConv3d)):
            return _grouped_conv3d(layers, x, shared), False
        if isinstance(first, nn.Flatten):
            if shared:
                x = x.repeat(1, len(layers), *([1] * (x.dim() - 2)))
            return x.reshape(x.shape[0], len(layers), -1).transpose(0, 1), False  # (R, B, F)
        if isinstance(first, nn.Linear):
            weight = torch.stack([layer.weight for layer in layers])  # (R, out, in)
            if first.bias is None:
                return torch.bmm(x, weight.transpose(1, 2)), False
            bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)  # (R, 1, out)
            return torch.baddbmm(bias, x, weight.transpose(1, 2)), False  # (R, B, out)
        if isinstance(first, (nn.ReLU, nn.MaxPool3d)):
            return first(x), shared  # per channel: the stack is R models' channels side by side
        raise ValueError(f"StackedLeNet5 cannot stack a {type(first).__name__}")


def _stacked_tt_kernel(layers: Sequence[TTConv3d]) -> Tensor:
    """The members' 3DTT kernels concatenated, ``(R*O, I/groups, T, kH, kW)``.

    Built in one :func:`build_tt_kernel` call (output channels are the batch of the kernel
    builder), with Θ formed as :meth:`TTConv3d.theta` forms it, from the concatenated
    parameters: on a GPU, ``R`` separate builds would be ``R`` times the kernel launches.
    """
    first = layers[0]
    base = torch.cat([layer.base for layer in layers])  # (R*O, I/groups, kH, kW)
    depth = first.kernel_size[0]
    if first.transform == "none":
        return base.unsqueeze(2).expand(-1, -1, depth, -1, -1)
    if first.transform == "similarity":
        translation = torch.cat([layer.translation for layer in layers])  # (R*O, n, 2)
        theta = similarity_theta(
            torch.cat([layer.scale for layer in layers]),
            torch.cat([layer.rotation for layer in layers]),
            translation[..., 0],
            translation[..., 1],
        )  # (R*O, n, 2, 3)
    else:
        theta = torch.cat([layer.affine for layer in layers])  # (R*O, n, 2, 3)
    if first.shared_transform:
        theta = theta.expand(-1, depth - 1, -1, -1)  # (R*O, T-1, 2, 3)
    return build_tt_kernel(base, theta)


def _grouped_conv3d(layers: Sequence[nn.Module], x: Tensor, shared: bool) -> Tensor:
    """The members' ``nn.Conv3d`` / ``TTConv3d`` as one grouped convolution.

    Args:
        layers: Member ``r``'s layer at ``[r]``, ``C_in -> C_out`` with ``g`` groups each.
        x: ``(B, R*C_in, D, H, W)``, or ``(B, C_in, D, H, W)`` if ``shared``.

    Returns:
        ``(B, R*C_out, D', H', W')``; channels ``r*C_out ..`` are member ``r``'s output.
    """
    first = layers[0]
    if isinstance(first, TTConv3d):
        weight = _stacked_tt_kernel(layers)  # (R*C_out, C_in/g, kT, kH, kW)
    else:
        weight = torch.cat([layer.weight for layer in layers])
    bias = None if first.bias is None else torch.cat([layer.bias for layer in layers])
    groups = len(layers) * first.groups
    if shared:
        if first.groups == 1:  # every member reads all input channels: a plain convolution
            groups = 1
        else:
            x = x.repeat(1, len(layers), 1, 1, 1)  # (B, R*C_in, D, H, W)
    return F.conv3d(x, weight, bias, first.stride, first.padding, first.dilation, groups)


# ----------------------------------------------------------------------------- the data
class StackedDataModule(LightningDataModule):
    """The data of ``R`` runs that differ only in their ``subset_seed``: each member's own
    training loader (its subset, its shuffle order), combined so that a training batch is the
    members' batches ``[(x_0, y_0), ..., (x_{R-1}, y_{R-1})]``, and the validation and test
    loaders they share.

    Args:
        datamodules: The runs' data modules, in member order (one training loader each).

    Raises:
        ValueError: none, or their settings differ in more than ``subset_seed``.
    """

    def __init__(self, datamodules: Sequence[VideoMNISTDataModule]) -> None:
        super().__init__()
        if not datamodules:
            raise ValueError("StackedDataModule needs at least one data module")
        shared = [{k: v for k, v in dm.hparams.items() if k != "subset_seed"}
                  for dm in datamodules]
        for r, settings in enumerate(shared):
            if settings != shared[0]:
                differs = sorted(k for k in settings if settings[k] != shared[0].get(k))
                raise ValueError(
                    f"the runs of a stack differ only in subset_seed: data module {r} differs "
                    f"from data module 0 in {', '.join(differs)}"
                )
        self.members = list(datamodules)

    def prepare_data(self) -> None:
        """Loads the digits and finds (or renders) the cache entry once for every member, and
        once for the fit and the test that follows it."""
        first = self.members[0]
        if first.digits is None or first.cache_entry is None:
            first.prepare_data()
        for dm in self.members[1:]:
            dm.digits, dm.cache_entry = first.digits, first.cache_entry

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError("a stack trains on one device; use devices: 1")
        for dm in self.members:
            dm.setup(stage)

    def train_dataloader(self) -> CombinedLoader:
        # One iterator per member and epoch: each draws its order from its own generator, as
        # the Trainer draws a single run's; the Trainer takes len() batches of each.
        return CombinedLoader([dm.train_dataloader() for dm in self.members], mode="min_size")

    def val_dataloader(self) -> DataLoader:
        return self.members[0].val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.members[0].test_dataloader()


# ----------------------------------------------------------------------------- the module
@dataclass
class _Tally:
    """Per-member sums over one epoch's batches: ``loss`` (mean loss times batch size),
    ``correct`` predictions and the ``count`` of clips (equal for all members)."""

    loss: Tensor | float = 0.0
    correct: Tensor | int = 0
    count: int = 0

    def add(self, losses: Tensor, correct: Tensor | None, size: int) -> None:
        # Tensor sums: no device synchronization per step.
        self.loss = self.loss + losses.detach() * size
        if correct is not None:
            self.correct = self.correct + correct
        self.count += size

    def mean_loss(self) -> list[float]:
        """As ``VideoClassifier``: ``float(sum) / count`` in Python."""
        return [total / self.count for total in torch.as_tensor(self.loss).tolist()]

    def accuracy(self) -> list[float]:
        """``MulticlassAccuracy(average="micro")``'s value: ``correct / count`` in float32."""
        correct = torch.as_tensor(self.correct).cpu().float()
        return (correct / torch.tensor(float(self.count))).tolist()


def _training(run: VideoClassifier, epoch: int) -> bool:
    """Whether the member still trains in ``epoch``: a diverged member's record ends with the
    epoch it diverged in, as a single run's does (it stops there)."""
    return run.history.diverged_epoch is None or epoch <= run.history.diverged_epoch


class StackedClassifier(LightningModule):
    """``R`` runs of one model and recipe trained as one :class:`StackedLeNet5` by a ``Trainer``.

    Member ``r`` is ``runs[r]``, a :class:`VideoClassifier` built as for a run of its own; it
    is trained as that run alone would be (``fit_and_test``), on batch ``r`` of the
    :class:`StackedDataModule`: its own optimizer and LR schedule (its
    ``configure_optimizers``), its gradient norm clipped on its own (``clip_gradients``), its
    schedule stepped after each validation with its own ``val/acc``, its histories and tested
    weights in its :class:`~lightning_ttn.training.history.FitHistory`. The loss is the sum
    of the members' mean cross-entropies, so one backward gives each member exactly its own
    gradient. A validation or test batch is evaluated by every member in one pass.

    Everything is logged per member, as ``<name>/<metric>`` (``<name>/val/acc``,
    ``<name>/train/loss``, ``<name>/lr``, ``<name>/drift/<layer>/<key>`` ...); a
    :class:`StackLogger` writes each member's metrics into its own TensorBoard run.

    Args:
        runs: The members, built and initialized, all with one model architecture and recipe.
        names: The members' names in the logs (a sweep passes run ids); default ``"0"``, ...

    Raises:
        ValueError: no runs, their models or recipes differ, or ``names`` does not fit.
    """

    def __init__(self, runs: Sequence[VideoClassifier], names: Sequence[str] | None = None
                 ) -> None:
        super().__init__()
        if not runs:
            raise ValueError("a stack needs at least one run")
        if any(run.recipe != runs[0].recipe for run in runs):
            raise ValueError("the runs of a stack must share one recipe")
        names = [str(r) for r in range(len(runs))] if names is None else list(names)
        if len(names) != len(runs) or len(set(names)) != len(names):
            raise ValueError(f"{len(runs)} runs need as many distinct names, got {names}")
        self.automatic_optimization = False
        self.stack = StackedLeNet5([run.model for run in runs])
        # Not registered as submodules: their networks are the stack's members.
        self.runs = list(runs)
        self.names = names
        self.recipe = runs[0].recipe
        self.test_results: list[tuple[float, float]] = []  # (test/acc, test/loss) per member
        self._train, self._eval = _Tally(), _Tally()  # validation runs inside a training epoch

    def __len__(self) -> int:
        return len(self.runs)

    def forward(self, clips: Tensor) -> Tensor:
        """Args:
            clips: As :meth:`StackedLeNet5.forward` takes them, in [0, 1].

        Returns:
            Logits ``(R, B, num_classes)``.
        """
        if self.recipe.input_scaling == "raw":
            clips = clips * 255.0  # the data module serves [0, 1]
        return self.stack(clips)

    def configure_optimizers(self) -> tuple[list[Any], list[Any]]:
        configs = [run.configure_optimizers() for run in self.runs]
        schedulers = [c["lr_scheduler"]["scheduler"] for c in configs if "lr_scheduler" in c]
        return [c["optimizer"] for c in configs], schedulers

    def _optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def _log_members(self, key: str, values: Sequence[float]) -> None:
        for name, value in zip(self.names, values, strict=True):
            self.log(f"{name}/{key}", value, on_step=False, on_epoch=True)

    def on_fit_start(self) -> None:
        if isinstance(self.logger, StackLogger):
            for name, run, dm in zip(self.names, self.runs, self._datamodules(), strict=True):
                self.logger.member(name).log_hyperparams(
                    tensorboard_hparams(run, dm), {"hp/best_val_acc": 0.0, "hp/test_acc": 0.0})

    def _datamodules(self) -> list[Any]:
        datamodule = self.trainer.datamodule
        members = getattr(datamodule, "members", None)
        return list(members) if members is not None else [datamodule] * len(self)

    def on_train_epoch_start(self) -> None:
        self._train = _Tally()
        epoch = self.current_epoch + 1
        rates = [optimizer.param_groups[0]["lr"] for optimizer in self._optimizers()]
        for run, lr in zip(self.runs, rates, strict=True):
            if _training(run, epoch):
                run.history.lr_history.append([epoch, lr])
        self._log_members("lr", rates)

    def training_step(self, batch: Sequence[tuple[Tensor, Tensor]], batch_idx: int) -> None:
        clips = torch.stack([x for x, _ in batch], dim=1)  # (B, R, 1, T, H, W)
        labels = torch.stack([y for _, y in batch])  # (R, B)
        logits = self(clips)  # (R, B, C)
        losses = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)
        optimizers = self._optimizers()
        # A member whose loss is NaN or infinite has diverged: it stops there (no step, its
        # weights stay finite) while the others train on; the fit stops when all have. One
        # (R,) check per step, the synchronization a single run's check costs.
        finite = torch.isfinite(losses.detach()).tolist()
        for run, ok in zip(self.runs, finite, strict=True):
            if not ok and run.history.diverged_epoch is None:
                run.history.diverged_epoch = self.current_epoch + 1
        active = [run.history.diverged_epoch is None for run in self.runs]
        for optimizer in optimizers:
            optimizer.zero_grad()
        # Member r's parameters get d(losses[r]) only; diverged members' terms are left out.
        self.manual_backward(torch.where(torch.tensor(active, device=losses.device), losses,
                                         torch.zeros_like(losses)).sum())
        for optimizer, train in zip(optimizers, active, strict=True):
            if not train:
                continue
            if self.recipe.max_grad_norm is not None:  # Lightning's "norm" clipping, per member
                self.clip_gradients(optimizer, self.recipe.max_grad_norm, "norm")
            optimizer.step()
        self._train.add(losses, None, labels.shape[1])
        if not any(active):
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if not self._train.count:
            return
        epoch, means = self.current_epoch + 1, self._train.mean_loss()
        for run, mean in zip(self.runs, means, strict=True):
            if _training(run, epoch):
                run.history.train_loss_history.append([epoch, mean])
        self._log_members("train/loss", means)
        if self.logger is not None:  # Θ's drift and kernel health, as in the record
            for name, run in zip(self.names, self.runs, strict=True):
                for drift in transform_drift(run.model):
                    for key, value in vars(drift).items():
                        if key != "layer":
                            self.log(f"{name}/drift/{drift.layer}/{key}", float(value),
                                     on_step=False, on_epoch=True)
                for health in kernel_health(run.model):  # what its kernels compute
                    for t, ratio in enumerate(health.energy_profile, start=1):
                        self.log(f"{name}/health/{health.layer}/energy_t{t}_over_t0", ratio,
                                 on_step=False, on_epoch=True)
                    self.log(f"{name}/health/{health.layer}/collapsed_fraction",
                             health.collapsed_fraction, on_step=False, on_epoch=True)

    def _evaluate(self, batch: tuple[Tensor, Tensor]) -> None:
        clips, labels = batch  # (B, 1, T, H, W), (B,): the same clips for every member
        logits = self(clips)  # (R, B, C)
        targets = labels.expand(len(self), -1)  # (R, B)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
        self._eval.add(losses, (logits.argmax(dim=2) == labels).sum(dim=1), labels.shape[0])

    def on_validation_epoch_start(self) -> None:
        self._eval = _Tally()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._eval.count:
            return
        accuracies = self._eval.accuracy()
        self._log_members("val/acc", accuracies)
        self._log_members("val/loss", self._eval.mean_loss())
        if self.trainer.state.fn != "fit":
            return
        epoch = self.current_epoch + 1
        schedulers = self._schedulers()
        for r, (run, value) in enumerate(zip(self.runs, accuracies, strict=True)):
            if not _training(run, epoch):
                continue
            run.history.add_validation(epoch, value, run)
            if schedulers:  # as Lightning steps a single run's: after validation, on val/acc
                schedulers[r].step(value)
        self._log_members("hp/best_val_acc", [run.history.best_val_acc for run in self.runs])

    def on_test_epoch_start(self) -> None:
        self._eval = _Tally()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        accuracies, losses = self._eval.accuracy(), self._eval.mean_loss()
        self.test_results = list(zip(accuracies, losses, strict=True))
        self._log_members("test/acc", accuracies)
        self._log_members("test/loss", losses)
        self._log_members("hp/test_acc", accuracies)

    def load_tested_weights(self) -> list[int | None]:
        """Loads each member's tested weights (:meth:`VideoClassifier.load_tested_weights`);
        returns their epochs."""
        return [run.load_tested_weights() for run in self.runs]


class StackLogger(Logger):
    """Writes each member's metrics of a :class:`StackedClassifier` into the member's own
    logger: ``<name>/<metric>`` goes to ``loggers[name]`` as ``<metric>``.

    A sweep gives every member a ``TensorBoardLogger`` whose version is the run id, so a stacked
    run's logs are where, and named as, a run trained alone would leave them.

    Args:
        loggers: The members' loggers by member name.
    """

    def __init__(self, loggers: dict[str, Logger]) -> None:
        super().__init__()
        if not loggers:
            raise ValueError("StackLogger needs at least one member logger")
        self._loggers = dict(loggers)

    def member(self, name: str) -> Logger:
        """Member ``name``'s logger."""
        return self._loggers[name]

    @property
    def name(self) -> str:
        return "stack"

    @property
    def version(self) -> str:
        return ",".join(self._loggers)

    @property
    def save_dir(self) -> str | None:
        return next(iter(self._loggers.values())).save_dir

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        for logger in self._loggers.values():
            logger.log_hyperparams(params, *args, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        routed: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            name, _, metric = key.partition("/")
            if name in self._loggers and metric:
                routed.setdefault(name, {})[metric] = value
        for name, member_metrics in routed.items():
            self._loggers[name].log_metrics(member_metrics, step)

    def save(self) -> None:
        for logger in self._loggers.values():
            logger.save()

    def finalize(self, status: str) -> None:
        for logger in self._loggers.values():
            logger.finalize(status)

# ----------------------------------------------------------------------------- stack sizes
def member_bytes(channels: tuple[int, int], conv: str, batch_size: int) -> int:
    """A generous estimate of the GPU memory one member adds to a float32 training step.

    Per clip: the activations autograd keeps (first conv's output and ReLU, pooled maps and
    their int64 indices, second conv's; for ``conv2plus1d`` the middle maps too) and the
    input (the member's batch and its copy in the stacked batch, counted as 13 floats per
    position, as many as the earlier uint8 staging needed); doubled for the allocator and
    cuDNN workspaces.
    """
    c1, c2 = channels
    frames = _FRAMES * _SIZE * _SIZE  # 23,520 positions of the first conv's output
    pooled1, out2, pooled2 = frames // 8, 11 * 10 * 10, 5 * 5 * 5
    floats = 2 * c1 * frames + 3 * c1 * pooled1 + 2 * c2 * out2 + 3 * c2 * pooled2 + 13 * frames
    if conv == "conv2plus1d":
        floats += 2 * middle_channels(1, c1, 5) * frames
        floats += 2 * middle_channels(c1, c2, 5) * (_FRAMES // 2) * 10 * 10
    return 2 * 4 * batch_size * floats


def auto_stack(
    device: str | torch.device,
    runs_in_group: int,
    channels: tuple[int, int] = (18, 28),
    conv: str = "conv3d",
    batch_size: int = 20,
    memory_fraction: float = 0.5,
) -> int:
    """How many runs of a group to stack: 1 on CPU (a stack is slower there); on CUDA as many
    as ``memory_fraction`` of the free memory holds (:func:`member_bytes`), at most
    ``runs_in_group``.

    At the paper's widths a member needs well under 1 GB, so on a current GPU this is the whole
    group (30 runs).
    """
    device = torch.device(device)
    if device.type != "cuda" or runs_in_group <= 1:
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    fits = int(free * memory_fraction) // member_bytes(channels, conv, batch_size)
    return max(1, min(runs_in_group, fits))


__all__ = [
    "StackLogger", "StackedClassifier", "StackedDataModule", "StackedLeNet5", "auto_stack",
    "member_bytes",
]
