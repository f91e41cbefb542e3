"""Video-MNIST preview: one clip per class drawn like the paper's Figure 2, optionally animated.

Usage::

    python -m lightning_ttn.data.preview --preview out.png [--gif out.gif] [--seed N]
        [--motion table1|authors]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from lightning_ttn.data.mnist import read_embedded
from lightning_ttn.data.video_mnist import MOTIONS, SIZE, render_clips

_GAP = 2  # background pixels between clips
_BACKGROUND = 60  # grey, so that black frames stay visible


def preview_clips(seed: int = 0, motion: str = "table1") -> np.ndarray:
    """One clip per class (0..9) rendered from the first embedded test digit of that class.

    Args:
        seed: render seed.
        motion: motion preset, one of :data:`~lightning_ttn.data.video_mnist.MOTIONS`.

    Returns:
        uint8 (10, 30, 28, 28).
    """
    test = read_embedded().test
    rows = [int(np.flatnonzero(test.labels == c)[0]) for c in range(10)]
    return render_clips(test.digits[rows], test.labels[rows], seed, test.index[rows], motion)


def save_preview(path: str, clips: np.ndarray, step: int = 2) -> None:
    """Draws clips like the paper's Figure 2: rows = classes, columns = every ``step``-th frame.

    Args:
        path: output image (PNG).
        clips: uint8 (10, T, 28, 28).
        step: frame stride.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = clips[:, ::step]  # (10, T/step, H, W)
    n_rows, n_cols = frames.shape[:2]
    cell = SIZE + _GAP
    mosaic = np.full((n_rows * cell - _GAP, n_cols * cell - _GAP), _BACKGROUND, np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            mosaic[r * cell : r * cell + SIZE, c * cell : c * cell + SIZE] = frames[r, c]
    fig, ax = plt.subplots(figsize=(n_cols * 0.62 + 0.6, n_rows * 0.62 + 0.6), dpi=110)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([r * cell + SIZE / 2 for r in range(n_rows)], [str(r) for r in range(n_rows)])
    ax.set_xticks(
        [c * cell + SIZE / 2 for c in range(n_cols)], [str(c * step) for c in range(n_cols)]
    )
    ax.set_xlabel("frame")
    ax.set_ylabel("class")
    ax.tick_params(length=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_gif(path: str, clips: np.ndarray, zoom: int = 3) -> None:
    """Saves the clips side by side as an animated GIF (one clip per class, 10 fps).

    Args:
        path: output GIF.
        clips: uint8 (N, T, 28, 28).
        zoom: integer magnification (nearest neighbour).
    """
    from PIL import Image

    n = len(clips)
    cell = SIZE + _GAP
    width = n * cell - _GAP
    images = []
    for t in range(clips.shape[1]):
        canvas = np.full((SIZE, width), _BACKGROUND, np.uint8)
        for i in range(n):
            canvas[:, i * cell : i * cell + SIZE] = clips[i, t]
        images.append(Image.fromarray(canvas).resize((width * zoom, SIZE * zoom), Image.NEAREST))
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", required=True, help="output PNG (rows = classes 0..9)")
    parser.add_argument("--gif", help="optional animated GIF of the same clips")
    parser.add_argument("--seed", type=int, default=0, help="render seed")
    parser.add_argument("--motion", choices=MOTIONS, default="table1", help="motion preset")
    args = parser.parse_args(argv)
    clips = preview_clips(args.seed, args.motion)
    save_preview(args.preview, clips)
    if args.gif:
        save_gif(args.gif, clips)


if __name__ == "__main__":
    main()
