"""Stacked multi-run training: a stack of R runs is the R runs trained one by one.

The reference for "one by one" is ``train.py fit``'s path: the run's config (``run_config``)
parsed by the same ``VideoCLI`` and trained by ``fit_and_test`` as one ``VideoClassifier``, with
``precision="64-true"`` so that both sides compute in float64 and differ only by the summation
order of the grouped kernels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import LeNet5
from lightning_ttn.protocol import store
from lightning_ttn.protocol.runner import build_run, run_config, run_sweep, train_stack
from lightning_ttn.protocol.schema import parse_config, plan_runs
from lightning_ttn.protocol.stacking import stack_groups
from lightning_ttn.training.cli import VideoCLI
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord
from lightning_ttn.training.run import fit_and_test, fit_and_test_stack
from lightning_ttn.training.stacked import (
    StackedClassifier,
    StackedDataModule,
    StackedLeNet5,
    auto_stack,
)

REPO = Path(__file__).resolve().parents[1]

CHANNELS = [2, 3]  # tiny widths: the test is about equivalence, not accuracy
LAYER_TYPES = [
    ("conv3d", "similarity"),
    ("ttconv3d", "similarity"),
    ("ttconv3d", "affine"),
    ("ttconv3d", "none"),
    ("conv2plus1d", "similarity"),
]


# ----------------------------------------------------------------------------- the model
def _members(conv: str, transform: str, count: int = 3) -> list[LeNet5]:
    """Float64 members with different weights and transforms away from the identity (so that
    the kernels are really resampled)."""
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = LeNet5(tuple(CHANNELS), conv, transform).double()
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, TTConv3d) and layer.transform == "similarity":
                    layer.scale.add_(0.1 * torch.randn_like(layer.scale))
                    layer.rotation.add_(0.3 * torch.randn_like(layer.rotation))
                    layer.translation.add_(0.2 * torch.randn_like(layer.translation))
                elif isinstance(layer, TTConv3d) and layer.transform == "affine":
                    layer.affine.add_(0.1 * torch.randn_like(layer.affine))
        members.append(model)
    return members


@pytest.mark.parametrize(("conv", "transform"), LAYER_TYPES)
def test_stacked_forward_and_gradients_are_each_members_own(conv, transform):
    members = _members(conv, transform)
    stack = StackedLeNet5(members)
    generator = torch.Generator().manual_seed(0)
    clips = torch.rand(2, 3, 1, 30, 28, 28, dtype=torch.float64, generator=generator)
    labels = torch.tensor([[1, 2], [3, 4], [5, 6]])  # (R, B)
    logits = stack(clips)  # (R, B, C)
    assert logits.shape == (3, 2, 10)
    losses = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)
    losses.sum().backward()
    stacked_grads = [[p.grad.clone() for p in m.parameters()] for m in members]
    shared = stack(clips[:, 0])  # (B, 1, T, H, W): the same clips for every member
    for r, member in enumerate(members):
        member.zero_grad()
        own = member(clips[:, r])
        torch.testing.assert_close(logits[r], own, rtol=0, atol=1e-12)
        torch.testing.assert_close(shared[r], member(clips[:, 0]), rtol=0, atol=1e-12)
        F.cross_entropy(own, labels[r]).backward()
        for stacked, p in zip(stacked_grads[r], member.parameters(), strict=True):
            torch.testing.assert_close(stacked, p.grad, rtol=1e-10, atol=1e-12)
    # (B, R, T, H, W) is the same input as (B, R, 1, T, H, W).
    torch.testing.assert_close(stack(clips[:, :, 0]), logits, rtol=0, atol=0)


@pytest.mark.parametrize("move", [
    lambda m: m.double(),
    lambda m: m.to(torch.float64),
    lambda m: m.to("cpu", torch.float64),
    lambda m: m.to(device="cpu").double(),
    pytest.param(lambda m: m.cuda().double(), marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_a_stack_moves_like_any_module(move):
    members = [LeNet5((2, 3), "ttconv3d") for _ in range(2)]
    stack = StackedLeNet5(members)
    moved = move(stack)
    assert moved is stack
    parameters = list(stack.parameters())
    assert parameters and all(p.dtype == torch.float64 for p in parameters)
    assert all(p.dtype == torch.float64 for m in members for p in m.parameters())  # the same
    device = parameters[0].device
    clips = torch.rand(2, 1, 30, 28, 28, dtype=torch.float64, device=device)
    torch.testing.assert_close(stack(clips)[1], members[1](clips), rtol=0, atol=1e-12)
    stack.float().cpu()
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in stack.parameters())


def test_members_of_different_architectures_are_rejected():
    with pytest.raises(ValueError, match="must share one architecture"):
        StackedLeNet5([LeNet5((2, 3), "conv3d"), LeNet5((2, 4), "conv3d")])
    with pytest.raises(ValueError, match="must share one architecture"):
        StackedLeNet5([LeNet5((2, 3), "ttconv3d"), LeNet5((2, 3), "ttconv3d", "none")])
    with pytest.raises(ValueError, match="at least one member"):
        StackedLeNet5([])


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One rendered cache of the embedded digits (about 2 s)."""
    path = tmp_path_factory.mktemp("stacked_data")
    VideoMNISTDataModule(data_dir=str(path), source="embedded").prepare_data()
    return str(path)


def _config(data_dir: str, output_dir: str, **settings):
    """3 runs of 20 videos, 3 epochs; the LR schedule (patience 0), clipping and the
    transforms' LR group all act within them. Batches of 8 (a partial last batch) unless
    ``batch_size`` says otherwise."""
    return parse_config({
        "output_dir": output_dir, "source": "embedded", "data_dir": data_dir,
        "sizes": [20], "runs": 3, "seed_offset": 7, "val_videos": 20, "test_videos": 20,
        "accelerator": "cpu", "deterministic": True,
        "epochs": 3, "batch_size": 8, "plateau_patience": 0, "max_grad_norm": 0.5,
        **settings,
        "families": {
            "3D": [{"name": "w2-3", "channels": CHANNELS}],
            "3DTTN": [{"name": "w2-3", "channels": CHANNELS, "transform_lr_scale": 10.0}],
        },
    })


FLOAT64 = ["--trainer.precision", "64-true"]


@pytest.fixture
def one_thread():
    """One torch thread: the grouped and the single convolution then sum in the same order.
    With two, their outputs differ by ~1e-15 and, for the 3DTTN, max pooling breaks the ties
    its time-constant start creates the other way (see the test below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_time_constant_kernel_makes_max_pooling_ties_that_rounding_breaks(data_dir):
    """Why stacked and single 3DTTN runs agree only where both convolutions sum in one order.

    At Θ = identity every slice of a 3DTT kernel is K0, so wherever a clip's content repeats in
    time the conv outputs of neighbouring frames are mathematically equal: ties for
    ``MaxPool3d``'s temporal window. A change of summation order (two threads: the grouped
    convolution splits its work otherwise than the single one; ~1e-15 here) breaks such ties
    either way, and the gradient goes to the other frame: the weight gradient changes at order
    one. A 3D kernel's random slices make no such ties: the same change stays at rounding level.
    (Background, where the clip is zero, gives the bias exactly in any order: not perturbed.)
    """
    datamodule = VideoMNISTDataModule(data_dir=data_dir, source="embedded", train_videos=20,
                                      batch_size=8)
    datamodule.setup("fit")
    clips = next(iter(datamodule.train_dataloader()))[0].double()  # (B, 1, T, H, W)
    torch.manual_seed(0)
    layer = TTConv3d(1, 2, 5, padding=2).double()  # Θ at the identity, as training starts
    tt_kernel = layer.weight.detach()
    torch.testing.assert_close(tt_kernel[:, :, 4], tt_kernel[:, :, 0], rtol=0, atol=1e-12)
    bias = layer.bias.detach()

    def pooled_gradient(kernel: Tensor, rounding: float) -> tuple[float, Tensor]:
        """The share of tied content pairs and the weight gradient through max pooling."""
        weight = kernel.clone().requires_grad_()
        out = F.relu(F.conv3d(clips, weight, bias, padding=2))  # (B, 2, T, H, W)
        content = out.detach() != bias.view(1, -1, 1, 1, 1)
        noise = torch.rand(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        out = out + rounding * noise * content
        F.max_pool3d(out, 2).sum().backward()
        pairs = out.detach()[:, :, :30].unflatten(2, (15, 2))  # (B, 2, 15, 2, H, W)
        first, second = pairs.unbind(3)
        both = (first > 0) & content[:, :, :30].unflatten(2, (15, 2)).all(dim=3)
        ties = ((first - second).abs() < 1e-12) & both
        return float(ties.sum() / both.sum()), weight.grad

    for kernel, tied in ((tt_kernel, True), (0.05 * torch.randn_like(tt_kernel), False)):
        share, exact = pooled_gradient(kernel, 0.0)
        _, rounded = pooled_gradient(kernel, 1e-15)
        change = float((rounded - exact).abs().max() / exact.abs().max())
        if tied:
            assert share > 0.02 and change > 1e-3, (share, change)
        else:
            assert share == 0.0 and change < 1e-9, (share, change)


def _single_run(spec, config, tmp_path):
    """``train.py fit``'s path in float64: the run's config through ``VideoCLI``, then
    ``fit_and_test`` of one ``VideoClassifier``. Returns the record and the module (holding its
    tested weights)."""
    path = tmp_path / f"{spec.run_id}.yaml"
    path.write_text(yaml.safe_dump(run_config(spec, config), sort_keys=False))
    cli = VideoCLI(
        VideoClassifier, VideoMNISTDataModule,
        args=["--config", str(path), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--checkpoint.save_top_k", "0", "--checkpoint.save_last", "false", *FLOAT64],
        run=False, save_config_callback=None, auto_configure_optimizers=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = fit_and_test(cli.trainer, cli.model, cli.datamodule, init_seed=spec.init_seed,
                              verbose=False)
    return record, cli.model


# Batch 10 divides the 20 videos: the sampler's generator then draws once more after the last
# batch if the loader is asked for its end, which the next epoch's order would depend on.
@pytest.mark.parametrize(
    ("family", "tested_weights", "batch_size"), [("3D", "best_val", 10), ("3DTTN", "last", 8)]
)
def test_a_stack_of_three_runs_equals_the_three_runs_one_by_one(
    data_dir, tmp_path, monkeypatch, family, tested_weights, batch_size, one_thread
):
    monkeypatch.chdir(tmp_path)  # anything Lightning writes stays in the test's directory
    config = _config(data_dir, str(tmp_path / "sweep"), tested_weights=tested_weights,
                     batch_size=batch_size)
    specs = [s for s in plan_runs(config) if s.family == family]
    assert [s.run for s in specs] == [0, 1, 2]
    runs = [build_run(spec, config, FLOAT64) for spec in specs]
    stack = StackedClassifier([module for module, _, _ in runs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stacked = fit_and_test_stack(runs[0][2], stack, StackedDataModule([d for _, d, _ in runs]),
                                     [s.init_seed for s in specs], verbose=False)
    lrs = set()
    for spec, record, (module, _, _) in zip(specs, stacked, runs, strict=True):
        single, reference = _single_run(spec, config, tmp_path)
        for name in ("val_acc_history", "lr_history", "best_epoch", "best_val_acc",
                     "tested_epoch", "test_acc", "num_parameters", "model_name", "data_source",
                     "train_videos", "subset_seed", "init_seed", "batch_size", "recipe"):
            assert getattr(record, name) == getattr(single, name), name
        np.testing.assert_allclose(record.train_loss_history, single.train_loss_history,
                                   rtol=1e-9)
        assert record.test_loss == pytest.approx(single.test_loss, rel=1e-9)
        assert len(record.transforms) == len(single.transforms)
        assert record.stack_size == 3 and single.stack_size == 1
        for ours, theirs in zip(module.model.state_dict().items(),
                                reference.model.state_dict().items(), strict=True):
            assert ours[0] == theirs[0]
            assert ours[1].dtype == torch.float64
            torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-10)
        lrs.update(lr for _, lr in record.lr_history)
    assert len(lrs) > 1, "the schedule never acted: the test would not cover its stepping"


def _records(config) -> dict[str, RunRecord]:
    return {s.run_id: RunRecord.read(store.record_path(config.output_dir, s))
            for s in plan_runs(config)}


# What differs between a run trained alone and in a stack: not results.
_NOT_RESULTS = {"stack_size", "wall_time_s", "finished_at", "replay"}
# Computed from the weights, which differ by rounding (the grouped kernels sum in another order).
_ROUNDED = {"train_loss_history", "test_loss", "transforms", "kernel_health"}


def test_a_float32_sweep_in_stacks_of_4_gives_the_records_of_stacks_of_1(data_dir, tmp_path):
    """16 runs (2 families x 2 sizes x 4 runs) on the CPU in float32: the same accuracies,
    epochs and rates; losses, Θ drift and kernel health the same up to float32 rounding."""
    records = {}
    for stack in (1, 4):
        config = _config(data_dir, str(tmp_path / f"stack{stack}"), runs=4, sizes=[10, 20],
                         epochs=2, stack=stack, deterministic="warn")
        assert run_sweep(config, show_progress=False)["trained"] == 16
        records[stack] = _records(config)
    assert len(records[1]) == 16
    for run_id, alone in records[1].items():
        stacked = records[4][run_id]
        assert (alone.stack_size, stacked.stack_size) == (1, 4)
        ours, theirs = stacked.to_dict(), alone.to_dict()
        for key in set(ours) - _NOT_RESULTS - _ROUNDED:
            assert ours[key] == theirs[key], (run_id, key)
        np.testing.assert_allclose(stacked.train_loss_history, alone.train_loss_history,
                                   rtol=1e-6)
        assert stacked.test_loss == pytest.approx(alone.test_loss, rel=1e-6)
        assert len(stacked.transforms) == len(alone.transforms)
        for a, b in zip(ours["transforms"], theirs["transforms"], strict=True):
            assert a.keys() == b.keys() and a["layer"] == b["layer"]
            assert [a[k] for k in a if k != "layer"] == pytest.approx(
                [b[k] for k in b if k != "layer"], rel=1e-4, abs=1e-9)
        for a, b in zip(ours["kernel_health"], theirs["kernel_health"], strict=True):
            assert a["layer"] == b["layer"] and a["collapsed_fraction"] == b["collapsed_fraction"]
            assert a["energy_profile"] == pytest.approx(b["energy_profile"], rel=1e-6)


def test_train_stack_returns_one_record_per_run_in_order(data_dir, tmp_path):
    config = _config(data_dir, str(tmp_path), epochs=1)
    specs = [s for s in plan_runs(config) if s.family == "3DTTN"][:2]
    records = train_stack(specs, config)
    assert [r.run_id for r in records] == [s.run_id for s in specs]
    assert [r.subset_seed for r in records] == [0, 1]
    assert [r.init_seed for r in records] == [7, 8]
    assert all(r.device == "cpu" and r.data_source == "embedded" for r in records)
    assert all(len(r.transforms) == 2 and r.tested_epoch == 1 for r in records)
    assert all(r.stack_size == 2 and r.replay[-1].endswith(".yaml") for r in records)


def test_a_stack_of_different_candidates_or_sizes_is_rejected(data_dir, tmp_path):
    config = _config(data_dir, str(tmp_path))
    specs = plan_runs(config)
    mixed = [s for s in specs if s.run == 0]  # 3D and 3DTTN
    with pytest.raises(ValueError, match=r"one candidate and size .* differs .* in family"):
        train_stack(mixed, config)
    with pytest.raises(ValueError, match="must not train a run twice"):
        train_stack([specs[0], specs[0]], config)
    first, second = (build_run(s, config) for s in specs[:2])  # 3D and 3DTTN
    with pytest.raises(ValueError, match="must share one recipe"):
        StackedClassifier([first[0], second[0]])
    with pytest.raises(ValueError, match="must share one architecture"):
        StackedClassifier([VideoClassifier(LeNet5((2, 3))), VideoClassifier(LeNet5((2, 4)))])
    with pytest.raises(ValueError, match="2 runs need as many distinct names"):
        StackedClassifier([first[0], build_run(specs[2], config)[0]], names=["a", "a"])
    other = VideoMNISTDataModule(data_dir=data_dir, source="embedded", train_videos=10)
    with pytest.raises(ValueError, match="subset_seed: data module 1 differs .* train_videos"):
        StackedDataModule([first[1], other])


def test_stack_groups_and_auto_stack(data_dir, tmp_path):
    specs = plan_runs(_config(data_dir, str(tmp_path)))  # run-major: 3D r0, 3DTTN r0, 3D r1...
    groups = stack_groups(specs, 2)
    assert [[(s.family, s.run) for s in g] for g in groups] == [
        [("3D", 0), ("3D", 1)], [("3DTTN", 0), ("3DTTN", 1)], [("3D", 2)], [("3DTTN", 2)],
    ]
    assert [g for g in stack_groups(specs, 1)] == [[s] for s in specs]  # the plan's order
    assert auto_stack("cpu", runs_in_group=30) == 1


def test_a_stacked_sweep_logs_each_run_to_tensorboard_under_its_run_id(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(data_dir, str(tmp_path / "sweep"), epochs=2, stack=2, tensorboard=True)
    specs = [s for s in plan_runs(config) if s.family == "3DTTN"][:2]
    records = train_stack(specs, config)
    for spec, record in zip(specs, records, strict=True):
        events = EventAccumulator(str(tmp_path / "sweep" / "tensorboard" / spec.run_id)).Reload()
        tags = set(events.Tags()["scalars"])
        assert {"val/acc", "train/loss", "lr", "test/acc", "hp/best_val_acc",
                "drift/features.0/mean_abs_rotation_deg"} <= tags, tags
        assert not any(spec.run_id in tag for tag in tags)
        logged = [(e.step, e.value) for e in events.Scalars("val/acc")]
        assert [v for _, v in logged] == pytest.approx([a for _, a in record.val_acc_history])
        # Steps count batches (3 an epoch), not the R optimizer steps of a batch.
        assert [s for s, _ in logged] == [2, 5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["3D", "3DTTN"])
def test_a_stack_on_cuda_trains_as_on_the_cpu(data_dir, tmp_path, monkeypatch, family):
    """float64 on both devices: only the kernels' summation order differs (grid_sample's CUDA
    backward adds atomically, so not bit for bit)."""
    monkeypatch.chdir(tmp_path)
    results = {}
    for accelerator in ("cpu", "gpu"):
        config = _config(data_dir, str(tmp_path / accelerator), accelerator=accelerator,
                         deterministic="warn")
        specs = [s for s in plan_runs(config) if s.family == family][:2]
        runs = [build_run(spec, config, FLOAT64) for spec in specs]
        stack = StackedClassifier([module for module, _, _ in runs])
        records = fit_and_test_stack(runs[0][2], stack, StackedDataModule([d for _, d, _ in runs]),
                                     verbose=False)
        results[accelerator] = records, [m.model.cpu().state_dict() for m, _, _ in runs]
    (cpu_records, cpu_weights), (gpu_records, gpu_weights) = results["cpu"], results["gpu"]
    for ours, theirs in zip(gpu_records, cpu_records, strict=True):
        assert ours.device.startswith("cuda")
        assert ours.val_acc_history == theirs.val_acc_history
        assert ours.test_acc == theirs.test_acc and ours.lr_history == theirs.lr_history
    for ours, theirs in zip(gpu_weights, cpu_weights, strict=True):
        for name, value in ours.items():
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=1e-10)


def test_a_sweep_with_stack_2_writes_one_record_per_member_and_skips_held_runs(tmp_path):
    from filelock import FileLock

    raw = {
        "output_dir": str(tmp_path / "out"), "source": "embedded",
        "data_dir": str(REPO / "data"), "sizes": [10],
        "runs": 4, "epochs": 1, "val_videos": 10, "test_videos": 10, "accelerator": "cpu",
        "stack": 2, "families": {"3DTTN": [{"name": "w2-3", "channels": [2, 3]}]},
    }
    config = parse_config(raw)
    specs = plan_runs(config)
    store.runs_dir(config.output_dir).mkdir(parents=True)
    with FileLock(str(store.record_path(config.output_dir, specs[1]).with_suffix(".lock"))):
        counts = run_sweep(config, show_progress=False)  # run 1 is held by "another worker"
    assert counts["trained"] == 3 and counts["held"] == 1
    records = {s.run: RunRecord.read(store.record_path(config.output_dir, s))
               for s in specs if store.is_finished(config.output_dir, s)}
    # Stacks [0, 1] and [2, 3]; run 1 held, so run 0 trains alone.
    assert {run: r.stack_size for run, r in records.items()} == {0: 1, 2: 2, 3: 2}
    assert records[2].replay[-1].endswith("3DTTN_n0010_w2-3_r002.yaml")
    assert run_sweep(config, show_progress=False)["trained"] == 1  # resume trains run 1
