"""Video-MNIST generator (Ras et al. 2019, Section 3.2 and Table 1).

Each MNIST digit becomes a 30-frame 28x28 clip in which the digit undergoes its class's affine
motion (scale, rotation, x/y translation). All clips are rendered at once with batched
``F.affine_grid`` / ``F.grid_sample`` warps.

Conventions (as displayed, rows growing downward):
    * translation ``tx`` is in pixels to the right, ``ty`` in pixels downward;
    * rotation angles are in degrees, positive = counter-clockwise as displayed, negative =
      clockwise;
    * scale 1 is the original size, about the frame centre; scale 0 is an empty frame.

Two motion presets (:data:`MOTIONS`): ``"table1"`` (:data:`MOTION_TABLE`), smooth motion as Table
1 of the paper describes it, and ``"authors"`` (:data:`AUTHORS_MOTION_TABLE`), what the authors'
generator actually does. Each clip is a pure function of ``(digit, label, seed, id, motion)``:
its random variations are drawn from ``np.random.default_rng([seed, id])``, so any subset renders
byte-identically to the same clips of the full set.

``python -m lightning_ttn.data.preview`` draws one clip per class like the paper's Figure 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

GENERATOR_VERSION = 1
"""Bump whenever the rendered bytes change; part of the cache key."""

FRAMES = 30
SIZE = 28

Motion = Literal["table1", "authors"]
MOTIONS: tuple[str, ...] = get_args(Motion)
"""The motion presets: ``"table1"`` (the paper's Table 1) and ``"authors"`` (the authors' code)."""

# One row per class (Table 1 of the paper). Two-element lists [lo, hi] are ranges sampled
# uniformly per clip, three-element lists are equally likely choices (per frame), and directions
# called random are left/right (up/down, clockwise/counter-clockwise) with equal probability.
# Signs: rotation > 0 is counter-clockwise as displayed. Our reading of Table 1, smooth and
# bounded, with magnitudes taken from the authors' generator (github.com/redsphinx/
# relative-baseline, omg_emotion/create_moving_mnist.py): 1-2 px/frame travel, 12 deg/frame
# rotation, circle radius 4-12 px, random-walk steps of -1/0/+1 px and -12/0/+12 deg. Where this
# preset departs from what their code does (the "authors" preset below): class 5 (one lap of the
# circle, theirs ~2.6 laps: degrees passed to np.cos), class 8 (12 deg/frame, theirs 24 with a
# full turn before reversing), classes 0, 1, 7 (constant speed reflecting at +/-10 px, theirs
# whole pixels speeding up by 1 px/frame at each turn within +/-13 px), class 2 (theirs ends on a
# blank frame) and class 9 (bounded here, unbounded there).
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

# The "authors" preset: what github.com/redsphinx/relative-baseline, file
# omg_emotion/create_moving_mnist.py at commit 0a8ce4985a108bb18765d37a62f60af98ce56c29 (the
# version with all ten classes and the create_moving_mnist_png dataset writer) does, function by
# function; "lines" below are that file's. It pastes digits at whole-pixel offsets, rotates them
# with PIL (positive = counter-clockwise) and resizes them to whole-pixel sides; here the same
# geometry is one affine warp per frame. Not reproduced, as pixel details rather than motion: PIL
# clips the rotated digit to 28x28 before pasting it elsewhere (classes 7, 9) or resizing it (6),
# shrinks with an antialiasing filter (class 6's 1 px frame 0 is the digit's mean, here ~blank),
# truncates float pixels to uint8 (here rounded), and class 2's frame 28 crops its 30 px digit to
# 26 px (the box at line 115: its last 2 rows and columns stay blank, beyond a 20 px digit).

# Class 2, scale() (lines 87-127): the first loop draws sides 28, 26, ..., 2, 1 px at frames
# 0-14; the second loop starts at frame `place` = 14 (overwriting the 1 px frame) with sides 2,
# 4, ..., 30 at frames 14-28 and never writes frame 29, which stays blank (side 0).
_AUTHORS_SIDES_2 = [28 - 2 * t for t in range(14)] + [2 * (t - 13) for t in range(14, 29)] + [0]
# Class 6, scale_up_rotate_clockwise() (lines 145-171): side 2t px, 1 px at frame 0.
_AUTHORS_SIDES_6 = [max(2 * t, 1) for t in range(FRAMES)]

AUTHORS_MOTION_TABLE: dict[int, dict[str, object]] = {
    0: {
        # move_horizontal -> move + get_next_x (lines 25-77): start at the centre, integer speed
        # randint(2) + 1; when the next position would leave x in [1, 27] (+/-13 px from the
        # centre) the digit turns back and its speed grows by 1 px/frame.
        "motion": "moves horizontally by whole pixels, random initial direction and speed; "
        "turns back 1 px/frame faster wherever the next step would pass +/-13 px",
        "speed_px_per_frame": [1, 2],
        "limit_px": 13,
        "speedup_px_per_turn": 1,
    },
    1: {
        # move_vertical (lines 80-84): class 0's motion on the digit turned by np.rot90, turned
        # back; +1 = downward.
        "motion": "moves vertically like class 0 moves horizontally",
        "speed_px_per_frame": [1, 2],
        "limit_px": 13,
        "speedup_px_per_turn": 1,
    },
    2: {
        "motion": "scales down to 2 px (frames 13-14), then up to 30 px (frame 28); frame 29 "
        "is blank",
        "side_px": _AUTHORS_SIDES_2,
    },
    # rotate(-1) / rotate(1) (lines 130-142): 360 // 30 = 12 deg per frame.
    3: {"motion": "rotates clockwise", "rotation_deg_per_frame": -12.0},
    4: {"motion": "rotates counter-clockwise", "rotation_deg_per_frame": 12.0},
    5: {
        # move_in_circle (lines 229-260): radius randint(4, 13); the angles 0, 12, ..., 348
        # meant as degrees go to np.cos / np.sin, which take radians: 12 rad = -32.45 deg per
        # frame modulo 360 with y growing downward, i.e. counter-clockwise as displayed, 2.6
        # laps in 29 steps. Offsets are rounded to whole pixels (np.round) around the centre,
        # starting right of it; their direction 0 plays the 30 positions backwards.
        "motion": "moves around the frame centre by whole pixels at 12 rad/frame (about 2.6 "
        "laps in 30 frames), random direction and integer radius",
        "radius_px": [4, 12],
        "angle_step_rad": 12.0,
    },
    6: {
        "motion": "scales up from 1 px to 58 px (2 px per frame) while rotating clockwise",
        "side_px": _AUTHORS_SIDES_6,
        "rotation_deg_per_frame": -12.0,
    },
    7: {
        # move_horizontal_rotate_counter (lines 174-213): rotate, then class 0's travel with its
        # own draws.
        "motion": "moves horizontally like class 0 while rotating counter-clockwise",
        "speed_px_per_frame": [1, 2],
        "limit_px": 13,
        "speedup_px_per_turn": 1,
        "rotation_deg_per_frame": 12.0,
    },
    8: {
        # rotate_clock_and_counter (lines 216-226): rotate(-1) and rotate(1) over 15 frames
        # each, so 360 // 15 = 24 deg per frame: frames 0-14 turn clockwise, frame 15 is upright
        # again (one full turn) and frames 15-29 turn counter-clockwise.
        "motion": "rotates clockwise one full turn (frames 0-15), then counter-clockwise",
        "rotation_deg_per_frame": -24.0,
        "turn_frame": 15,
    },
    9: {
        # random_transformations (lines 263-315): rotation steps randint(-1, 2) * 12 deg; x/y
        # steps randint(-1, 2) px. Its bound `while 13 < next_x < 0` is never true, so the walks
        # are unbounded (at most +/-29 px).
        "motion": "random rotation and horizontal + vertical movement (unbounded random walks)",
        "rotation_step_deg": [-12.0, 0.0, 12.0],
        "step_px": [-1.0, 0.0, 1.0],
    },
}

MOTION_TABLES: dict[str, dict[int, dict[str, object]]] = {
    "table1": MOTION_TABLE,
    "authors": AUTHORS_MOTION_TABLE,
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


def check_motion(motion: str) -> None:
    """Raises ValueError unless ``motion`` is one of :data:`MOTIONS`."""
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r} is not one of {MOTIONS}")


def _still(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(tx, ty, angle, scale)`` of ``n`` motionless clips, each float64 (n, FRAMES)."""
    return np.zeros((n, FRAMES)), np.zeros((n, FRAMES)), np.zeros((n, FRAMES)), np.ones((n, FRAMES))


def _split_uniforms(uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction -1/+1 (N, 1), speed/radius uniform (N, 1) and per-step uniforms
    (N, rotation/x/y, T-1) of :func:`clip_uniforms`'s layout."""
    direction = np.where(uniforms[:, 0] < 0.5, -1.0, 1.0)[:, None]
    return direction, uniforms[:, 1:2], uniforms[:, 2:].reshape(len(uniforms), 3, FRAMES - 1)


def motion_parameters(
    labels: np.ndarray, uniforms: np.ndarray, motion: str = "table1"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame affine parameters of each clip, following the preset's table.

    Args:
        labels: int (N,), the class of each clip.
        uniforms: float64 (N, _N_UNIFORMS) from :func:`clip_uniforms`.
        motion: one of :data:`MOTIONS` (tables :data:`MOTION_TABLE`,
            :data:`AUTHORS_MOTION_TABLE`).

    Returns:
        ``(tx, ty, angle, scale)``, each float64 (N, FRAMES): translation in pixels (right,
        down), rotation in degrees (positive = counter-clockwise as displayed), scale factor
        (0 = empty frame).
    """
    check_motion(motion)
    parameters = _table1_parameters if motion == "table1" else _authors_parameters
    return parameters(labels, uniforms)


def _table1_parameters(
    labels: np.ndarray, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`motion_parameters` of the ``"table1"`` preset (:data:`MOTION_TABLE`)."""
    t = np.arange(FRAMES, dtype=np.float64)  # (T,)
    tx, ty, angle, scale = _still(len(labels))
    direction, u_speed, steps = _split_uniforms(uniforms)

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


def _integer(u: np.ndarray, lo_hi: object) -> np.ndarray:
    """Uniform integers in [lo, hi] (both included), as ``np.random.randint(lo, hi + 1)``."""
    lo, hi = lo_hi  # type: ignore[misc]
    return lo + np.floor(u * (hi - lo + 1))


def _turning_travel(
    direction: np.ndarray, speed: np.ndarray, limit: float, speedup: float
) -> np.ndarray:
    """Offsets from the centre, float64 (M, FRAMES), of the authors' get_next_x travel.

    Each frame moves ``direction * speed`` whole pixels; where that would pass +/-``limit`` the
    digit turns back and speeds up by ``speedup`` first. (get_next_x gives up when the turned
    step passes the limit too; in 30 frames it never does: the speed stays <= 6.)

    Args:
        direction: float (M,), -1 or +1.
        speed: float (M,), px/frame at the start.
        limit: largest offset in px.
        speedup: px/frame added at each turn.
    """
    x = np.zeros(len(direction))
    path = np.zeros((len(direction), FRAMES))
    for t in range(1, FRAMES):
        step = x + direction * speed
        turn = np.abs(step) > limit
        direction = np.where(turn, -direction, direction)
        speed = np.where(turn, speed + speedup, speed)
        x = np.where(turn, x + direction * speed, step)
        path[:, t] = x
    return path


def _authors_parameters(
    labels: np.ndarray, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`motion_parameters` of the ``"authors"`` preset (:data:`AUTHORS_MOTION_TABLE`).

    The same uniforms as ``"table1"`` drive the authors' draws: direction (their randint(2)),
    speed or radius (randint), and the class-9 steps (randint(-1, 2)).
    """
    table = AUTHORS_MOTION_TABLE
    t = np.arange(FRAMES, dtype=np.float64)  # (T,)
    tx, ty, angle, scale = _still(len(labels))
    direction, u_speed, steps = _split_uniforms(uniforms)

    for c in (0, 1, 7):
        p = table[c]
        m = labels == c
        speed = _integer(u_speed[m, 0], p["speed_px_per_frame"])
        path = _turning_travel(direction[m, 0], speed, p["limit_px"], p["speedup_px_per_turn"])
        (ty if c == 1 else tx)[m] = path
    for c in (2, 6):
        scale[labels == c] = np.asarray(table[c]["side_px"], dtype=np.float64) / SIZE
    for c in (3, 4, 6, 7):
        angle[labels == c] = table[c]["rotation_deg_per_frame"] * t
    p = table[5]
    m = labels == 5
    radius = _integer(u_speed[m], p["radius_px"])  # (M, 1)
    # Their direction 0 (here -1) flips the position lists: the same path played backwards.
    k = np.where(direction[m] > 0, t, FRAMES - 1 - t)  # (M, T)
    tx[m] = np.round(radius * np.cos(p["angle_step_rad"] * k))
    ty[m] = np.round(radius * np.sin(p["angle_step_rad"] * k))
    p = table[8]
    rate, turn = p["rotation_deg_per_frame"], p["turn_frame"]
    angle[labels == 8] = np.where(t < turn, rate * t, -rate * (t - turn))
    p = table[9]
    m = labels == 9
    zero = np.zeros((int(m.sum()), 1))
    walks = ((0, angle, p["rotation_step_deg"]), (1, tx, p["step_px"]), (2, ty, p["step_px"]))
    for k, target, values in walks:
        walk = np.cumsum(_choice(steps[m, k], values), axis=1)  # (M, T-1)
        target[m] = np.concatenate([zero, walk], axis=1)
    return tx, ty, angle, scale


def affine_thetas(
    tx: np.ndarray, ty: np.ndarray, angle: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """``F.affine_grid`` matrices (output -> input coordinates) for the given motions.

    The forward warp is ``p_out = c + t + s * R(angle) (p_in - c)`` about the frame centre
    ``c``; grid_sample needs its inverse in normalized coordinates (``align_corners=False``:
    one pixel = 2/SIZE). Scale 0 samples only outside the digit: an empty frame.

    Args:
        tx, ty, angle, scale: float64 (N, T), see :func:`motion_parameters`.

    Returns:
        float32 (N*T, 2, 3).
    """
    a = np.deg2rad(angle).reshape(-1)  # (N*T,)
    s = scale.reshape(-1)
    blank = s == 0
    s = np.where(blank, 1.0, s)
    cos, sin = np.cos(a) / s, np.sin(a) / s
    # Inverse rotation with rows growing downward: [[cos, -sin], [sin, cos]] / s.
    theta = np.empty((a.size, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    shift = np.stack([tx.reshape(-1), ty.reshape(-1)], axis=1) * (2.0 / SIZE)  # (N*T, 2)
    theta[:, :, 2] = -np.einsum("nij,nj->ni", theta[:, :, :2], shift)
    # A digit shrunk to nothing: sample one frame width outside the input, i.e. zeros.
    theta[blank] = [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]
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
    motion: str = "table1",
) -> np.ndarray:
    """Renders Video-MNIST clips.

    Clip ``n`` depends only on ``(digits[n], labels[n], seed, ids[n], motion)``.

    Args:
        digits: uint8 (N, 28, 28).
        labels: int (N,), 0..9.
        seed: render seed.
        ids: int (N,), a per-digit identifier that seeds the clip's random variations
            (default ``arange(N)``); use the digit's index in its source so subsets and
            chunks render the same bytes as the full set.
        motion: motion preset, one of :data:`MOTIONS`: ``"table1"`` (:data:`MOTION_TABLE`) or
            ``"authors"`` (:data:`AUTHORS_MOTION_TABLE`).

    Returns:
        uint8 (N, 30, 28, 28).
    """
    check_motion(motion)
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
    theta = affine_thetas(*motion_parameters(labels, clip_uniforms(seed, ids), motion))
    theta = theta.reshape(n, FRAMES, 2, 3)
    out = np.empty((n, FRAMES, SIZE, SIZE), dtype=np.uint8)
    for start in range(0, n, _RENDER_BLOCK):
        sl = slice(start, start + _RENDER_BLOCK)
        out[sl] = _warp(np.ascontiguousarray(digits[sl]), theta[sl].reshape(-1, 2, 3))
    return out
