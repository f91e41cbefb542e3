from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ttn.models import LeNet5
from lightning_ttn.module import VideoClassifier


def _loader(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    clips = torch.rand(n, 1, 30, 28, 28, generator=g)
    labels = torch.arange(n) % 10
    return DataLoader(TensorDataset(clips, labels), batch_size=4)


def test_default_recipe_is_sgd_momentum_with_plateau_decay_on_val_acc():
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.05 and optimizer.defaults["momentum"] == 0.9
    plateau = scheduler["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.mode, plateau.patience, plateau.factor) == ("max", 10, 0.1)
    assert scheduler["monitor"] == "val/acc"


def test_injected_optimizer_and_scheduler_are_used():
    module = VideoClassifier(
        LeNet5((4, 14), "conv3d"),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_records_model_name_and_parameter_count_outside_init_hparams():
    module = VideoClassifier(LeNet5((18, 28), "ttconv3d"))
    assert module.model_name == "LeNet-5-3DTTN (18, 28)"
    assert module.num_parameters == 444_966
    # hparams must stay valid init arguments: LightningCLI re-parses them from checkpoints.
    assert set(module.hparams) == {"num_classes", "optimizer", "lr_scheduler", "max_grad_norm"}


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
    assert torch.cat(predictions).shape == (8,)


def test_training_reduces_loss_on_a_learnable_toy_task():
    # Bright clips are class 1, dark clips class 0: any working classifier learns this.
    pl.seed_everything(0)
    clips = torch.cat([torch.full((8, 1, 30, 28, 28), 0.9), torch.full((8, 1, 30, 28, 28), 0.1)])
    clips += 0.05 * torch.randn_like(clips)
    labels = torch.cat([torch.ones(8), torch.zeros(8)]).long()
    loader = DataLoader(TensorDataset(clips, labels), batch_size=8, shuffle=True)
    sgd = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), optimizer=sgd)
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
    trainer = pl.Trainer(check_val_every_n_epoch=5, logger=False)
    module = VideoClassifier(LeNet5((4, 14), "conv3d"))
    module.trainer = trainer
    assert module.configure_optimizers()["lr_scheduler"]["frequency"] == 5
    stepwise = VideoClassifier(
        LeNet5((4, 14), "conv3d"),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    stepwise.trainer = trainer
    assert "frequency" not in stepwise.configure_optimizers()["lr_scheduler"]


def test_gradients_are_clipped_to_max_grad_norm():
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), max_grad_norm=0.5)
    module.trainer = pl.Trainer(logger=False)
    optimizer = module.configure_optimizers()["optimizer"]
    clips, labels = torch.rand(4, 1, 30, 28, 28), torch.arange(4)
    (100.0 * torch.nn.functional.cross_entropy(module(clips), labels)).backward()
    module.configure_gradient_clipping(optimizer)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-4)
    with pytest.raises(ValueError, match="max_grad_norm must be positive or None, got 0"):
        VideoClassifier(LeNet5((4, 14), "conv3d"), max_grad_norm=0)


def test_plateau_scheduler_is_stepped_once_per_validation_in_a_fit(tmp_path):
    pl.seed_everything(0)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"))
    trainer = pl.Trainer(
        max_epochs=6, check_val_every_n_epoch=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_train_batches=1,
    )
    trainer.fit(module, _loader(n=4), _loader(n=4, seed=1))
    plateau = trainer.lr_scheduler_configs[0].scheduler
    assert plateau.last_epoch == 3  # epochs 2, 4 and 6; stepping every epoch would give 6
