"""On-disk cache of rendered Video-MNIST splits.

Layout of one entry, ``<data_dir>/video_mnist/<key>/``::

    train_videos.npy   uint8 (N, 30, 28, 28), memory-mappable
    train_labels.npy   int64 (N,)
    train_index.npy    int64 (N,)  the digit's index in its source (= the clip's render id)
    val_*.npy, test_*.npy
    manifest.json      written last: key, generator version, motion preset (when not "table1")
                       and its table, seed, source name and checksum, and per file its shape,
                       dtype, size and sha256

``<key>`` hashes everything that determines the bytes (generator version, motion preset and
table, frame size, seed, digit source checksum), so a change gives a new entry, never a stale
hit. The preset's name enters only when it is not ``"table1"``, so ``"table1"`` entries keep the
keys they had before presets existed. Files are written to temporary names in the entry directory
and moved into place with ``os.replace``; concurrent writers (DDP ranks, sweep workers) serialise
on ``<entry>.lock`` and re-check the entry after acquiring it. Opening always checks every file's
size and shape against the manifest; ``verify=True`` also recomputes the sha256. A manifest that
is not a JSON object, or lacks a field, makes the entry corrupt like a bad file does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from filelock import FileLock

from lightning_ttn.data.mnist import DigitSource
from lightning_ttn.data.video_mnist import (
    FRAMES,
    GENERATOR_VERSION,
    MOTION_TABLES,
    SIZE,
    check_motion,
    render_clips,
)
from lightning_ttn.fileio import atomic_path, file_digest, write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
CHUNK_CLIPS = 2000  # clips rendered per step into the memory-mapped file (~47 MB)
# What the manifest records about each file, with its JSON type.
_FILE_FIELDS = {"shape": list, "dtype": str, "size": int, "sha256": str}


class CacheError(RuntimeError):
    """A cache entry is missing, incomplete or corrupted."""


class CachedSplit(NamedTuple):
    """A split opened from the cache.

    Attributes:
        videos: uint8 (N, 30, 28, 28), memory-mapped read-only.
        labels: int64 (N,).
        index: int64 (N,), the digits' indices in their source.
    """

    videos: np.ndarray
    labels: np.ndarray
    index: np.ndarray


def cache_identity(
    source: DigitSource,
    seed: int,
    generator_version: int | None = None,
    motion_table: dict | None = None,
    motion: str = "table1",
) -> dict:
    """Everything that determines the rendered bytes (hashed into the key, stored in manifest).

    Args:
        source: the digits.
        seed: render seed.
        generator_version: defaults to the current generator's.
        motion_table: defaults to the preset's table.
        motion: motion preset, one of :data:`~lightning_ttn.data.video_mnist.MOTIONS`; recorded
            only when not ``"table1"``, so ``"table1"`` keys are those from before presets.
    """
    check_motion(motion)
    identity = {
        "generator_version": GENERATOR_VERSION if generator_version is None else generator_version,
        "motion_table": MOTION_TABLES[motion] if motion_table is None else motion_table,
        "frames": FRAMES,
        "size": SIZE,
        "seed": int(seed),
        "source": {"name": source.name, "checksum": source.checksum},
    }
    if motion != "table1":
        identity["motion"] = motion
    return identity


def cache_key(identity: dict) -> str:
    """Short hex digest of :func:`cache_identity`."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(data_dir: str | os.PathLike, key: str) -> Path:
    """``<data_dir>/video_mnist/<key>``."""
    return Path(data_dir) / "video_mnist" / key


def _file_names(split: str) -> tuple[str, str, str]:
    return f"{split}_videos.npy", f"{split}_labels.npy", f"{split}_index.npy"


def read_manifest(entry: str | os.PathLike) -> dict:
    """Reads ``manifest.json`` of an entry.

    Raises:
        CacheError: no manifest (entry absent or never completed), unreadable, or not a JSON
            object.
    """
    path = Path(entry) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CacheError(f"cache entry {entry} is incomplete: no {MANIFEST}") from e
    except (OSError, ValueError) as e:
        raise CacheError(f"cache manifest {path} is unreadable: {e}") from e
    if not isinstance(manifest, dict):
        raise CacheError(
            f"cache manifest {path} holds a JSON {type(manifest).__name__}, not an object"
        )
    return manifest


def _file_meta_of(entry: Path, manifest: dict, name: str) -> dict:
    """The manifest's record of file ``name``, checked to have every field of the right type."""
    files = manifest.get("files")
    if not isinstance(files, dict) or name not in files:
        raise CacheError(f"cache manifest in {entry} does not list {name}")
    meta = files[name]
    for field, kind in _FILE_FIELDS.items():
        if not isinstance(meta, dict) or field not in meta:
            raise CacheError(f"cache manifest in {entry} has no {field!r} for {name}")
        if type(meta[field]) is not kind:  # exact JSON types: true is no size
            raise CacheError(
                f"cache manifest in {entry} has {field}={meta[field]!r} for {name}, "
                f"expected {kind.__name__}"
            )
    return meta


def _check_file(entry: Path, name: str, meta: dict, verify: bool) -> None:
    path = entry / name
    if not path.is_file():
        raise CacheError(f"cache file {path} is missing")
    size = path.stat().st_size
    if size != meta["size"]:
        raise CacheError(
            f"cache file {path} has {size} bytes, manifest says {meta['size']} (truncated?)"
        )
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheError(f"cache file {path} is not a valid .npy file: {e}") from e
    if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
        raise CacheError(
            f"cache file {path} holds {array.dtype} {array.shape}, manifest says "
            f"{meta['dtype']} {tuple(meta['shape'])}"
        )
    if verify:
        actual = file_digest(path)
        if actual != meta["sha256"]:
            raise CacheError(
                f"cache file {path} is corrupted: sha256 {actual}, manifest says {meta['sha256']}"
            )


def validate_entry(entry: str | os.PathLike, verify: bool = False) -> dict:
    """Checks a complete entry: manifest present, every file's size and shape (and sha256 if
    ``verify``) as recorded.

    Returns:
        The manifest.

    Raises:
        CacheError: naming the first problem found.
    """
    entry = Path(entry)
    manifest = read_manifest(entry)
    if manifest.get("key") != entry.name:
        raise CacheError(f"cache manifest in {entry} belongs to key {manifest.get('key')!r}")
    expected = {name for split in SPLITS for name in _file_names(split)}
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != expected:
        raise CacheError(f"cache manifest in {entry} does not list the files {sorted(expected)}")
    for name in sorted(expected):
        _check_file(entry, name, _file_meta_of(entry, manifest, name), verify)
    return manifest


def open_split(entry: str | os.PathLike, split: str, verify: bool = False) -> CachedSplit:
    """Opens one split of a complete entry, videos memory-mapped.

    Args:
        entry: entry directory.
        split: ``"train"``, ``"val"`` or ``"test"``.
        verify: also recompute the split's sha256 checksums (reads every byte).

    Raises:
        CacheError: the entry is incomplete or the split's files do not match the manifest.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    entry = Path(entry)
    manifest = read_manifest(entry)
    arrays = []
    for name in _file_names(split):
        _check_file(entry, name, _file_meta_of(entry, manifest, name), verify)
        arrays.append(np.load(entry / name, mmap_mode="r"))
    videos, labels, index = arrays
    return CachedSplit(videos, np.asarray(labels), np.asarray(index))


def _file_meta(path: Path, array: np.ndarray) -> dict:
    return {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "size": path.stat().st_size,
        "sha256": file_digest(path),
    }


def _write_split(
    entry: Path, split: str, source: DigitSource, seed: int, motion: str, chunk: int
) -> dict:
    digits, labels, index = source.split(split)
    names = _file_names(split)
    files = {}
    with atomic_path(entry / names[0]) as tmp:
        videos = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(digits), FRAMES, SIZE, SIZE)
        )
        for start in range(0, len(digits), chunk):
            sl = slice(start, start + chunk)
            videos[sl] = render_clips(digits[sl], labels[sl], seed, index[sl], motion)
        videos.flush()
        files[names[0]] = _file_meta(tmp, videos)
        del videos  # close the memmap before moving the file
    for name, array in zip(names[1:], (labels, index), strict=True):
        array = np.ascontiguousarray(array, dtype=np.int64)
        with atomic_path(entry / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
            files[name] = _file_meta(tmp, array)
    return files


def _render_entry(
    entry: Path, identity: dict, source: DigitSource, motion: str, chunk: int
) -> dict:
    entry.mkdir(parents=True, exist_ok=True)
    # A stale manifest would vouch for files while they are being replaced.
    (entry / MANIFEST).unlink(missing_ok=True)
    for leftover in entry.glob(".*.tmp"):  # from a writer that was killed
        leftover.unlink()
    files = {}
    for split in SPLITS:
        files.update(_write_split(entry, split, source, identity["seed"], motion, chunk))
    manifest = {"key": entry.name, **identity, "files": files}
    write_text_atomic(entry / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def get_or_render(
    source: DigitSource,
    seed: int,
    data_dir: str | os.PathLike,
    verify: bool = False,
    chunk_clips: int = CHUNK_CLIPS,
    motion: str = "table1",
) -> Path:
    """Returns the cache entry of ``(source, seed, motion)``, rendering it first if needed.

    A missing, incomplete or corrupted entry (manifest not an object or missing a field;
    size/shape mismatch; sha256 mismatch when ``verify``) is re-rendered, with a warning for the
    corrupted case. Safe to call from several processes at once.

    Args:
        source: the digits.
        seed: render seed.
        data_dir: root data directory; entries live in ``<data_dir>/video_mnist/``.
        verify: recompute the sha256 of an existing entry's files before trusting it.
        chunk_clips: clips rendered per step (bounds memory).
        motion: motion preset, one of :data:`~lightning_ttn.data.video_mnist.MOTIONS`.

    Returns:
        The entry directory.
    """
    identity = cache_identity(source, seed, motion=motion)
    entry = entry_dir(data_dir, cache_key(identity))
    try:
        validate_entry(entry, verify)
        return entry
    except CacheError:
        pass
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        try:  # another process may have rendered it while we waited
            validate_entry(entry, verify)
            return entry
        except CacheError as e:
            if (entry / MANIFEST).exists():
                log.warning("re-rendering corrupted Video-MNIST cache entry: %s", e)
        log.info(
            "rendering Video-MNIST (%s digits, seed %d, motion %s) into %s",
            source.name,
            seed,
            motion,
            entry,
        )
        _render_entry(entry, identity, source, motion, chunk_clips)
    return entry
