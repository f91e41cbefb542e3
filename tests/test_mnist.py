"""Digit sources: embedded split, IDX reading/validation, download from a local HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import shutil
import socket
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lightning_ttn.data.mnist import (
    MNIST_FILES,
    MnistFileError,
    download_file,
    load_digits,
    read_embedded,
    read_idx_images,
    read_idx_labels,
    read_mnist,
)

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_shared = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"offline MNIST test split not found at {SHARED_MNIST} (../shared beside the repo)",
)
LABELS = "t10k-labels-idx1-ubyte.gz"
IMAGES = "t10k-images-idx3-ubyte.gz"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class _CutShortHandler(_QuietHandler):
    """Announces the whole file in Content-Length but sends only its first half, then closes."""

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2])


@pytest.fixture
def serve():
    """Starts HTTP servers on 127.0.0.1 (port 0) serving a directory; yields a URL factory."""
    servers = []

    def start(directory: Path, handler_class: type = _QuietHandler) -> str:
        handler = functools.partial(handler_class, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _refused_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">4I", 2051, len(images), 28, 28) + images.tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(">2I", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


# ----------------------------------------------------------------------------- embedded
def test_embedded_split_is_class_balanced_and_disjoint():
    src = read_embedded()
    assert src.name == "embedded"
    for split, per_class in ((src.train, 400), (src.val, 50), (src.test, 50)):
        assert split.digits.dtype == np.uint8 and split.digits.shape[1:] == (28, 28)
        assert split.labels.dtype == np.int64
        assert np.array_equal(np.bincount(split.labels, minlength=10), [per_class] * 10)
    train, val, test = (set(s.index.tolist()) for s in (src.train, src.val, src.test))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 5000
    assert src.train.digits.max() == 255 and src.train.digits.mean() > 20  # 0..255 scale
    assert read_embedded().checksum == src.checksum


def test_embedded_digits_look_like_their_labels():
    # the label column is the last one: the mean "1" is much thinner than the mean "0"
    src = read_embedded()
    ink = [src.train.digits[src.train.labels == c].mean() for c in range(10)]
    assert ink[1] < 0.6 * ink[0]


# ----------------------------------------------------------------------------- IDX reading
@needs_shared
def test_reads_official_test_split():
    images = read_idx_images(SHARED_MNIST / IMAGES)
    labels = read_idx_labels(SHARED_MNIST / LABELS)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.max() == 9
    assert np.bincount(labels).min() > 850


def test_missing_truncated_and_wrong_files_are_named(tmp_path):
    with pytest.raises(MnistFileError, match=r"nothere-images.*missing"):
        read_idx_images(tmp_path / "nothere-images-idx3-ubyte.gz")
    short = tmp_path / "short-images-idx3-ubyte.gz"
    with gzip.open(short, "wb") as f:
        f.write(struct.pack(">4I", 2051, 10, 28, 28) + bytes(28 * 28 * 3))
    with pytest.raises(MnistFileError, match=r"short-images.*truncated.*10 images"):
        read_idx_images(short)
    labels_as_images = tmp_path / "l-idx1-ubyte.gz"
    _write_idx_labels(labels_as_images, np.zeros(5))
    with pytest.raises(MnistFileError, match=r"magic 2049 \(expected 2051\)"):
        read_idx_images(labels_as_images)
    cut = tmp_path / "cut.gz"
    _write_idx_labels(cut, np.zeros(5000))
    cut.write_bytes(cut.read_bytes()[:40])  # truncated gzip stream
    with pytest.raises(MnistFileError, match=r"cut.gz is not a complete gzip file"):
        read_idx_labels(cut)


@pytest.fixture
def fake_full_mnist(tmp_path):
    """Full-MNIST layout: a synthetic 50,020-digit training file plus the real test split."""
    if not (SHARED_MNIST / IMAGES).is_file():
        pytest.skip(f"offline MNIST test split not found at {SHARED_MNIST}")
    d = tmp_path / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_020, 28, 28), np.uint8)
    _write_idx_images(d / "train-images-idx3-ubyte.gz", images)
    _write_idx_labels(d / "train-labels-idx1-ubyte.gz", np.arange(50_020) % 10)
    for name in (IMAGES, LABELS):
        shutil.copy(SHARED_MNIST / name, d / name)
    return d


def test_full_mnist_splits(fake_full_mnist):
    src = read_mnist(fake_full_mnist)
    assert src.name == "mnist"
    assert [len(s.labels) for s in (src.train, src.val, src.test)] == [50_000, 20, 10_000]
    assert src.val.index[0] == 50_000 and src.test.index[0] == 50_020
    assert np.array_equal(src.test.labels, read_idx_labels(SHARED_MNIST / LABELS))


def test_source_selection(fake_full_mnist, tmp_path, caplog):
    assert load_digits("mnist", mnist_dir=fake_full_mnist).name == "mnist"
    assert load_digits("auto", mnist_dir=fake_full_mnist, mirrors=()).name == "mnist"
    with caplog.at_level(logging.WARNING):
        assert load_digits("auto", data_dir=tmp_path / "empty", mirrors=()).name == "embedded"
    assert "embedded" in caplog.text
    with pytest.raises(MnistFileError, match=r"source='mnist' needs the MNIST IDX files"):
        load_digits("mnist", data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"unknown digit source 'imagenet'"):
        load_digits("imagenet")


# ----------------------------------------------------------------------------- download
@needs_shared
def test_download_from_local_mirror_checks_md5(serve, tmp_path):
    url = serve(SHARED_MNIST)
    path = download_file(LABELS, tmp_path / "dl", mirrors=[url], timeout=5)
    assert _md5(path) == MNIST_FILES[LABELS]
    assert path.read_bytes() == (SHARED_MNIST / LABELS).read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [LABELS]
    assert len(read_idx_labels(path)) == 10000


@needs_shared
def test_corrupted_download_is_rejected_and_nothing_is_left(serve, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((SHARED_MNIST / LABELS).read_bytes())
    data[100:104] = bytes(b ^ 0xFF for b in data[100:104])
    (bad / LABELS).write_bytes(bytes(data))
    actual = hashlib.md5(bytes(data)).hexdigest()
    target = tmp_path / "dl"
    with pytest.raises(
        MnistFileError,
        match=rf"MD5 mismatch for {LABELS}.*expected {MNIST_FILES[LABELS]}, got {actual}",
    ):
        download_file(LABELS, target, mirrors=[serve(bad)], timeout=5)
    assert list(target.iterdir()) == [], "no partial or corrupted file may remain"


@needs_shared
def test_mirror_fallback(serve, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    mirrors = [_refused_url(), serve(empty), serve(SHARED_MNIST)]  # refused, 404, good
    path = download_file(LABELS, tmp_path / "dl", mirrors=mirrors, timeout=5)
    assert _md5(path) == MNIST_FILES[LABELS]
    with pytest.raises(MnistFileError, match=r"could not download t10k-labels") as err:
        download_file(LABELS, tmp_path / "dl2", mirrors=mirrors[:2], timeout=5)
    assert "404" in str(err.value) and mirrors[0] in str(err.value)


@needs_shared
def test_download_source_needs_all_four_files(serve, tmp_path):
    # the shared copy has no training split: "download" must fail naming the missing file
    with pytest.raises(MnistFileError, match=r"could not download train-images-idx3-ubyte.gz"):
        load_digits("download", data_dir=tmp_path, mirrors=[serve(SHARED_MNIST)], timeout=5)
    # and "auto" falls back to the embedded digits
    assert load_digits("auto", data_dir=tmp_path, mirrors=[serve(SHARED_MNIST)]).name == "embedded"


def test_connection_closed_early_is_an_incomplete_transfer(serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 10_000, np.uint8).tobytes()
    (served / "blob.gz").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    target = tmp_path / "dl"
    mirrors = [serve(served, _CutShortHandler)]
    pattern = r"incomplete download of blob.gz from .*: got 5000 of 10000 bytes"
    with pytest.raises(MnistFileError, match=pattern) as err:
        download_file("blob.gz", target, mirrors=mirrors, md5=md5, timeout=5)
    assert "MD5" not in str(err.value)
    assert list(target.iterdir()) == [], "no partial file may remain"
    # the same file sent whole is accepted
    whole = download_file("blob.gz", target, mirrors=[serve(served)], md5=md5, timeout=5)
    assert whole.read_bytes() == payload
