"""VideoMNISTDataModule: argument checks, class-balanced seeded subsets, batches."""

from __future__ import annotations

import gc
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_ttn.data import VideoMNISTDataModule
from lightning_ttn.data.cache import open_split


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
    with pytest.raises(ValueError, match=r"train_videos=4010 .* the maximum is train_videos=4000"):
        _dm(data_dir, train_videos=4010)


def test_predict_is_the_test_split(data_dir):
    dm = _dm(data_dir, stage="predict", test_videos=20, batch_size=20)
    x_pred, y_pred = next(iter(dm.predict_dataloader()))
    x_test, y_test = next(iter(dm.test_dataloader()))
    assert torch.equal(x_pred, x_test) and torch.equal(y_pred, y_test)


def test_worker_processes(data_dir):
    dm = _dm(data_dir, stage="validate", val_videos=40, batch_size=20, num_workers=1)
    loader = dm.val_dataloader()
    assert loader.persistent_workers
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
