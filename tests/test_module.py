from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ttn.models import LeNet5
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.recipe import Recipe


def _loader(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    clips = torch.rand(n, 1, 30, 28, 28, generator=g)
    labels = torch.arange(n) % 10
    return DataLoader(TensorDataset(clips, labels), batch_size=4)


def test_default_recipe_is_sgd_momentum_with_plateau_decay_on_val_acc():
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    assert optimizer.defaults["lr"] == Recipe().lr and optimizer.defaults["momentum"] == 0.9
    plateau = scheduler["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.mode, plateau.patience, plateau.factor) == ("max", 10, 0.1)
    assert scheduler["monitor"] == "val/acc" and scheduler["frequency"] == 1


def test_records_model_name_and_parameter_count_outside_init_hparams():
    module = VideoClassifier(LeNet5((18, 28), "ttconv3d"))
    assert module.model_name == "LeNet-5-3DTTN (18, 28)"
    assert module.num_parameters == 444_966
    # hparams must stay valid init arguments: LightningCLI re-parses them from checkpoints.
    assert set(module.hparams) == {"num_classes", "recipe"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr": 0}, r"recipe.lr=0 must be > 0"),
        ({"lr_schedule": "cosine"}, r"recipe.lr_schedule='cosine' is not one of"),
        ({"tested_weights": "best"}, r"recipe.tested_weights='best' is not one of"),
        ({"max_grad_norm": 0}, r"recipe.max_grad_norm=0 must be > 0"),
        ({"momentum": 1.0}, r"recipe.momentum=1.0 must be in \[0, 1\)"),
        ({"epochs": 7, "val_every_n_epochs": 2}, r"recipe.epochs \(7\) must be a multiple"),
        ({"batch_size": 0}, r"recipe.batch_size=0 must be an integer >= 1"),
        ({"learning_rate": 0.1}, r"unknown recipe field\(s\) \['learning_rate'\]"),
        ({"conv3d_start": "constant"}, r"recipe.conv3d_start='constant' is not one of"),
    ],
)
def test_bad_recipe_values_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        Recipe().replace(**change)


def test_batch_size_rule():
    recipe = Recipe()
    assert (recipe.batch_size_for(10), recipe.batch_size_for(20)) == (10, 20)
    assert Recipe(batch_size_overrides={"30": 5}).batch_size_for(30) == 5  # JSON keys


def test_transform_lr_scale_scales_the_transforms_first_sgd_step_exactly():
    """The transforms' first step is the factor times the step at the shared rate."""
    def first_steps(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = LeNet5((4, 14), "ttconv3d").double()
        module = VideoClassifier(model, Recipe(transform_lr_scale=scale, max_grad_norm=None))
        optimizer = module.configure_optimizers()["optimizer"]
        layer = model.features[0]
        before = (layer.rotation.detach().clone(), layer.base.detach().clone())
        generator = torch.Generator().manual_seed(1)
        clips = torch.rand(4, 1, 30, 28, 28, dtype=torch.float64, generator=generator)
        torch.nn.functional.cross_entropy(module(clips), torch.arange(4)).backward()
        optimizer.step()
        return layer.rotation.detach() - before[0], layer.base.detach() - before[1]

    rotation_1, base_1 = first_steps(1.0)
    rotation_10, base_10 = first_steps(10.0)
    assert rotation_1.abs().max() > 0
    torch.testing.assert_close(rotation_10, 10 * rotation_1, rtol=1e-12, atol=0)
    torch.testing.assert_close(base_10, base_1, rtol=0, atol=0)  # other weights: shared rate


def test_transform_parameters_get_their_own_group_only_when_scaled():
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), Recipe(transform_lr_scale=10))
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [0.05, 0.5]
    assert len(groups[1]["params"]) == 2 * 3  # scale, rotation, translation of two layers
    plain = VideoClassifier(LeNet5((4, 14), "conv3d"), Recipe(transform_lr_scale=10))
    assert len(plain.configure_optimizers()["optimizer"].param_groups) == 1


def test_raw_input_scaling_reaches_the_model_as_0_to_255():
    seen = []
    model = LeNet5((4, 14), "conv3d")
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].max().item()))
    clips = torch.ones(2, 1, 30, 28, 28)  # the data module serves [0, 1]
    VideoClassifier(model, Recipe(input_scaling="raw"))(clips)
    VideoClassifier(model, Recipe(input_scaling="unit"))(clips)
    assert seen == [255.0, 1.0]


def test_normal_init_draws_k0_and_plain_conv_weights_from_a_unit_gaussian():
    torch.manual_seed(0)
    ttn = VideoClassifier(LeNet5((18, 28), "ttconv3d"), Recipe(k0_init="normal")).model
    assert ttn.features[3].base.std().item() == pytest.approx(1.0, abs=0.02)
    plain = VideoClassifier(LeNet5((18, 28), "conv3d"), Recipe(k0_init="normal")).model
    assert plain.features[3].weight.std().item() == pytest.approx(1.0, abs=0.02)
    default = VideoClassifier(LeNet5((18, 28), "ttconv3d")).model
    assert default.features[3].base.std().item() < 0.05


def test_a_time_constant_start_repeats_slice_0_and_then_trains_freely():
    torch.manual_seed(0)
    recipe = Recipe(k0_init="normal", conv3d_start="time_constant", lr=0.01, max_grad_norm=None)
    module = VideoClassifier(LeNet5((2, 3), "conv3d"), recipe)
    convs = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 2
    for conv in convs:  # (O, I, T, kH, kW): every slice is slice 0, drawn N(0, 1)
        assert conv.weight.std().item() > 0.5
        assert torch.equal(conv.weight, conv.weight[:, :, :1].expand_as(conv.weight))
    ttn = VideoClassifier(LeNet5((2, 3), "ttconv3d"), recipe).model  # no plain convs: as drawn
    assert ttn.features[0].base.std().item() > 0.5
    optimizer = module.configure_optimizers()["optimizer"]
    clips = torch.rand(4, 1, 30, 28, 28)
    torch.nn.functional.cross_entropy(module(clips), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    weight = convs[0].weight  # each slice got its own gradient: the slices part
    assert not torch.allclose(weight[:, :, 1], weight[:, :, 0])


def test_halve_every_10_halves_the_rate_when_validation_stalls(tmp_path):
    """A constant validation set and frozen weights: accuracy never improves, so the rate is
    halved at the checks after epochs 11 and 21 (not after epoch 1, the first check)."""
    pl.seed_everything(0)
    module = VideoClassifier(
        LeNet5((4, 14), "conv3d"),
        Recipe(lr=1e-12, lr_schedule="halve_every_10", epochs=22, max_grad_norm=None),
    )
    trainer = pl.Trainer(
        max_epochs=22, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_train_batches=1,
    )
    trainer.fit(module, _loader(n=4), _loader(n=4, seed=1))
    rates = dict(module.lr_history)
    assert rates[1] == rates[11] == 1e-12
    assert rates[12] == rates[21] == 0.5e-12 and rates[22] == 0.25e-12


def test_constant_schedule_has_no_scheduler():
    module = VideoClassifier(LeNet5((4, 14), "conv3d"), Recipe(lr_schedule="constant"))
    assert "lr_scheduler" not in module.configure_optimizers()


def test_tested_weights_best_val_or_last():
    module = VideoClassifier(torch.nn.Linear(2, 2))
    module.best_state = {"model.weight": torch.zeros(2, 2), "model.bias": torch.zeros(2)}
    module.best_epoch, module.val_acc_history = 2, [[1, 0.5], [2, 0.7], [3, 0.6]]
    assert module.load_tested_weights() == 2 and module.model.weight.abs().sum() == 0
    last = VideoClassifier(torch.nn.Linear(2, 2), Recipe(tested_weights="last"))
    last.val_acc_history = [[1, 0.5], [2, 0.7]]
    assert last.load_tested_weights() == 2 and last.model.weight.abs().sum() > 0


def test_fit_validate_test_log_metrics(tmp_path):
    pl.seed_everything(0)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"))
    trainer = pl.Trainer(
        max_epochs=2, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, _loader(), _loader(seed=1))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "hp/best_val_acc"):
        assert key in metrics, key
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert metrics["hp/best_val_acc"] >= metrics["val/acc"]
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    (result,) = trainer.test(module, _loader(seed=2), verbose=False)
    assert set(result) >= {"test/acc", "test/loss", "hp/test_acc"}
    predictions = trainer.predict(module, _loader(seed=2))
    labels = torch.cat([batch_labels for batch_labels, _ in predictions])
    probabilities = torch.cat([batch_probs for _, batch_probs in predictions])
    assert labels.shape == (8,) and probabilities.shape == (8, 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(8))


def test_training_reduces_loss_on_a_learnable_toy_task():
    # Bright clips are class 1, dark clips class 0: any working classifier learns this.
    pl.seed_everything(0)
    clips = torch.cat([torch.full((8, 1, 30, 28, 28), 0.9), torch.full((8, 1, 30, 28, 28), 0.1)])
    clips += 0.05 * torch.randn_like(clips)
    labels = torch.cat([torch.ones(8), torch.zeros(8)]).long()
    loader = DataLoader(TensorDataset(clips, labels), batch_size=8, shuffle=True)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"))
    with torch.no_grad():
        initial = torch.nn.functional.cross_entropy(module(clips), labels).item()
    trainer = pl.Trainer(
        max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(module, loader)
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(module(clips), labels).item()
    assert final < 0.5 * initial


def test_plateau_scheduler_steps_only_after_validations():
    # A stale val/acc between validations must not count as "no improvement".
    module = VideoClassifier(LeNet5((4, 14), "conv3d"), Recipe(epochs=10, val_every_n_epochs=5))
    assert module.configure_optimizers()["lr_scheduler"]["frequency"] == 5


def test_gradients_are_clipped_to_max_grad_norm():
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), Recipe(max_grad_norm=0.5))
    module.trainer = pl.Trainer(logger=False)
    optimizer = module.configure_optimizers()["optimizer"]
    clips, labels = torch.rand(4, 1, 30, 28, 28), torch.arange(4)
    (100.0 * torch.nn.functional.cross_entropy(module(clips), labels)).backward()
    module.configure_gradient_clipping(optimizer)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_plateau_scheduler_is_stepped_once_per_validation_in_a_fit(tmp_path):
    pl.seed_everything(0)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), Recipe(epochs=6, val_every_n_epochs=2))
    trainer = pl.Trainer(
        max_epochs=6, check_val_every_n_epoch=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=1,
    )
    trainer.fit(module, _loader(n=4), _loader(n=4, seed=1))
    plateau = trainer.lr_scheduler_configs[0].scheduler
    assert plateau.last_epoch == 3  # epochs 2, 4 and 6; stepping every epoch would give 6
