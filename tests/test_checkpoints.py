"""Checkpoints load without running their code (issue 20): weights_only and allowed networks.

The crafted files carry live payloads: each test first shows that the payload runs when the file
is read the old way (``weights_only=False``, importing ``class_path``), then that loading it
now runs nothing (the marker file stays absent) and fails with a short error naming the file.
"""

from __future__ import annotations

import builtins
import importlib
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ttn.models import LeNet5
from lightning_ttn.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    plain_hyperparameters,
)
from lightning_ttn.training.module import VideoClassifier
from lightning_ttn.training.recipe import Recipe

RECIPE = Recipe(epochs=1, batch_size=4, lr=0.01)


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    clips = torch.rand(4, 1, 30, 28, 28, generator=g)  # (B, 1, T, H, W)
    return DataLoader(TensorDataset(clips, torch.arange(4)), batch_size=4)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> tuple[Path, VideoClassifier]:
    """A checkpoint written from Python (the recipe is a dataclass in hparams) after one epoch."""
    pl.seed_everything(0)
    module = VideoClassifier(LeNet5((4, 14), "ttconv3d"), RECIPE)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path_factory.mktemp("root"),
    )
    trainer.fit(module, _loader(0), _loader(1))
    path = tmp_path_factory.mktemp("genuine") / "genuine.ckpt"
    trainer.save_checkpoint(path)
    return path, module


class Payload:
    """Unpickles into ``function(*args)``: the call a shared pickle can smuggle in."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.open": Payload(builtins.open, str(marker), "w"),
    }


def _contents(path: Path) -> dict:
    """What our own (trusted) checkpoint holds: the base of a crafted one."""
    return torch.load(path, weights_only=False)


def _write(path: Path, checkpoint: dict) -> Path:
    torch.save(checkpoint, path)
    return path


def test_a_genuine_checkpoint_loads_weights_only_and_rebuilds_its_network(genuine):
    path, trained = genuine
    checkpoint = torch.load(path, weights_only=True)  # plain data only: no allow-list needed
    assert checkpoint["hyper_parameters"]["recipe"] == RECIPE.to_dict()
    module = VideoClassifier.load_from_checkpoint(str(path))  # no model=
    assert module.recipe == RECIPE and module.model_name == "LeNet-5-3DTTN (4, 14)"
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value)
    assert module.val_acc_history == trained.val_acc_history and module.best_epoch == 1
    assert module.best_state is not None and module.best_state.keys() == trained.state_dict().keys()


@pytest.mark.parametrize("payload", ["os.system", "builtins.open"])
def test_a_pickle_payload_does_not_run(genuine, tmp_path, payload):
    marker, function = tmp_path / "marker", payload.rpartition(".")[2]
    checkpoint = _contents(genuine[0])
    evil = _write(tmp_path / "evil.ckpt", {**checkpoint, "extra": _payloads(marker)[payload]})
    torch.load(evil, weights_only=False)  # the old way: the payload runs
    assert marker.exists()
    marker.unlink()
    message = (rf"checkpoint {re.escape(str(evil))} refused: it needs GLOBAL \w+\.{function} "
               r"to load \(only tensors and plain data are loaded: a shared file must not run code")
    for load in (VideoClassifier.load_from_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=message) as error:
            load(str(evil))
        assert len(str(error.value).splitlines()) == 1
    with pytest.raises(CheckpointError):  # also when the caller brings the network
        VideoClassifier.load_from_checkpoint(str(evil), model=LeNet5((4, 14)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("class_path", "init_args"),
    [
        ("subprocess.call", {"args": "touch {marker}", "shell": True}),
        ("os.system", {"command": "touch {marker}"}),
    ],
)
def test_a_class_path_payload_does_not_run(genuine, tmp_path, class_path, init_args):
    marker = tmp_path / "marker"
    init_args = {k: v.format(marker=shlex.quote(str(marker))) if isinstance(v, str) else v
                 for k, v in init_args.items()}
    checkpoint = _contents(genuine[0])
    checkpoint["network"] = {"class_path": class_path, "init_args": init_args}
    evil = _write(tmp_path / "evil.ckpt", checkpoint)
    module_name, _, name = class_path.rpartition(".")
    getattr(importlib.import_module(module_name), name)(**init_args)  # the old way: it runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(evil))} refused: "
                       rf"network class_path "
                       rf"'{class_path}' is not an imported VideoNetwork subclass; allowed "
                       r"networks: .*lightning_ttn.models.LeNet5"):
        VideoClassifier.load_from_checkpoint(str(evil))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("network", r"network class_path 'evil_network.Net' is not an imported VideoNetwork"),
        # LightningCLI's instantiator parses hparams with jsonargparse, which imports class paths
        ("recipe", r"hyper_parameters.recipe.class_path names a class \(only 'network' may"),
        ("model", r"hyper_parameters.model names a class"),
    ],
)
def test_a_class_path_is_never_imported(genuine, tmp_path, monkeypatch, where, message):
    marker = tmp_path / "marker"
    (tmp_path / "evil_network.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from lightning_ttn.models import VideoNetwork\n"
        "class Net(VideoNetwork):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = _contents(genuine[0])
    named = {"class_path": "evil_network.Net", "init_args": {}}
    if where == "network":
        checkpoint["network"] = named
    else:
        hparams = checkpoint["hyper_parameters"]
        hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
        hparams[where] = named
    evil = _write(tmp_path / "evil.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match=message):
        VideoClassifier.load_from_checkpoint(str(evil))
    assert not marker.exists() and "evil_network" not in sys.modules


@pytest.mark.parametrize(
    ("init_args", "message"),
    [
        ({"channels": torch.tensor([4, 14])}, r"network init_args.channels is a Tensor; "
         r"init_args must be plain data"),
        ({"channels": [4, 14], "bogus": 1}, r"lightning_ttn.models.LeNet5 refuses its "
         r"init_args: .*unexpected keyword argument 'bogus'"),
        ({"channels": [4, -1]}, r"refuses its init_args: channels must be two positive ints"),
    ],
)
def test_bad_init_args_are_refused(genuine, tmp_path, init_args, message):
    checkpoint = _contents(genuine[0])
    checkpoint["network"] = {"class_path": "lightning_ttn.models.LeNet5", "init_args": init_args}
    path = _write(tmp_path / "bad.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match=message):
        VideoClassifier.load_from_checkpoint(str(path))


def test_a_bad_recipe_is_refused(genuine, tmp_path):
    checkpoint = _contents(genuine[0])
    checkpoint["hyper_parameters"]["recipe"]["learning_rate"] = 0.1
    path = _write(tmp_path / "bad.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(path))}: unknown "
                       r"recipe field\(s\) \['learning_rate'\]"):
        VideoClassifier.load_from_checkpoint(str(path))


def test_missing_and_unreadable_files_get_short_errors(tmp_path):
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path}/none.ckpt: no such file"):
        load_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path}/junk.ckpt cannot be read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        VideoClassifier.load_from_checkpoint(str(tmp_path / "none.ckpt"), weights_only=False)


def test_hyperparameters_are_saved_as_plain_data():
    hparams = plain_hyperparameters({"recipe": RECIPE, "data_dir": Path("data"), "n": 3})
    assert hparams == {"recipe": RECIPE.to_dict(), "data_dir": "data", "n": 3}
