"""Every shipped config parses and builds what it names (no training, no data loading)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.models import LeNet5
from lightning_ttn.protocol.paper import WIDTHS, config_name, config_text, paper_table
from lightning_ttn.protocol.schema import load_config, plan_runs
from lightning_ttn.training.cli import VideoCLI
from lightning_ttn.training.module import VideoClassifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)
SWEEP_CONFIGS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_training_config_builds_its_model_and_data(path: Path, tmp_path: Path) -> None:
    cli = VideoCLI(
        VideoClassifier, VideoMNISTDataModule, seed_everything_default=0, run=False,
        auto_configure_optimizers=False,
        args=["--config", str(path), "--trainer.default_root_dir", str(tmp_path)],
    )
    assert isinstance(cli.model, VideoClassifier) and isinstance(cli.model.model, LeNet5)
    assert isinstance(cli.datamodule, VideoMNISTDataModule)
    if path.parent.name == "paper":
        family, size = path.stem.split("_")
        assert cli.datamodule.train_videos == int(size)
        assert cli.datamodule.batch_size == (10 if int(size) == 10 else 20)
        assert cli.model.model.conv == ("ttconv3d" if family == "3dttn" else "conv3d")
        assert cli.trainer.max_epochs == 100
        # The widths are the ones behind the parameter counts Table 2 reports for this size.
        column = "3DTTN_params" if family == "3dttn" else "3D_params"
        assert cli.model.num_parameters == paper_table()[int(size)][column]


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.name)
def test_sweep_config_is_valid(path: Path) -> None:
    assert plan_runs(load_config(path))


def test_paper_configs_are_generated_from_the_width_table() -> None:
    """configs/paper/ holds exactly what `python -m lightning_ttn.protocol.paper` writes."""
    expected = {config_name(f, size): config_text(f, size) for size in WIDTHS
                for f in ("3D", "3DTTN")}
    found = {p.name: p.read_text() for p in (CONFIGS / "paper").glob("*.yaml")}
    assert found == expected


def test_configs_are_short_overrides() -> None:
    for path in TRAIN_CONFIGS:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert len(lines) <= 12, path
