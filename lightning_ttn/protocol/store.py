"""The run store of a sweep: one JSON record per finished run, claimed under file locks.

``<output_dir>/runs/<run_id>.json`` is a finished run's :class:`RunRecord`, written atomically;
``<run_id>.yaml`` beside it is the config that replays it; ``<run_id>.lock`` is the claim of the
worker training it (a non-blocking file lock, released by the OS if the worker dies, removed
when the record is written). A record file that does not parse is moved to
``runs/unreadable/`` and its run trained again.
``<output_dir>/sweep.yaml``/``sweep.json`` hold the sweep's resolved config (:func:`dump_config`),
and the resume policy lives here too: which settings may differ when a sweep is resumed
(:data:`RESUMABLE_KEYS`, :func:`config_differences`). Lightning-free: the
report reads records through :func:`load_records`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.protocol.schema import RunSpec, SweepConfig, SweepConfigError, parse_config
from lightning_ttn.training.record import RunRecord

# Keys that may differ when a sweep is resumed in the same output directory: they change where
# or how fast runs happen, or add runs, never what a finished run means.
RESUMABLE_KEYS = (
    "output_dir", "data_dir", "mnist_dir", "num_workers", "runs", "accelerator",
    "tensorboard", "verify", "stack",
)


def runs_dir(output_dir: str | Path) -> Path:
    """Directory of the run records, replay configs, locks and temporary files."""
    return Path(output_dir) / "runs"


def record_path(output_dir: str | Path, spec: RunSpec) -> Path:
    """The JSON file of a finished run."""
    return runs_dir(output_dir) / f"{spec.run_id}.json"


def replay_config_path(output_dir: str | Path, spec: RunSpec) -> Path:
    """The ``train.py fit`` config that replays a run."""
    return runs_dir(output_dir) / f"{spec.run_id}.yaml"


def unreadable_dir(output_dir: str | Path) -> Path:
    """Where unreadable record files are moved (kept for inspection, never reported)."""
    return runs_dir(output_dir) / "unreadable"


def _names_run(path: Path, run_id: str) -> bool:
    """Whether ``path`` holds a record that parses and names ``run_id``."""
    try:
        return RunRecord.read(path).run_id == run_id
    except (OSError, ValueError):  # JSONDecodeError is a ValueError
        return False


def is_finished(output_dir: str | Path, spec: RunSpec) -> bool:
    """Whether the run has a record that parses and names it (an unreadable file does not
    count: :func:`set_aside_unreadable` moves it away and the run is trained again)."""
    path = record_path(output_dir, spec)
    return path.exists() and _names_run(path, spec.run_id)


def set_aside_unreadable(output_dir: str | Path, specs: list[RunSpec]) -> list[Path]:
    """Moves the record files of ``specs`` that do not parse or name another run to
    :func:`unreadable_dir`; returns where they went. Records are written atomically, so such a
    file was damaged after the fact (a truncated copy, a hand edit), never caught mid-write."""
    moved = []
    for spec in specs:
        path = record_path(output_dir, spec)
        if not path.exists() or _names_run(path, spec.run_id):
            continue
        target = unreadable_dir(output_dir) / path.name
        target.parent.mkdir(exist_ok=True)
        try:
            path.replace(target)
        except FileNotFoundError:  # another worker moved it first
            continue
        moved.append(target)
    return moved


@contextmanager
def claim(output_dir: str | Path, spec: RunSpec) -> Iterator[bool]:
    """Holds the run's lock while the block runs; yields False (and holds nothing) if another
    worker holds it or the run is finished.

    The lock file is removed once the run's record exists: a worker that still acquires the
    removed file's lock then finds the record and skips the run, so no run is trained twice.
    """
    if is_finished(output_dir, spec):
        yield False
        return
    path = record_path(output_dir, spec)
    lock_path = path.with_suffix(".lock")
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        # Finished by another worker between the check and the claim?
        if is_finished(output_dir, spec):
            yield False
            return
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed worker
            stale.unlink(missing_ok=True)
        yield True
    finally:
        if is_finished(output_dir, spec):
            lock_path.unlink(missing_ok=True)
        lock.release()


def write_record(output_dir: str | Path, spec: RunSpec, record: RunRecord) -> Path:
    """Writes a finished run's record atomically."""
    path = record_path(output_dir, spec)
    write_text_atomic(path, record.to_json())
    return path


def load_records(results_dir: str | Path) -> list[RunRecord]:
    """The finished runs' records in ``<results_dir>/runs/*.json``.

    Hidden files (temporary files) are ignored; an unreadable or invalid file is skipped with a
    warning.
    """
    records = []
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            records.append(RunRecord.read(path))
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            warnings.warn(f"skipping unreadable result {path}: {e}", stacklevel=2)
    return records


def load_saved_config(results_dir: str | Path) -> SweepConfig | None:
    """The sweep config saved in the results directory, or None if there is none."""
    path = Path(results_dir, "sweep.json")
    return parse_config(json.loads(path.read_text())) if path.exists() else None


def prepare_output_dir(config: SweepConfig) -> None:
    """Creates the output directory and saves the config as sweep.yaml/sweep.json.

    Args:
        config: The resolved sweep config, already checked (a sweep that fails its checks
            must leave no files behind).

    Raises:
        SweepConfigError: the directory holds a sweep whose run-defining settings differ.
    """
    output = Path(config.output_dir)
    saved_path = output / "sweep.json"
    if saved_path.exists():
        _check_resumable(config, saved_path)
    runs_dir(output).mkdir(parents=True, exist_ok=True)
    # Workers starting together must not both pass the check and write different configs.
    with FileLock(str(output / "sweep.lock")):
        if saved_path.exists():
            _check_resumable(config, saved_path)
        yaml_text, json_text = dump_config(config)
        write_text_atomic(output / "sweep.yaml", yaml_text)
        write_text_atomic(saved_path, json_text)


def _check_resumable(config: SweepConfig, saved_path: Path) -> None:
    differences = config_differences(parse_config(json.loads(saved_path.read_text())), config)
    if differences:
        raise SweepConfigError(
            f"{saved_path.parent} holds results of a sweep with different "
            f"{', '.join(differences)} (see {saved_path}); only {', '.join(RESUMABLE_KEYS)} "
            "may change on resume. Use the same settings or another output_dir."
        )


def config_differences(saved: SweepConfig, current: SweepConfig) -> list[str]:
    """Keys, other than ``RESUMABLE_KEYS``, whose values differ between two configs.

    ``families`` may grow (a grid extended with new candidates or families adds runs and
    changes no finished one); removing or changing a candidate is a difference.
    """
    old, new = saved.to_dict(), current.to_dict()
    differences = [k for k in old if k not in RESUMABLE_KEYS + ("families",) and old[k] != new[k]]
    for family, candidates in old["families"].items():
        if any(c not in new["families"].get(family, []) for c in candidates):
            differences.append("families")
            break
    return sorted(differences)


def dump_config(config: SweepConfig) -> tuple[str, str]:
    """The config as ``(yaml_text, json_text)``, as written into the output directory."""
    data = config.to_dict()
    return yaml.safe_dump(data, sort_keys=False), json.dumps(data, indent=2) + "\n"
