"""Checkpoints that load without running their code.

A checkpoint is a pickle, and a pickle can call any function while it is read; a shared
checkpoint must not. Every checkpoint we load is read with ``torch.load(weights_only=True)``,
which only rebuilds tensors and plain data, and the network it describes is rebuilt only from a
``VideoNetwork`` subclass that is already imported (the networks ``--model.model`` offers), with
plain-data constructor arguments. The hyperparameters, which LightningCLI and
``load_from_checkpoint`` parse as constructor arguments, must be plain data naming no class.
Anything else is refused with a :class:`CheckpointError` naming the file and the reason.

What we write stays loadable that way: :func:`plain_hyperparameters` turns the recipe (a
dataclass) and paths into plain types before a checkpoint is saved.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch

from lightning_ttn.models import VideoNetwork

# Values of Lightning's ckpt_path that name no file.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc")
PLAIN_SCALARS = (str, int, float, bool, type(None))
# Keys with which jsonargparse builds (and first imports) a class.
CLASS_KEYS = ("class_path", "_class_path", "init_args")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely; the message names the file and the reason."""


def network_class_paths() -> list[str]:
    """Class paths of the ``VideoNetwork`` subclasses imported so far: what ``--model.model``
    lists and what a checkpoint may name."""
    found, pending = [], [VideoNetwork]
    while pending:
        for subclass in pending.pop().__subclasses__():
            if not subclass.__name__.startswith("LazyInstance_"):  # jsonargparse's defaults
                found.append(f"{subclass.__module__}.{subclass.__qualname__}")
            pending.append(subclass)
    return found


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True`` and checks its network description.

    Args:
        path: The checkpoint file.
        map_location: As for ``torch.load``.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointError: the file is missing or unreadable, needs more than tensors and plain
            data to load, or describes a network that is not an imported ``VideoNetwork``.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} refused: {_unpickling_reason(e)} (only tensors and plain data "
            "are loaded: a shared file must not run code)"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(e)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} refused: holds a {type(checkpoint).__name__}, not a dictionary"
        )
    if "network" in checkpoint:
        network_class(checkpoint["network"], path)
    bad = _non_plain(checkpoint.get("hyper_parameters", {}), "hyper_parameters")
    if bad:
        raise CheckpointError(f"checkpoint {path} refused: {bad}, not plain data")
    named = _class_key(checkpoint.get("hyper_parameters", {}), "hyper_parameters")
    if named:
        # LightningCLI parses the hyperparameters as init arguments: jsonargparse would
        # import whatever a class path there names.
        raise CheckpointError(
            f"checkpoint {path} refused: {named} names a class (only 'network' may, and only "
            "an imported VideoNetwork)"
        )
    return checkpoint


def check_ckpt_path(ckpt_path: str | os.PathLike | None) -> None:
    """Checks a trainer's ``ckpt_path`` as :func:`load_checkpoint` does, before the trainer reads
    it (``None`` and Lightning's ``"best"``, ``"last"``, ``"hpc"``, ``"registry..."`` pass).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    if ckpt_path is None:
        return
    name = str(ckpt_path)
    if name in SPECIAL_CKPT_PATHS or name.startswith("registry"):
        return
    load_checkpoint(ckpt_path)


def network_class(network: Any, path: str | os.PathLike) -> type[VideoNetwork]:
    """The class of a checkpoint's ``network`` description ``{"class_path", "init_args"}``,
    resolved among the imported ``VideoNetwork`` subclasses without importing anything.

    Raises:
        CheckpointError: the description is malformed, names another class, or its
            ``init_args`` are not plain data.
    """
    if not (isinstance(network, dict) and isinstance(network.get("class_path"), str)
            and isinstance(network.get("init_args"), dict)):
        raise CheckpointError(
            f"checkpoint {path} refused: its network must be {{class_path: str, init_args: dict}}"
        )
    class_path, init_args = network["class_path"], network["init_args"]
    module_name, _, name = class_path.rpartition(".")
    # sys.modules only: checking a checkpoint never imports (runs) a module.
    found = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(found, type) and class_path in network_class_paths()):
        raise CheckpointError(
            f"checkpoint {path} refused: network class_path {class_path!r} is not an imported "
            f"VideoNetwork subclass; allowed networks: {', '.join(network_class_paths())}"
        )
    bad = _non_plain(init_args, "init_args")
    if bad:
        raise CheckpointError(
            f"checkpoint {path} refused: network {bad}; init_args must be plain data (str, "
            "int, float, bool, None, lists and dicts)"
        )
    return found


def build_network(checkpoint: dict[str, Any], path: str | os.PathLike) -> VideoNetwork:
    """The network a checkpoint (from :func:`load_checkpoint`) describes, freshly initialized.

    Raises:
        CheckpointError: the checkpoint has no description, or the class refuses its arguments.
    """
    if "network" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} carries no network description: pass model=...")
    network = checkpoint["network"]
    cls = network_class(network, path)
    try:
        return cls(**network["init_args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: {network['class_path']} refuses its init_args: {e}"
        ) from None


def plain_hyperparameters(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with dataclasses (the recipe) as dicts and paths as strings, so that the
    checkpoint loads with ``weights_only=True``."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return {key: plain(value) for key, value in hparams.items()}


def _non_plain(value: Any, where: str) -> str | None:
    """Where ``value`` holds something other than plain data, described; ``None`` if nowhere."""
    if isinstance(value, PLAIN_SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            return f"{where} has keys other than str and int"
        items = ((f"{where}.{k}", v) for k, v in value.items())
    else:
        return f"{where} is a {type(value).__name__}"
    return next((bad for key, v in items if (bad := _non_plain(v, key))), None)


def _class_key(value: Any, where: str) -> str | None:
    """Where a dict in ``value`` names a class to build (``class_path``, or a top-level
    ``model``), described; ``None`` if nowhere."""
    if isinstance(value, (list, tuple)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        for key in CLASS_KEYS + (("model",) if where == "hyper_parameters" else ()):
            if key in value:
                return f"{where}.{key}"
        items = [(f"{where}.{k}", v) for k, v in value.items()]
    else:
        return None
    return next((named for key, v in items if (named := _class_key(v, key))), None)


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """What the file needed, from torch's weights_only error (whose wording varies)."""
    text = str(error)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return f"it needs GLOBAL {found.group(1).rstrip('.')} to load"
    detail = text.rpartition("WeightsUnpickler error:")[2].strip() or text
    return (detail.splitlines() or [type(error).__name__])[0].strip()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
