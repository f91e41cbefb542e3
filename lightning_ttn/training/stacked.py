"""Stacked multi-run training: ``R`` runs of one candidate and size trained as one model.

The paper's protocol is 600 small runs (30 per configuration). One LeNet-5 leaves a GPU mostly
idle, so the runs of one candidate and training-set size (which differ only in their run index:
training subset, shuffle order and initial weights) are trained together:

* :class:`StackedLeNet5` keeps the ``R`` member ``LeNet5`` modules as they are (each member's
  parameters are its own tensors) and runs them in one pass: each convolution is one grouped
  ``F.conv3d`` over the members' concatenated weights, each ``Linear`` one ``torch.baddbmm`` over
  their stacked weights. Grouped convolutions, not ``torch.func.vmap``: ``vmap(grad)`` over 8
  LeNets was 11x slower than a loop on CPU and ``F.affine_grid`` has no batching rule.
* :func:`train_stacked` trains the members with a plain PyTorch loop that reproduces a single
  run of :class:`~lightning_ttn.training.module.VideoClassifier` under a Lightning ``Trainer``
  (``fit_and_test``) member by member: its own training subset and shuffle order, its own SGD
  (the module's ``configure_optimizers``), its own gradient-norm clipping, its own LR schedule
  stepped after each validation with its own ``val/acc``, its own best-validation weights. The
  loss is the sum of the members' mean cross-entropies, so one backward gives every member
  exactly its own gradient. Validation and test clips are shared: one pass evaluates everyone.
* :func:`train_stacked_specs` is what the sweep calls: sweep runs in, ``RunRecord``\\ s out.

On CPU a stack is slower than the runs one by one (a grouped stack of 8 LeNet-5-3D ran at
0.6-0.8x the speed of a loop on 2 cores): :func:`auto_stack` returns 1 there. The point is the
GPU, where one LeNet-5 run is launch-bound. ``benchmarks/stacked.py`` measures both.

Equivalence (``tests/test_stacked.py``, CPU, float64): a stacked member ends with the weights of
the same run trained alone through Lightning to 1e-10 and the same accuracies, epochs and
learning rates; losses agree to rounding. In float32, and on a GPU, the grouped kernels sum in
another order than the single-run ones, so a stacked run is the same run up to rounding (like a
rerun on another device), not bit for bit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_ttn.conv2plus1d import middle_channels
from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.functional import build_tt_kernel, similarity_theta
from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import LeNet5
from lightning_ttn.training.diagnostics import transform_drift
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord, provenance
from lightning_ttn.training.run import device_name

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
        x, _ = self._apply([m.features for m in self.members], clips, shared)  # (B, R*c2, 5,5,5)
        x, _ = self._apply([m.classifier for m in self.members], x, False)
        return x  # (R, B, num_classes)

    def _apply(self, layers: list[nn.Module], x: Tensor, shared: bool) -> tuple[Tensor, bool]:
        """Runs the members' corresponding ``layers`` on the stacked activation ``x``.

        Before the classifier ``x`` is ``(B, R*C, ...)``, member ``r`` owning channels
        ``r*C .. (r+1)*C - 1`` (``shared``: ``(B, C, ...)``, the same for all members); from the
        ``Flatten`` on it is ``(R, B, features)``. Returns the new activation and ``shared``.
        """
        first = layers[0]
        if isinstance(first, nn.Sequential):  # features, classifier, Conv2Plus1d
            for i in range(len(first)):
                x, shared = self._apply([layer[i] for layer in layers], x, shared)
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
@dataclass(frozen=True)
class StackData:
    """The clips a stack trains and is evaluated on, as uint8 tensors (moved to the device by
    :func:`train_stacked`).

    Attributes:
        train_clips: uint8 ``(N, T, H, W)``: every member's training clips (each clip once).
        train_labels: int64 ``(N,)``.
        member_rows: Per member, int64 ``(n,)``: item ``i`` of member ``r``'s training dataset
            (what ``VideoMNISTDataModule(subset_seed=r)``'s train loader indexes) is clip
            ``member_rows[r][i]`` of ``train_clips``. All members have the same ``n``.
        val_clips: uint8 ``(Nv, T, H, W)`` in the order the data module serves them.
        val_labels: int64 ``(Nv,)``.
        test_clips: uint8 ``(Nt, T, H, W)``.
        test_labels: int64 ``(Nt,)``.
    """

    train_clips: Tensor
    train_labels: Tensor
    member_rows: tuple[Tensor, ...]
    val_clips: Tensor
    val_labels: Tensor
    test_clips: Tensor
    test_labels: Tensor


def stack_data(datamodules: Sequence[VideoMNISTDataModule]) -> StackData:
    """Reads the members' clips from their set-up data modules (``setup()``: all splits).

    Raises:
        ValueError: the members' validation or test clips differ, or their training sets have
            different sizes.
    """
    def dataset(dm: VideoMNISTDataModule, split: str):  # VideoClipDataset
        if split not in dm.datasets:
            raise ValueError(f"the data modules must be set up for all splits, {split} is not")
        return dm.datasets[split]

    first = datamodules[0]
    for split in ("train", "val", "test"):
        rows = [dataset(dm, split).rows for dm in datamodules]
        if split == "train" and len({len(r) for r in rows}) != 1:
            sizes = sorted({len(r) for r in rows})
            raise ValueError(f"the members' training sets differ in size: {sizes}")
        if split != "train" and not all(np.array_equal(r, rows[0]) for r in rows):
            raise ValueError(f"the members' {split} clips differ; a stack shares them")
    train = [dataset(dm, "train") for dm in datamodules]
    union = np.unique(np.concatenate([d.rows for d in train]))  # positions in the train split
    member_rows = [np.searchsorted(union, d.rows) for d in train]  # positions in the union
    labels = np.empty(len(union), dtype=np.int64)
    for d, positions in zip(train, member_rows, strict=True):
        labels[positions] = d.labels
    videos = np.load(train[0].videos_path, mmap_mode="r")

    def clips(split: str) -> tuple[Tensor, Tensor]:
        d = dataset(first, split)
        array = np.load(d.videos_path, mmap_mode="r")
        return torch.from_numpy(np.asarray(array[d.rows])), torch.from_numpy(d.labels.copy())

    val_clips, val_labels = clips("val")
    test_clips, test_labels = clips("test")
    return StackData(
        train_clips=torch.from_numpy(np.asarray(videos[union])),  # (N, T, H, W)
        train_labels=torch.from_numpy(labels),
        member_rows=tuple(torch.from_numpy(rows) for rows in member_rows),
        val_clips=val_clips, val_labels=val_labels, test_clips=test_clips, test_labels=test_labels,
    )


def member_batches(num_videos: int, batch_size: int, subset_seed: int) -> DataLoader:
    """The dataset indices, batch by batch, that ``VideoMNISTDataModule.train_dataloader``
    serves a run with ``subset_seed`` (one iterator per epoch, as the ``Trainer`` takes them:
    see ``_zip_batches``).

    The same ``DataLoader`` arguments over ``range(num_videos)``: the same ``RandomSampler``
    draws from the same ``torch.Generator().manual_seed(subset_seed)`` (each epoch the loader's
    base seed, then the permutation), so the order is the single run's, whatever the torch
    version. This is the data module's order with ``num_workers=0`` (the sweep's default); with
    worker processes the data module keeps them across epochs (``persistent_workers``), which
    draws the base seed only once, so from the second epoch on its order differs from this one.
    """
    return DataLoader(
        range(num_videos),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(subset_seed),
        drop_last=False,
    )


# ----------------------------------------------------------------------------- training
def _check_members(modules: Sequence[VideoClassifier], data: StackData) -> None:
    if not modules:
        raise ValueError("a stack needs at least one member")
    if len(data.member_rows) != len(modules):
        raise ValueError(
            f"{len(modules)} members but training rows for {len(data.member_rows)}"
        )
    if any(m.recipe != modules[0].recipe for m in modules):
        raise ValueError("the members of a stack must share one recipe")
    names = {m.model_name for m in modules}
    if len(names) != 1:
        raise ValueError(f"the members of a stack must share one model, got {sorted(names)}")


def _zip_batches(loaders: Sequence[DataLoader]) -> Iterator[Tensor]:
    """The members' index batches of one epoch, step by step, ``(R, B)``.

    As the ``Trainer`` takes them: ``len(loader)`` batches from a new iterator, never asking it
    for its end. This matters: when the batch size divides the set, a ``for`` loop's final
    ``next`` would make the sampler draw once more from its generator (its trailing
    ``randperm``), changing the next epoch's order.
    """
    steps = {len(loader) for loader in loaders}
    if len(steps) != 1:
        raise ValueError(f"the members' training loaders differ in length: {sorted(steps)}")
    iterators = [iter(loader) for loader in loaders]
    for _ in range(steps.pop()):
        batches = [next(it) for it in iterators]
        if len({len(b) for b in batches}) != 1:
            raise ValueError("the members' training loaders must yield batches of equal sizes")
        yield torch.stack(batches)  # (R, B)


@torch.no_grad()
def _evaluate(
    stack: StackedLeNet5, clips: Tensor, labels: Tensor, to_input: Tensor, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Every member on the same clips, in batches as the single run's loader serves them.

    Returns:
        ``correct`` int64 ``(R,)`` and ``loss_sum`` ``(R,)``: the sum over batches of each
        batch's mean cross-entropy times its size (Lightning's epoch mean of ``test/loss``
        times the clip count).
    """
    size = len(stack)
    correct = torch.zeros(size, dtype=torch.int64, device=clips.device)
    loss_sum = torch.zeros(size, dtype=to_input.dtype, device=clips.device)
    for start in range(0, len(clips), batch_size):
        x = to_input[clips[start:start + batch_size].long()].unsqueeze(1)  # (B, 1, T, H, W)
        y = labels[start:start + batch_size]  # (B,)
        logits = stack(x)  # (R, B, C)
        losses = F.cross_entropy(logits.transpose(1, 2), y.expand(size, -1), reduction="none")
        loss_sum += losses.mean(dim=1) * len(y)
        correct += (logits.argmax(dim=2) == y).sum(dim=1)
    return correct, loss_sum


def _accuracy(correct: Tensor, total: int) -> list[float]:
    """``MulticlassAccuracy(average="micro")``'s value: ``correct / total`` in float32."""
    return (correct.cpu().float() / torch.tensor(float(total))).tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_stacked(
    modules: Sequence[VideoClassifier],
    data: StackData,
    subset_seeds: Sequence[int],
    init_seeds: Sequence[int | None] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    eval_batch_size: int | None = None,
    data_source: str | None = None,
    timings: dict[str, float] | None = None,
) -> list[RunRecord]:
    """Trains ``R`` runs of one model and recipe together; one record per member.

    Member ``r`` is trained as ``fit_and_test`` trains ``modules[r]`` with the data module of
    ``subset_seed=subset_seeds[r]``: per epoch, its learning rate is recorded, its batches
    (``member_batches``) are trained with its own ``SGD`` (``configure_optimizers``: param
    groups, momentum) after clipping its gradient norm to ``recipe.max_grad_norm``
    (``clip_grad_norm_`` over its optimizer's parameters, as Lightning's ``"norm"`` clipping);
    every ``recipe.val_every_n_epochs`` epochs it is validated, its best weights (first of ties)
    kept and its LR schedule stepped with its ``val/acc``. Then the weights its recipe names are
    loaded (``load_tested_weights``) and tested. The modules' histories and best weights are
    filled as a ``Trainer`` fills them, and the modules end on their tested weights.

    Args:
        modules: The members, built and initialized (``build_member``), one recipe and model.
        data: The clips (:func:`stack_data`); ``member_rows[r]`` is member ``r``'s subset.
        subset_seeds: Member ``r``'s shuffle seed (its data module's ``subset_seed``).
        init_seeds: The seeds the weights were initialized with, for the records.
        device: Where to train; the modules and clips are moved there.
        dtype: Parameter and input dtype (``torch.float64``: Lightning's ``"64-true"``).
        eval_batch_size: Clips per validation/test batch (``None``: the training batch size,
            as the data module; it changes the test loss only by rounding).
        data_source: ``"mnist"`` or ``"embedded"``, for the records.
        timings: If given, filled with seconds spent in ``"setup"``, ``"train"``, ``"val"`` and
            ``"test"`` (with a device synchronization at each boundary).

    Returns:
        The members' records (no sweep identity); ``wall_time_s`` is the stack's wall time
        divided by ``R``, each member's share.

    Raises:
        ValueError: the members differ in model or recipe, or the data does not fit them.
    """
    start = time.perf_counter()
    _check_members(modules, data)
    size = len(modules)
    if len(subset_seeds) != size:
        raise ValueError(f"{size} members but {len(subset_seeds)} subset seeds")
    init_seeds = list(init_seeds) if init_seeds is not None else [None] * size
    recipe = modules[0].recipe
    num_videos = len(data.member_rows[0])
    batch_size = recipe.batch_size_for(num_videos)
    eval_batch_size = eval_batch_size or batch_size
    device = torch.device(device)
    clock = {"setup": 0.0, "train": 0.0, "val": 0.0, "test": 0.0}

    def lap(phase: str, since: float) -> float:
        if timings is not None:
            _sync(device)
        now = time.perf_counter()
        clock[phase] += now - since
        return now

    for module in modules:
        module.model.to(device=device, dtype=dtype)
    stack = StackedLeNet5([m.model for m in modules])
    configs = [m.configure_optimizers() for m in modules]
    optimizers = [c["optimizer"] for c in configs]
    schedulers = [c["lr_scheduler"]["scheduler"] if "lr_scheduler" in c else None
                  for c in configs]
    # Lightning clips the parameters of the optimizer, in its param-group order.
    clip_params = [[p for g in opt.param_groups for p in g["params"]] for opt in optimizers]
    # uint8 -> the model's input, as the collate (float32 / 255) and the module (* 255 for
    # "raw") compute it, on the CPU: a CUDA division by a scalar rounds differently.
    to_input = torch.arange(256, dtype=torch.float32).div_(255.0).to(dtype)
    if recipe.input_scaling == "raw":
        to_input = to_input * 255.0
    to_input = to_input.to(device)
    train_clips = data.train_clips.to(device)  # (N, T, H, W) uint8
    train_labels = data.train_labels.to(device)
    rows = torch.stack(list(data.member_rows))  # (R, n), CPU
    val_clips, val_labels = data.val_clips.to(device), data.val_labels.to(device)
    test_clips, test_labels = data.test_clips.to(device), data.test_labels.to(device)
    loaders = [member_batches(num_videos, batch_size, seed) for seed in subset_seeds]
    best_values = [-math.inf] * size
    now = lap("setup", start)

    for epoch in range(1, recipe.epochs + 1):
        stack.train()
        for module, optimizer in zip(modules, optimizers, strict=True):
            module.lr_history.append([epoch, optimizer.param_groups[0]["lr"]])
        loss_sum = torch.zeros(size, dtype=dtype, device=device)
        seen = 0
        for indices in _zip_batches(loaders):  # (R, B) dataset indices
            positions = rows.gather(1, indices).to(device, non_blocking=True)  # (R, B)
            x = to_input[train_clips[positions.T].long()]  # (B, R, T, H, W)
            y = train_labels[positions]  # (R, B)
            logits = stack(x)  # (R, B, C)
            losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
            for optimizer in optimizers:
                optimizer.zero_grad()
            losses.sum().backward()  # member r's parameters get d(losses[r]) only
            for optimizer, params in zip(optimizers, clip_params, strict=True):
                if recipe.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                optimizer.step()
            loss_sum += losses.detach() * y.shape[1]
            seen += y.shape[1]
        now = lap("train", now)
        if epoch % recipe.val_every_n_epochs == 0:
            stack.eval()
            correct, _ = _evaluate(stack, val_clips, val_labels, to_input, eval_batch_size)
            for r, (module, value) in enumerate(zip(modules, _accuracy(correct, len(val_labels)),
                                                    strict=True)):
                module.val_acc_history.append([epoch, value])
                if value > best_values[r]:  # the first of equal accuracies wins
                    best_values[r], module.best_epoch = value, epoch
                    module._best_value = value  # keeps best_validation_accuracy consistent
                    if recipe.tested_weights == "best_val":
                        module.best_state = {
                            k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                        }
                if schedulers[r] is not None:  # Lightning: after validation, on val/acc
                    schedulers[r].step(value)
            now = lap("val", now)
        if seen:  # as VideoClassifier: float(sum) / count, in Python
            for module, total in zip(modules, loss_sum.cpu().tolist(), strict=True):
                module.train_loss_history.append([epoch, total / seen])

    tested_epochs = [m.load_tested_weights() for m in modules]
    stack.eval()
    correct, loss_sum = _evaluate(stack, test_clips, test_labels, to_input, eval_batch_size)
    test_acc = _accuracy(correct, len(test_labels))
    test_loss = (loss_sum.cpu() / len(test_labels)).tolist()
    lap("test", now)
    if timings is not None:
        timings.update(clock)
    share = (time.perf_counter() - start) / size
    return [
        RunRecord(
            best_epoch=module.best_epoch,
            best_val_acc=best_values[r] if math.isfinite(best_values[r]) else math.nan,
            test_acc=test_acc[r],
            test_loss=test_loss[r],
            num_parameters=module.num_parameters,
            val_acc_history=module.val_acc_history,
            train_loss_history=module.train_loss_history,
            lr_history=module.lr_history,
            tested_epoch=tested_epochs[r],
            model_name=module.model_name,
            data_source=data_source,
            train_videos=num_videos,
            subset_seed=subset_seeds[r],
            batch_size=batch_size,
            init_seed=init_seeds[r],
            recipe=recipe.to_dict(),
            transforms=transform_drift(module.model),
            wall_time_s=share,
            torch_threads=torch.get_num_threads(),
            device=device_name(device),
            **provenance(),
        )
        for r, module in enumerate(modules)
    ]


# ----------------------------------------------------------------------------- the sweep's API
def set_determinism(deterministic: bool | str) -> None:
    """What ``Trainer(deterministic=...)`` sets (Lightning's ``_set_torch_flags``), process-wide
    as there: deterministic algorithms (``"warn"``: warn where none exists, e.g. the CUDA
    backward of ``grid_sample``), no cuDNN benchmarking and cuBLAS's reproducible workspace."""
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")


def member_bytes(channels: tuple[int, int], conv: str, batch_size: int) -> int:
    """A generous estimate of the GPU memory one member adds to a float32 training step.

    Per clip: the activations autograd keeps (first conv's output and ReLU, pooled maps and
    their int64 indices, second conv's; for ``conv2plus1d`` the middle maps too) and the
    gathered input (uint8, int64 index, float); doubled for the allocator and cuDNN workspaces.
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
    "StackData", "StackedLeNet5", "auto_stack", "member_batches", "member_bytes",
    "set_determinism", "stack_data", "train_stacked",
]
