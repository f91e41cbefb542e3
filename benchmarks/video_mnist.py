"""Video-MNIST throughput: rendering, cache write, opening a cached split, reading batches.

Usage::

    python benchmarks/video_mnist.py            # 10,000 clips
    python benchmarks/video_mnist.py --full     # 70,000 clips (the paper's dataset size)
    python benchmarks/video_mnist.py --motion authors

Digits come from full MNIST in ``<data_dir>/mnist`` when present, else the 5,000 embedded digits
tiled to the requested count. The cache is written to a temporary directory and deleted.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from lightning_ttn.data.cache import get_or_render, open_split
from lightning_ttn.data.datamodule import VideoClipDataset, collate_clips
from lightning_ttn.data.mnist import DigitSplit, load_digits, make_source
from lightning_ttn.data.video_mnist import MOTIONS, render_clips


def _digits(n: int, data_dir: str) -> tuple[str, DigitSplit]:
    source = load_digits("auto", data_dir=data_dir, mirrors=())
    splits = [source.train, source.val, source.test]
    digits, labels = (np.concatenate([s[k] for s in splits]) for k in (0, 1))
    reps = -(-n // len(digits))
    tiled = DigitSplit(
        np.tile(digits, (reps, 1, 1))[:n], np.tile(labels, reps)[:n], np.arange(n, dtype=np.int64)
    )
    return source.name, tiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10_000, help="clips to render")
    parser.add_argument("--full", action="store_true", help="render 70,000 clips")
    parser.add_argument("--data-dir", default="data", help="where to look for MNIST IDX files")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--motion", choices=MOTIONS, default="table1", help="motion preset")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's own choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 70_000 if args.full else args.clips
    name, split = _digits(n, args.data_dir)
    rows = []

    t0 = time.perf_counter()
    render_clips(*split[:2], 0, split.index, args.motion)
    dt = time.perf_counter() - t0
    rows.append((f"render {n:,} clips (in memory)", f"{dt:.2f} s", f"{n / dt:,.0f} clips/s"))

    tiny = DigitSplit(*(a[:10] for a in split))
    source = make_source(f"benchmark-{name}", split, tiny, tiny)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        entry = get_or_render(source, 0, tmp, motion=args.motion)
        dt = time.perf_counter() - t0
        rows.append(
            (f"render + write cache ({n:,} clips, sha256)", f"{dt:.2f} s", f"{n / dt:,.0f} clips/s")
        )

        t0 = time.perf_counter()
        cached = open_split(entry, "train")
        dt = time.perf_counter() - t0
        rows.append(("open cached split (mmap, size/shape check)", f"{dt * 1e3:.1f} ms", ""))

        t0 = time.perf_counter()
        open_split(entry, "train", verify=True)
        dt = time.perf_counter() - t0
        rows.append(("open cached split with verify=True (sha256)", f"{dt:.2f} s", ""))

        dataset = VideoClipDataset(entry / "train_videos.npy", np.arange(n), cached.labels)
        order = np.random.default_rng(0).permutation(n)
        n_batches = min(500, n // args.batch_size)
        t0 = time.perf_counter()
        for b in range(n_batches):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            collate_clips([dataset[int(i)] for i in idx])
        dt = (time.perf_counter() - t0) / n_batches
        rows.append(
            (f"read random batch of {args.batch_size} (uint8 -> float)", f"{dt * 1e3:.2f} ms",
             f"{args.batch_size / dt:,.0f} clips/s")  # fmt: skip
        )

    print(f"digits: {name}, motion: {args.motion}, torch threads: {torch.get_num_threads()}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'step':<{width}} | {'time':>9} | {'throughput':>15} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 17}|")
    for step, t, rate in rows:
        print(f"| {step:<{width}} | {t:>9} | {rate:>15} |")


if __name__ == "__main__":
    main()
