"""Render cache: keys, hits, corruption detection, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from lightning_ttn.data import cache
from lightning_ttn.data.cache import (
    CacheError,
    cache_identity,
    cache_key,
    get_or_render,
    open_split,
    validate_entry,
)
from lightning_ttn.data.mnist import DigitSplit, make_source, read_embedded
from lightning_ttn.data.video_mnist import AUTHORS_MOTION_TABLE, MOTION_TABLE, render_clips


def _small_source():
    """A 24/8/8-digit source cut from the embedded digits (every class present)."""
    full = read_embedded()
    parts = [DigitSplit(*(a[::stride][:n] for a in s)) for s, stride, n in
             ((full.train, 150, 24), (full.val, 50, 8), (full.test, 50, 8))]  # fmt: skip
    return make_source("embedded-small", *parts)


@pytest.fixture(scope="module")
def source():
    return _small_source()


def test_entry_holds_rendered_splits_and_manifest(source, tmp_path):
    entry = get_or_render(source, seed=5, data_dir=tmp_path)
    assert entry.parent == tmp_path / "video_mnist"
    for name in ("train", "val", "test"):
        split = open_split(entry, name, verify=True)
        digits, labels, index = source.split(name)
        assert isinstance(split.videos, np.memmap) and split.videos.dtype == np.uint8
        assert np.array_equal(split.videos, render_clips(digits, labels, 5, index))
        assert np.array_equal(split.labels, labels) and np.array_equal(split.index, index)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["key"] == entry.name
    assert manifest["source"] == {"name": "embedded-small", "checksum": source.checksum}
    assert manifest["generator_version"] == cache.GENERATOR_VERSION
    assert manifest["motion_table"]["5"]["radius_px"] == MOTION_TABLE[5]["radius_px"]
    assert manifest["files"]["train_videos.npy"]["shape"] == [24, 30, 28, 28]
    assert not list(entry.glob(".*.tmp"))


def test_second_call_is_a_hit(source, tmp_path, monkeypatch):
    entry = get_or_render(source, seed=0, data_dir=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("rendered again although the entry is valid")

    monkeypatch.setattr(cache, "render_clips", fail)
    assert get_or_render(source, seed=0, data_dir=tmp_path, verify=True) == entry


def test_anything_that_changes_the_bytes_changes_the_key(source, tmp_path, monkeypatch):
    base = cache_key(cache_identity(source, 0))
    assert cache_key(cache_identity(source, 1)) != base
    table = {**MOTION_TABLE, 0: {**MOTION_TABLE[0], "bounce_px": 9.0}}
    assert cache_key(cache_identity(source, 0, motion_table=table)) != base
    other = make_source("embedded-small", source.train, source.test, source.val)
    assert cache_key(cache_identity(other, 0)) != base

    first = get_or_render(source, seed=0, data_dir=tmp_path)
    assert get_or_render(source, seed=1, data_dir=tmp_path) != first
    monkeypatch.setattr(cache, "GENERATOR_VERSION", cache.GENERATOR_VERSION + 1)
    bumped = get_or_render(source, seed=0, data_dir=tmp_path)
    assert bumped != first
    assert json.loads((bumped / "manifest.json").read_text())["generator_version"] == (
        cache.GENERATOR_VERSION
    )


def test_table1_keys_are_those_from_before_presets():
    """Adding presets must not orphan existing "table1" entries (keys of generator version 1)."""
    embedded = read_embedded()
    assert cache_key(cache_identity(embedded, 0)) == "faa49d6c61060158"
    assert cache_key(cache_identity(embedded, 0, motion="table1")) == "faa49d6c61060158"
    assert cache_key(cache_identity(embedded, 3)) == "c0b4c05be5626de9"
    assert "motion" not in cache_identity(embedded, 0)


def test_motion_preset_has_its_own_entry(source, tmp_path):
    table1 = get_or_render(source, seed=2, data_dir=tmp_path)
    authors = get_or_render(source, seed=2, data_dir=tmp_path, motion="authors")
    assert authors != table1
    manifest = json.loads((authors / "manifest.json").read_text())
    assert manifest["motion"] == "authors"
    assert manifest["motion_table"]["8"]["rotation_deg_per_frame"] == (
        AUTHORS_MOTION_TABLE[8]["rotation_deg_per_frame"]
    )
    digits, labels, index = source.test
    assert np.array_equal(
        open_split(authors, "test").videos, render_clips(digits, labels, 2, index, "authors")
    )
    assert get_or_render(source, seed=2, data_dir=tmp_path, motion="authors") == authors
    with pytest.raises(ValueError, match=r"motion='Authors' is not one of \('table1', 'authors'\)"):
        get_or_render(source, seed=2, data_dir=tmp_path, motion="Authors")


def _rewrite_manifest(entry: Path, edit) -> None:
    path = entry / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _edit_train_videos(edit_record):
    """A manifest edit that replaces the record of train_videos.npy by ``edit_record(record)``."""

    def edit(manifest: dict) -> dict:
        files = manifest["files"]
        record = edit_record(files["train_videos.npy"])
        return {**manifest, "files": {**files, "train_videos.npy": record}}

    return edit


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda m: [], r"manifest.json holds a JSON list, not an object"),
        (lambda m: "ok", r"manifest.json holds a JSON str, not an object"),
        (
            _edit_train_videos(lambda r: {k: v for k, v in r.items() if k != "size"}),
            r"has no 'size' for train_videos.npy",
        ),
        (_edit_train_videos(list), r"has no 'shape' for train_videos.npy"),  # names only
        (
            _edit_train_videos(lambda r: {**r, "shape": 24}),
            r"has shape=24 for train_videos.npy, expected list",
        ),
    ],
    ids=["list", "string", "no-size", "record-not-object", "shape-not-list"],
)
def test_malformed_manifest_is_corrupt_and_rerendered(source, tmp_path, caplog, edit, pattern):
    entry = get_or_render(source, seed=0, data_dir=tmp_path)
    good = (entry / "manifest.json").read_text()
    _rewrite_manifest(entry, edit)
    with pytest.raises(CacheError, match=pattern):
        validate_entry(entry)
    with pytest.raises(CacheError, match=pattern):
        open_split(entry, "train")
    with caplog.at_level("WARNING"):
        assert get_or_render(source, seed=0, data_dir=tmp_path) == entry
    assert "re-rendering corrupted Video-MNIST cache entry" in caplog.text
    assert (entry / "manifest.json").read_text() == good
    validate_entry(entry, verify=True)


def test_truncated_file_is_detected_and_rerendered(source, tmp_path):
    entry = get_or_render(source, seed=0, data_dir=tmp_path)
    videos = entry / "train_videos.npy"
    good = videos.read_bytes()
    videos.write_bytes(good[: len(good) // 2])
    with pytest.raises(CacheError, match=r"train_videos.npy has \d+ bytes, manifest says"):
        open_split(entry, "train")
    with pytest.raises(CacheError, match="truncated"):
        validate_entry(entry)
    assert get_or_render(source, seed=0, data_dir=tmp_path) == entry
    assert videos.read_bytes() == good


def test_flipped_bytes_are_detected_with_verify(source, tmp_path):
    entry = get_or_render(source, seed=0, data_dir=tmp_path)
    videos = entry / "val_videos.npy"
    good = videos.read_bytes()
    data = bytearray(good)
    data[-500:-490] = bytes(b ^ 0xFF for b in data[-500:-490])
    videos.write_bytes(bytes(data))
    open_split(entry, "val")  # same size and shape: only the checksum can tell
    with pytest.raises(CacheError, match=r"val_videos.npy is corrupted: sha256"):
        open_split(entry, "val", verify=True)
    assert get_or_render(source, seed=0, data_dir=tmp_path, verify=True) == entry
    assert videos.read_bytes() == good


def test_incomplete_entry_is_not_used(source, tmp_path):
    entry = get_or_render(source, seed=0, data_dir=tmp_path)
    (entry / "manifest.json").unlink()
    with pytest.raises(CacheError, match="incomplete: no manifest.json"):
        open_split(entry, "test")
    assert get_or_render(source, seed=0, data_dir=tmp_path) == entry
    validate_entry(entry, verify=True)


def _render_in_child(data_dir: str, queue, barrier) -> None:
    from lightning_ttn.data import cache

    render_entry = cache._render_entry

    def counted_render(entry, *args):
        # One marker file per actual render, so the test can count them across processes.
        (Path(data_dir) / f"rendered-by-{os.getpid()}").touch()
        return render_entry(entry, *args)

    cache._render_entry = counted_render
    source = _small_source()
    barrier.wait()  # both processes ask for the missing entry at the same moment
    queue.put(str(cache.get_or_render(source, seed=7, data_dir=data_dir)))


def test_concurrent_renders_give_one_valid_entry(source, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [
        ctx.Process(target=_render_in_child, args=(str(tmp_path), queue, barrier))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    # The lock makes the second process wait and then find the first one's entry.
    assert len(list(tmp_path.glob("rendered-by-*"))) == 1
    entries = {queue.get(timeout=5) for _ in procs}
    assert len(entries) == 1
    entry = entries.pop()
    assert [p.name for p in (tmp_path / "video_mnist").iterdir() if p.is_dir()] == [
        entry.split("/")[-1]
    ]
    validate_entry(entry, verify=True)
    assert not list((tmp_path / "video_mnist" / entry.split("/")[-1]).glob(".*.tmp"))
    videos = open_split(entry, "train").videos
    assert np.array_equal(videos, render_clips(*source.train[:2], 7, source.train.index))
