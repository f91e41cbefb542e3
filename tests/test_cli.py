"""End-to-end runs of ``train.py`` (LightningCLI) on tiny data, as a user would type them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.record import RunRecord

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def printed_metric(output: str, name: str) -> float:
    """The value Lightning's result table prints for ``name``."""
    match = re.search(rf"^\s*{re.escape(name)}\s+([0-9.]+)\s*$", output, re.MULTILINE)
    assert match, f"{name} not printed in:\n{output}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``fit`` of the smoke config (which then tests its best checkpoint)."""
    cwd = tmp_path_factory.mktemp("smoke")
    return cwd, run_cli("fit", "--config", SMOKE, cwd=cwd)


def test_fit_writes_checkpoints_and_ends_with_the_test_accuracy(smoke_run):
    cwd, proc = smoke_run
    version = cwd / "lightning_logs" / "smoke" / "version_0"
    checkpoints = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert checkpoints == ["best-epoch000.ckpt", "last.ckpt"]
    assert (version / "config.yaml").is_file()
    assert 0.0 <= printed_metric(proc.stdout, "test/acc") <= 1.0
    record = RunRecord.read(version / "run.json")  # the run entry's record
    assert record.tested_epoch == record.best_epoch == 1
    assert record.test_acc == printed_metric(proc.stdout, "test/acc")
    assert record.recipe["epochs"] == 1 and record.batch_size == 10 and record.init_seed == 0


def test_test_and_validate_from_a_checkpoint_reproduce_the_metrics(smoke_run):
    cwd, fit = smoke_run
    best = cwd / "lightning_logs" / "smoke" / "version_0" / "checkpoints" / "best-epoch000.ckpt"
    test = run_cli("test", "--config", SMOKE, "--ckpt_path", str(best), cwd=cwd)
    assert printed_metric(test.stdout, "test/acc") == printed_metric(fit.stdout, "test/acc")
    assert printed_metric(test.stdout, "test/loss") == printed_metric(fit.stdout, "test/loss")
    validate = run_cli("validate", "--config", SMOKE, "--ckpt_path", str(best), cwd=cwd)
    assert 0.0 <= printed_metric(validate.stdout, "val/acc") <= 1.0


def test_tensorboard_has_scalars_hparams_clips_kernels_and_transforms(smoke_run):
    cwd, _ = smoke_run
    version = cwd / "lightning_logs" / "smoke" / "version_0"
    tags: dict[str, set[str]] = {"scalars": set(), "images": set(), "histograms": set()}
    for events in version.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
        for kind in tags:
            tags[kind] |= set(accumulator.Tags()[kind])
    assert {"train/loss_step", "train/acc", "val/acc", "val/loss", "lr"} <= tags["scalars"]
    assert {"hp/best_val_acc", "hp/test_acc", "test/acc"} <= tags["scalars"]
    kernels = {"kernels/model.features.0", "kernels/model.features.3"}
    assert {"inputs/clips"} | kernels <= tags["images"]
    assert "transforms/model.features.0/rotation_deg" in tags["histograms"]
    assert "transforms/model.features.3/tx_px_mean" in tags["scalars"]
    assert "drift/model.features.0/max_abs_rotation_deg" in tags["scalars"]


def test_a_checkpoint_rebuilds_its_network_and_tests_with_the_config_beside_it(smoke_run):
    cwd, fit = smoke_run
    version = cwd / "lightning_logs" / "smoke" / "version_0"
    best = next((version / "checkpoints").glob("best*"))
    module = VideoClassifier.load_from_checkpoint(str(best))  # no model= needed
    assert module.model_name == "LeNet-5-3DTTN (4, 14)" and module.recipe.epochs == 1
    test = run_cli("test", "--config", str(version / "config.yaml"), "--ckpt_path", str(best),
                   cwd=cwd)
    assert printed_metric(test.stdout, "test/acc") == printed_metric(fit.stdout, "test/acc")


def test_predict_writes_labels_predictions_and_probabilities(smoke_run):
    cwd, _ = smoke_run
    version = cwd / "lightning_logs" / "smoke" / "version_0"
    proc = run_cli("predict", "--config", SMOKE, "--ckpt_path", str(version / "checkpoints" /
                   "last.ckpt"), cwd=cwd)
    path = Path(re.search(r"wrote 20 predictions to (\S+)", proc.stdout).group(1))
    rows = (cwd / path).read_text().splitlines()
    assert rows[0] == "clip,label,predicted," + ",".join(f"p{c}" for c in range(10))
    assert len(rows) == 21
    first = rows[1].split(",")
    assert sum(float(p) for p in first[3:]) == pytest.approx(1.0, abs=1e-4)
    assert int(first[2]) == max(range(10), key=lambda c: float(first[3 + c]))
    assert len({row.split(",")[1] for row in rows[1:11]}) == 10  # classes interleaved


@pytest.mark.parametrize("flags", [["--trainer.fast_dev_run", "true"],
                                   ["--trainer.logger", "false"]])
def test_runs_without_a_logger_write_nothing_into_the_working_tree(tmp_path, flags):
    for _ in range(2):  # the second run must not trip over what the first left
        run_cli("fit", "--config", SMOKE, *flags, cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_tensorboard_hparams_hold_the_data_settings(smoke_run):
    cwd, _ = smoke_run
    hparams = (cwd / "lightning_logs" / "smoke" / "version_0" / "hparams.yaml").read_text()
    for key in ("data/train_videos: 20", "data/batch_size: 10", "data/subset_seed: 0",
                "data/source: embedded", "data/motion: table1"):
        assert key in hparams


def test_help_is_documented(tmp_path):
    help_text = run_cli("fit", "--help", cwd=tmp_path).stdout
    assert "--data.train_videos" in help_text and "class-balanced" in help_text
    assert "--model.recipe.lr" in help_text and "--checkpoint.monitor" in help_text
    assert "--model.recipe.transform_lr_scale" in help_text and "--optimizer" not in help_text
    # --model.model offers the project's networks, not every torch module
    assert "known subclasses: lightning_ttn.models.VideoNetwork, lightning_ttn.models.LeNet5)" in (
        " ".join(help_text.split()))
    assert "torch.nn.modules" not in help_text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.train_videos", "15"], r"train_videos=15 must be None .* positive multiple of 10"),
        (["--data.train_videos", "99990"], r"train_videos=99990 exceeds the 4000 clips"),
        (["--data.batch_size", "-5"], r"data.batch_size\" must be given via \"model.recipe"),
        (["--model.recipe.batch_size", "-5"], r"batch_size=-5 must be an integer >= 1"),
        (["--model.model.conv", "ttconv"],
         r"Literal\['conv3d', 'ttconv3d', 'conv2plus1d'\]. Got value: ttconv"),
        (["--model.model", "foo.Bar"], r"allowed networks: lightning_ttn.models.LeNet5"),
        (["--data.source", "imagenet"], r"Literal\['auto', 'embedded', .*Got value: imagenet"),
        (["--model.recipe.lr_schedule", "cosine"], r"Literal\['plateau', .*Got value: cosine"),
        # Lightning's own refusals of trainer settings, reported like ours (issue 20)
        pytest.param(["--trainer.accelerator", "gpu"], r"trainer settings refused \(accelerator="
                     r"'gpu', .*No supported gpu backend found! Accelerators available here: cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
        (["--trainer.devices", "0"], r"devices='0'.*not a valid input .*available here: "),
        # spawned workers hand back no training history: refused before training (issue 20)
        *[(["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy",
            strategy], rf"trainer.strategy='{strategy}' is not supported by fit: .* use "
           r"--trainer.strategy ddp") for strategy in ("ddp_spawn", "ddp_notebook")],
    ],
)
def test_bad_config_values_fail_with_a_clear_message(tmp_path, override, message):
    proc = run_cli("fit", "--config", SMOKE, *override, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 8, proc.stderr
    assert not (tmp_path / "lightning_logs").exists()  # checked before the logger writes


class Payload:
    """Unpickles into ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(
    ("subcommand", "payload"),
    [("test", "pickle"), ("predict", "pickle"), ("fit", "class_path"), ("validate", "class_path"),
     ("test", "hparams")],
)
def test_a_refused_checkpoint_is_a_short_error_and_runs_nothing(tmp_path, subcommand, payload):
    marker = tmp_path / "marker"
    touch = f"touch {marker}"
    evil = tmp_path / "evil.ckpt"
    if payload == "pickle":
        torch.save({"state_dict": {}, "extra": Payload(os.system, touch)}, evil)
        reason = r"it needs GLOBAL posix.system to load \(only tensors and plain data"
    elif payload == "class_path":
        network = {"class_path": "subprocess.call", "init_args": {"args": touch, "shell": True}}
        torch.save({"state_dict": {}, "network": network}, evil)
        reason = r"network class_path 'subprocess.call' is not an imported VideoNetwork subclass"
    else:  # LightningCLI parses hparams into the config: jsonargparse imports class paths
        torch.save({"state_dict": {}, "hyper_parameters": {"recipe": {"class_path": "this.X"}}},
                   evil)
        reason = r"hyper_parameters.recipe.class_path names a class"
    proc = run_cli(subcommand, "--config", SMOKE, "--ckpt_path", str(evil), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 1 and not marker.exists()
    assert "The Zen of Python" not in proc.stdout  # what importing `this` prints
    assert re.search(rf"^error: checkpoint {re.escape(str(evil))} refused: {reason}",
                     proc.stderr, re.MULTILINE), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 8, proc.stderr


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_predict_refuses_several_processes(tmp_path, strategy):
    two = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", strategy]
    proc = run_cli("predict", "--config", SMOKE, *two, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"^error: predict runs in one process .*got 2 processes: use "
                     r"--trainer.devices 1$", proc.stderr, re.MULTILINE), proc.stderr
    assert not (tmp_path / "data").exists()  # refused before the data are rendered


def test_ddp_two_cpu_processes_share_the_cache_and_sync_metrics(tmp_path):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    fit = run_cli("fit", "--config", SMOKE, *ddp, cwd=tmp_path)
    assert "Initializing distributed: GLOBAL_RANK: 1" in fit.stdout + fit.stderr
    # Both ranks share one complete cache entry (rank 0 renders in prepare_data under the file
    # lock; rank 1 only opens it in setup).
    entries = [p for p in (tmp_path / "data" / "video_mnist").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "manifest.json").is_file()
    # Each rank sees half of the 20 validation clips; synced accuracy equals one process's.
    best = next((tmp_path / "lightning_logs" / "smoke" / "version_0" / "checkpoints").glob("best*"))
    single = run_cli("validate", "--config", SMOKE, "--ckpt_path", str(best), cwd=tmp_path)
    double = run_cli("validate", "--config", SMOKE, *ddp, "--ckpt_path", str(best), cwd=tmp_path)
    assert printed_metric(double.stdout, "val/acc") == printed_metric(single.stdout, "val/acc")
    assert printed_metric(double.stdout, "val/loss") == pytest.approx(
        printed_metric(single.stdout, "val/loss"), rel=1e-5
    )
