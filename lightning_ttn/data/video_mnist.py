"""Video-MNIST generator (Ras et al. 2019, Section 3.2 and Table 1).

Each MNIST digit becomes a 30-frame 28x28 clip in which the digit undergoes its class's affine
motion (scale, rotation, x/y translation). All clips are rendered at once with batched
``F.affine_grid`` / ``F.grid_sample`` warps.

Conventions (as displayed, rows growing downward):
    * translation ``tx`` is in pixels to the right, ``ty`` in pixels downward;
    * rotation angles are in degrees, positive = counter-clockwise as displayed, negative =
      clockwise;
    * scale 1 is the original size, about the frame centre.

The per-class parameter ranges live in :data:`MOTION_TABLE`. Each clip is a pure function of
``(digit, label, seed, id)``: its random variations are drawn from
``np.random.default_rng([seed, id])``, so any subset renders byte-identically to the same clips
of the full set.

Run ``python -m lightning_ttn.data.video_mnist --preview out.png [--gif out.gif]`` to draw one
clip per class like the paper's Figure 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

GENERATOR_VERSION = 1
"""Bump whenever the rendered bytes change; part of the cache key."""

FRAMES = 30
SIZE = 28

# One row per class (Table 1 of the paper). Two-element lists [lo, hi] are ranges sampled
# uniformly per clip, three-element lists are equally likely choices (per frame), and directions
# called random are left/right (up/down, clockwise/counter-clockwise) with equal probability.
# Signs: rotation > 0 is counter-clockwise as displayed. The numbers follow the authors'
# generator (github.com/redsphinx/relative-baseline, omg_emotion/create_moving_mnist.py):
# 1-2 px/frame travel, 12 deg/frame rotation (360/30), circle radius 4-12 px, scale almost to 0
# and back, and random walks of -1/0/+1 px and -12/0/+12 deg per frame for class 9.
# "bounce_px": translation reflects off +/-bounce_px so the digit stays at least partly visible.
MOTION_TABLE: dict[int, dict[str, object]] = {
    0: {
        "motion": "moves horizontally, random initial direction (left/right) and speed",
        "speed_px_per_frame": [1.0, 2.0],
        "bounce_px": 10.0,
    },
    1: {
        "motion": "moves vertically, random initial direction (up/down) and speed",
        "speed_px_per_frame": [1.0, 2.0],
        "bounce_px": 10.0,
    },
    2: {
        "motion": "scales down (almost vanishes) and then up",
        "scale_start": 1.0,
        "scale_min": 0.1,
        "scale_min_frame": 15,
        "scale_end": 1.1,
    },
    3: {"motion": "rotates clockwise", "rotation_deg_per_frame": -12.0},
    4: {"motion": "rotates counter-clockwise", "rotation_deg_per_frame": 12.0},
    5: {
        "motion": "moves along a circle around the frame centre, random direction and radius",
        "radius_px": [4.0, 12.0],
        "angular_speed_deg_per_frame": 12.0,
    },
    6: {
        "motion": "scales up while rotating clockwise (ends partly out of frame)",
        "scale_start": 0.1,
        "scale_end": 2.0,
        "rotation_deg_per_frame": -12.0,
    },
    7: {
        "motion": "moves horizontally (random direction and speed) while rotating "
        "counter-clockwise",
        "speed_px_per_frame": [1.0, 2.0],
        "bounce_px": 10.0,
        "rotation_deg_per_frame": 12.0,
    },
    8: {
        "motion": "rotates clockwise, then counter-clockwise",
        "rotation_deg_per_frame": -12.0,  # until turn_frame, then the opposite way
        "turn_frame": 15,
    },
    9: {
        "motion": "random rotation and horizontal + vertical movement (random walks)",
        "rotation_step_deg": [-12.0, 0.0, 12.0],
        "step_px": [-1.0, 0.0, 1.0],
        "bounce_px": 10.0,
    },
}

# Uniform draws per clip: every clip draws the same number whatever its class, so the stream
# layout never depends on the label. Layout: [direction, speed/radius, rotation steps (T-1),
# x steps (T-1), y steps (T-1)].
_N_UNIFORMS = 2 + 3 * (FRAMES - 1)
# Clips per affine_grid/grid_sample call. The (128*30, 28, 28, 2) float32 grid is 24 MB: small
# enough for malloc to reuse the memory between blocks (bigger blocks page-fault every time),
# big enough that few parallel regions are needed when other processes share the cores.
_RENDER_BLOCK = 128


def clip_uniforms(seed: int, ids: np.ndarray) -> np.ndarray:
    """The random numbers of each clip, drawn from ``default_rng([seed, id])``.

    Returns:
        float64 (N, _N_UNIFORMS) in [0, 1).
    """
    out = np.empty((len(ids), _N_UNIFORMS))
    for row, clip_id in enumerate(ids.tolist()):
        out[row] = np.random.default_rng([seed, clip_id]).random(_N_UNIFORMS)
    return out


def _bounce(position: np.ndarray, bound: float) -> np.ndarray:
    """Folds an unbounded path into [-bound, bound] (reflecting at the walls)."""
    q = np.mod(position + bound, 4 * bound)
    return np.where(q <= 2 * bound, q, 4 * bound - q) - bound


def _uniform(u: np.ndarray, lo_hi: object) -> np.ndarray:
    lo, hi = lo_hi  # type: ignore[misc]
    return lo + (hi - lo) * u


def _choice(u: np.ndarray, values: object) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.minimum((u * len(values)).astype(np.int64), len(values) - 1)]


def motion_parameters(
    labels: np.ndarray, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame affine parameters of each clip, following :data:`MOTION_TABLE`.

    Args:
        labels: int (N,), the class of each clip.
        uniforms: float64 (N, _N_UNIFORMS) from :func:`clip_uniforms`.

    Returns:
        ``(tx, ty, angle, scale)``, each float64 (N, FRAMES): translation in pixels (right,
        down), rotation in degrees (positive = counter-clockwise as displayed), scale factor.
    """
    n = len(labels)
    t = np.arange(FRAMES, dtype=np.float64)  # (T,)
    tx = np.zeros((n, FRAMES))
    ty = np.zeros((n, FRAMES))
    angle = np.zeros((n, FRAMES))
    scale = np.ones((n, FRAMES))
    direction = np.where(uniforms[:, 0] < 0.5, -1.0, 1.0)[:, None]  # (N, 1)
    u_speed = uniforms[:, 1:2]  # (N, 1)
    steps = uniforms[:, 2:].reshape(n, 3, FRAMES - 1)  # (N, rotation/x/y, T-1)

    def rows(c: int) -> np.ndarray:
        return labels == c

    for c in (0, 1, 7):  # straight travel at a random speed and initial direction
        p = MOTION_TABLE[c]
        m = rows(c)
        path = direction[m] * _uniform(u_speed[m], p["speed_px_per_frame"]) * t
        (ty if c == 1 else tx)[m] = _bounce(path, p["bounce_px"])
    p = MOTION_TABLE[2]
    down = np.linspace(p["scale_start"], p["scale_min"], p["scale_min_frame"] + 1)
    up = np.linspace(p["scale_min"], p["scale_end"], FRAMES - p["scale_min_frame"])
    scale[rows(2)] = np.concatenate([down, up[1:]])
    for c in (3, 4, 6, 7):
        angle[rows(c)] = MOTION_TABLE[c]["rotation_deg_per_frame"] * t
    p = MOTION_TABLE[5]
    m = rows(5)
    radius = _uniform(u_speed[m], p["radius_px"])  # (M, 1)
    phase = np.deg2rad(direction[m] * p["angular_speed_deg_per_frame"] * t)  # (M, T)
    tx[m] = radius * np.cos(phase)
    ty[m] = -radius * np.sin(phase)  # direction +1 = counter-clockwise as displayed
    p = MOTION_TABLE[6]
    scale[rows(6)] = np.linspace(p["scale_start"], p["scale_end"], FRAMES)
    p = MOTION_TABLE[8]
    # clockwise up to turn_frame, then back counter-clockwise at the same speed
    angle[rows(8)] = p["rotation_deg_per_frame"] * (p["turn_frame"] - np.abs(t - p["turn_frame"]))
    p = MOTION_TABLE[9]
    m = rows(9)
    zero = np.zeros((int(m.sum()), 1))
    walk = np.cumsum(_choice(steps[m, 0], p["rotation_step_deg"]), axis=1)  # (M, T-1)
    angle[m] = np.concatenate([zero, walk], axis=1)
    for k, target in ((1, tx), (2, ty)):
        walk = np.cumsum(_choice(steps[m, k], p["step_px"]), axis=1)
        target[m] = _bounce(np.concatenate([zero, walk], axis=1), p["bounce_px"])
    return tx, ty, angle, scale


def affine_thetas(
    tx: np.ndarray, ty: np.ndarray, angle: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """``F.affine_grid`` matrices (output -> input coordinates) for the given motions.

    The forward warp is ``p_out = c + t + s * R(angle) (p_in - c)`` about the frame centre
    ``c``; grid_sample needs its inverse in normalized coordinates (``align_corners=False``:
    one pixel = 2/SIZE).

    Args:
        tx, ty, angle, scale: float64 (N, T), see :func:`motion_parameters`.

    Returns:
        float32 (N*T, 2, 3).
    """
    a = np.deg2rad(angle).reshape(-1)  # (N*T,)
    s = scale.reshape(-1)
    cos, sin = np.cos(a) / s, np.sin(a) / s
    # Inverse rotation with rows growing downward: [[cos, -sin], [sin, cos]] / s.
    theta = np.empty((a.size, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    shift = np.stack([tx.reshape(-1), ty.reshape(-1)], axis=1) * (2.0 / SIZE)  # (N*T, 2)
    theta[:, :, 2] = -np.einsum("nij,nj->ni", theta[:, :, :2], shift)
    return theta.astype(np.float32)


def _warp(digits: np.ndarray, theta: np.ndarray) -> np.ndarray:
    n = len(digits)
    images = torch.from_numpy(digits).to(torch.float32)[:, None]  # (n, 1, H, W)
    grid = F.affine_grid(torch.from_numpy(theta), [n * FRAMES, 1, SIZE, SIZE], align_corners=False)
    # Stack each clip's frames along the grid's height instead of repeating the digit 30 times.
    grid = grid.view(n, FRAMES * SIZE, SIZE, 2)  # (n, T*H, W, 2)
    frames = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (n, 1, T*H, W)
    frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    return frames.view(n, FRAMES, SIZE, SIZE).numpy()


def render_clips(
    digits: np.ndarray,
    labels: np.ndarray,
    seed: int,
    ids: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """Renders Video-MNIST clips.

    Clip ``n`` depends only on ``(digits[n], labels[n], seed, ids[n])``.

    Args:
        digits: uint8 (N, 28, 28).
        labels: int (N,), 0..9.
        seed: render seed.
        ids: int (N,), a per-digit identifier that seeds the clip's random variations
            (default ``arange(N)``); use the digit's index in its source so subsets and
            chunks render the same bytes as the full set.

    Returns:
        uint8 (N, 30, 28, 28).
    """
    digits = np.asarray(digits)
    labels = np.asarray(labels).astype(np.int64)
    n = len(digits)
    if digits.dtype != np.uint8 or digits.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"digits must be uint8 (N, 28, 28), got {digits.dtype} {digits.shape}")
    ids = np.arange(n) if ids is None else np.asarray(ids, dtype=np.int64)
    if labels.shape != (n,) or ids.shape != (n,):
        raise ValueError(f"labels {labels.shape} and ids {ids.shape} must be ({n},)")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must be in 0..9")
    theta = affine_thetas(*motion_parameters(labels, clip_uniforms(seed, ids)))
    theta = theta.reshape(n, FRAMES, 2, 3)
    out = np.empty((n, FRAMES, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, n, _RENDER_BLOCK):
        sl = slice(start, start + _RENDER_BLOCK)
        out[sl] = _warp(np.ascontiguousarray(digits[sl]), theta[sl].reshape(-1, 2, 3))
    return out


# ----------------------------------------------------------------------------- preview
def preview_clips(seed: int = 0) -> np.ndarray:
    """One clip per class (0..9) rendered from the first embedded test digit of that class.

    Returns:
        uint8 (10, 30, 28, 28).
    """
    from lightning_ttn.data.mnist import read_embedded

    test = read_embedded().test
    rows = [int(np.flatnonzero(test.labels == c)[0]) for c in range(10)]
    return render_clips(test.digits[rows], test.labels[rows], seed, test.index[rows])


def save_preview(path: str, clips: np.ndarray, step: int = 2) -> None:
    """Draws clips like the paper's Figure 2: rows = classes, columns = every ``step``-th frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = clips[:, ::step]  # (10, T/step, H, W)
    n_rows, n_cols = frames.shape[:2]
    gap = 2
    mosaic = np.full((n_rows * (SIZE + gap) - gap, n_cols * (SIZE + gap) - gap), 60, np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            mosaic[r * (SIZE + gap) : r * (SIZE + gap) + SIZE,
                   c * (SIZE + gap) : c * (SIZE + gap) + SIZE] = frames[r, c]  # fmt: skip
    fig, ax = plt.subplots(figsize=(n_cols * 0.62 + 0.6, n_rows * 0.62 + 0.6), dpi=110)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([r * (SIZE + gap) + SIZE / 2 for r in range(n_rows)], [str(r) for r in range(10)])
    ax.set_xticks(
        [c * (SIZE + gap) + SIZE / 2 for c in range(n_cols)], [str(c * step) for c in range(n_cols)]
    )
    ax.set_xlabel("frame")
    ax.set_ylabel("class")
    ax.tick_params(length=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_gif(path: str, clips: np.ndarray, zoom: int = 3) -> None:
    """Saves the clips side by side as an animated GIF (one clip per class, 10 fps)."""
    from PIL import Image

    gap = 2
    n = len(clips)
    width = n * (SIZE + gap) - gap
    images = []
    for t in range(clips.shape[1]):
        canvas = np.full((SIZE, width), 60, np.uint8)
        for i in range(n):
            canvas[:, i * (SIZE + gap) : i * (SIZE + gap) + SIZE] = clips[i, t]
        img = Image.fromarray(canvas).resize((width * zoom, SIZE * zoom), Image.NEAREST)
        images.append(img)
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", required=True, help="output PNG (rows = classes 0..9)")
    parser.add_argument("--gif", help="optional animated GIF of the same clips")
    parser.add_argument("--seed", type=int, default=0, help="render seed")
    args = parser.parse_args(argv)
    clips = preview_clips(args.seed)
    save_preview(args.preview, clips)
    if args.gif:
        save_gif(args.gif, clips)


if __name__ == "__main__":
    main()
