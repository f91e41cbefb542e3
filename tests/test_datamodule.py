"""VideoMNISTDataModule: argument checks, class-balanced seeded subsets, batches."""

from __future__ import annotations

import gc
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_ttn.data import VideoMNISTDataModule, render_clips
from lightning_ttn.data.cache import open_split
from lightning_ttn.data.datamodule import EVAL_SUBSET_SEED, balanced_subset
from lightning_ttn.data.mnist import read_embedded


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One rendered cache of the embedded digits shared by the tests of this module."""
    path = tmp_path_factory.mktemp("vmnist")
    VideoMNISTDataModule(data_dir=str(path), source="embedded").prepare_data()
    return str(path)


def _dm(data_dir, stage="fit", **kwargs) -> VideoMNISTDataModule:
    dm = VideoMNISTDataModule(data_dir=data_dir, source="embedded", **kwargs)
    dm.setup(stage)
    return dm


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"source": "cifar"}, r"source='cifar' is not one of \('auto', 'embedded'"),
        ({"train_videos": 15}, r"train_videos=15 must be None .* positive multiple of 10"),
        ({"train_videos": 0}, r"train_videos=0 must be"),
        ({"val_videos": -10}, r"val_videos=-10 must be"),
        ({"test_videos": 2.5}, r"test_videos=2.5 must be"),
        ({"batch_size": 0}, r"batch_size=0 must be an integer >= 1"),
        ({"num_workers": -1}, r"num_workers=-1 must be an integer >= 0"),
        ({"subset_seed": -1}, r"subset_seed=-1 must be a non-negative integer"),
        ({"motion": "smooth"}, r"motion='smooth' is not one of \('table1', 'authors'\)"),
        ({"verify": "yes"}, r"verify='yes' must be True or False"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        VideoMNISTDataModule(**kwargs)


def test_docstring_documents_every_argument():
    doc = VideoMNISTDataModule.__doc__
    for name in inspect.signature(VideoMNISTDataModule.__init__).parameters:
        if name != "self":
            assert f"    {name}: " in doc, f"{name} missing from Args"


def test_batches(data_dir):
    dm = _dm(data_dir, train_videos=100, batch_size=30)
    assert dm.num_classes == 10 and dm.source_name == "embedded"
    loader = dm.train_dataloader()
    batches = list(loader)
    assert [len(y) for _, y in batches] == [30, 30, 30, 10]  # drop_last=False
    x, y = batches[0]
    assert x.shape == (30, 1, 30, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert np.array_equal(np.bincount(torch.cat([b[1] for b in batches]).numpy()), [10] * 10)


def test_train_subset_is_class_balanced_and_seeded(data_dir):
    a = _dm(data_dir, train_videos=100, subset_seed=0)
    b = _dm(data_dir, train_videos=100, subset_seed=0)
    c = _dm(data_dir, train_videos=100, subset_seed=1)
    assert np.array_equal(a.train_indices, b.train_indices)
    assert not np.array_equal(a.train_indices, c.train_indices)
    labels = open_split(a.cache_entry, "train").labels
    assert np.array_equal(np.bincount(labels[a.train_indices], minlength=10), [10] * 10)
    small = _dm(data_dir, train_videos=50, subset_seed=0)
    assert set(small.train_indices) < set(a.train_indices), "smaller subsets are nested"
    # the shuffle order is seeded too
    ya = next(iter(a.train_dataloader()))[1]
    assert torch.equal(ya, next(iter(b.train_dataloader()))[1])


def test_eval_subsets_do_not_depend_on_subset_seed(data_dir):
    a = _dm(data_dir, stage=None, val_videos=50, test_videos=20, subset_seed=0)
    b = _dm(data_dir, stage=None, val_videos=50, test_videos=20, subset_seed=3)
    for split in ("val", "test"):
        assert np.array_equal(a.datasets[split].rows, b.datasets[split].rows)
    assert len(a.datasets["val"]) == 50
    assert np.array_equal(np.bincount(a.datasets["test"].labels), [2] * 10)
    assert len(a.datasets["train"]) == 4000  # None = the whole split


def test_too_many_videos_names_the_maximum(data_dir):
    with pytest.raises(ValueError, match=r"train_videos=4010 exceeds the 4000 clips .* \(400 per"):
        _dm(data_dir, train_videos=4010)  # at construction, before any file is written


def test_predict_is_the_test_split(data_dir):
    dm = _dm(data_dir, stage="predict", test_videos=20, batch_size=20)
    x_pred, y_pred = next(iter(dm.predict_dataloader()))
    x_test, y_test = next(iter(dm.test_dataloader()))
    assert torch.equal(x_pred, x_test) and torch.equal(y_pred, y_test)


def test_worker_processes(data_dir):
    dm = _dm(data_dir, stage="validate", val_videos=40, batch_size=20, num_workers=1)
    loader = dm.val_dataloader()
    assert loader.num_workers == 1 and not loader.persistent_workers
    ys = torch.cat([y for _, y in loader])
    del loader  # shut the persistent worker down here rather than in a later test
    gc.collect()
    assert np.array_equal(ys.numpy(), dm.datasets["val"].labels)


def test_loaders_need_setup():
    with pytest.raises(RuntimeError, match="setup"):
        VideoMNISTDataModule(source="embedded").train_dataloader()


def test_ddp_training_shuffle_is_seeded_by_subset_seed_and_partitions_the_videos(data_dir):
    orders = {}
    for rank in (0, 1):
        dm = _dm(data_dir, train_videos=40, subset_seed=3, batch_size=4)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 3
        orders[rank] = [int(i) for i in loader.sampler]
    assert len(orders[0]) == len(orders[1]) == 20
    assert sorted(orders[0] + orders[1]) == list(range(40))  # each video on exactly one rank
    again = _dm(data_dir, train_videos=40, subset_seed=3, batch_size=4)
    again.trainer = SimpleNamespace(world_size=2, global_rank=0)
    assert [int(i) for i in again.train_dataloader().sampler] == orders[0]


def test_eval_clips_come_class_interleaved(data_dir):
    """One clip of each class, then the next of each: a few batches cover every class."""
    a = _dm(data_dir, stage=None, train_videos=100, val_videos=50, subset_seed=0, batch_size=10)
    b = _dm(data_dir, stage=None, train_videos=100, val_videos=50, subset_seed=5, batch_size=10)
    x, y = next(iter(a.val_dataloader()))
    assert y.tolist() == list(range(10))
    assert np.array_equal(a.datasets["val"].labels, np.tile(np.arange(10), 5))
    x_b, y_b = next(iter(b.val_dataloader()))
    assert torch.equal(x, x_b) and torch.equal(y, y_b), "fixed order, whatever subset_seed"
    # the same videos as before, only served in another order (split order within a class)
    labels = open_split(a.cache_entry, "val").labels
    chosen = balanced_subset(labels, 50, EVAL_SUBSET_SEED, "val_videos")
    rows = a.datasets["val"].rows
    assert np.array_equal(np.sort(rows), chosen)
    for c in range(10):
        assert np.array_equal(rows[labels[rows] == c], chosen[labels[chosen] == c])
    # the whole test split (None) too; the training subset keeps its sorted rows
    assert a.datasets["test"].labels[:20].tolist() == list(range(10)) * 2
    train_labels = open_split(a.cache_entry, "train").labels
    assert np.array_equal(a.train_indices, balanced_subset(train_labels, 100, 0, "train_videos"))


def test_motion_selects_the_authors_clips(data_dir):
    table1 = _dm(data_dir, stage="validate", val_videos=10)
    dm = _dm(data_dir, stage="validate", val_videos=10, motion="authors")
    assert dm.cache_entry != table1.cache_entry
    x, _ = next(iter(dm.val_dataloader()))
    val = read_embedded().val
    rows = dm.datasets["val"].rows
    expected = render_clips(val.digits[rows], val.labels[rows], 0, val.index[rows], "authors")
    assert torch.equal(x, torch.from_numpy(expected).unsqueeze(1).float() / 255)


def test_verify_rerenders_a_corrupted_entry(tmp_path):
    kwargs = {"data_dir": str(tmp_path), "source": "embedded", "val_videos": 10}
    VideoMNISTDataModule(**kwargs).prepare_data()
    plain = VideoMNISTDataModule(**kwargs)
    plain.setup("validate")
    videos = plain.cache_entry / "val_videos.npy"
    good = videos.read_bytes()
    data = bytearray(good)
    data[-2000:] = bytes(b ^ 0xFF for b in data[-2000:])  # same size: only sha256 can tell
    videos.write_bytes(bytes(data))
    corrupted = VideoMNISTDataModule(**kwargs)
    corrupted.setup("validate")
    assert corrupted.cache_entry == plain.cache_entry and videos.read_bytes() == bytes(data)
    checked = VideoMNISTDataModule(**kwargs, verify=True)
    checked.prepare_data()
    assert videos.read_bytes() == good
    videos.write_bytes(bytes(data))
    checked = VideoMNISTDataModule(**kwargs, verify=True)
    checked.setup("validate")  # without prepare_data, e.g. on another DDP rank
    assert videos.read_bytes() == good


def test_shuffle_order_does_not_depend_on_num_workers(data_dir):
    """num_workers changes the speed only: the same training order in every epoch."""
    orders = []
    for workers in (0, 2):
        dm = _dm(data_dir, train_videos=20, val_videos=10, test_videos=10, batch_size=5,
                 num_workers=workers)
        loader = dm.train_dataloader()
        orders.append([y.tolist() + [float(x.sum())] for _ in range(3) for x, y in loader])
    assert orders[0] == orders[1]
