"""Video-MNIST generator: determinism, subset invariance and each class's motion in both presets,
measured from the rendered pixels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lightning_ttn.data.mnist import read_embedded
from lightning_ttn.data.video_mnist import (
    AUTHORS_MOTION_TABLE,
    FRAMES,
    MOTION_TABLE,
    MOTIONS,
    clip_uniforms,
    motion_parameters,
    render_clips,
)

N_IDS = 16  # clips per class in the motion tests


@pytest.fixture(scope="module")
def embedded():
    return read_embedded()


def _blob(sigma: float = 2.0) -> np.ndarray:
    """A round Gaussian spot at the frame centre: its centroid is the translation."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    return np.round(255 * np.exp(-(xx**2 + yy**2) / (2 * sigma**2))).astype(np.uint8)


def _bar() -> np.ndarray:
    """A horizontal 16x3 bar centred in the frame: its principal axis gives the rotation."""
    img = np.zeros((28, 28), np.uint8)
    img[13:16, 6:22] = 255
    return img


def _dot() -> np.ndarray:
    """A 2x2 square at the frame centre: whole-pixel shifts keep it exact and in frame to +/-13."""
    img = np.zeros((28, 28), np.uint8)
    img[13:15, 13:15] = 255
    return img


def _render_pattern(
    pattern: np.ndarray, label: int, n: int = N_IDS, seed: int = 0, motion: str = "table1"
) -> np.ndarray:
    digits = np.repeat(pattern[None], n, axis=0)  # (n, 28, 28)
    clips = render_clips(digits, np.full(n, label), seed, np.arange(n), motion)
    return clips.astype(np.float64)


def _centroids(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid x (right) and y (down) in pixels relative to the frame centre, (N, T) each."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    mass = clips.sum(axis=(2, 3))
    return (clips * xx).sum(axis=(2, 3)) / mass, (clips * yy).sum(axis=(2, 3)) / mass


def _displayed_angle(clips: np.ndarray) -> np.ndarray:
    """Principal-axis orientation in degrees, counter-clockwise as displayed, in (-90, 90]."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    mass = clips.sum(axis=(2, 3))
    cx = (clips * xx).sum(axis=(2, 3)) / mass
    cy = (clips * yy).sum(axis=(2, 3)) / mass
    dx = xx - cx[..., None, None]
    dy = yy - cy[..., None, None]
    mu20 = (clips * dx * dx).sum(axis=(2, 3))
    mu02 = (clips * dy * dy).sum(axis=(2, 3))
    mu11 = (clips * dx * dy).sum(axis=(2, 3))
    # Image rows grow downward, so the displayed angle is minus the image-coordinate angle.
    return -np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))


def _wrap180(deg: np.ndarray) -> np.ndarray:
    """Wraps orientation differences (defined modulo 180) into [-90, 90)."""
    return (deg + 90) % 180 - 90


def _spread(clips: np.ndarray) -> np.ndarray:
    """RMS distance of the intensity from its centroid, (N, T): proportional to the scale."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    mass = clips.sum(axis=(2, 3))
    cx = (clips * xx).sum(axis=(2, 3)) / mass
    cy = (clips * yy).sum(axis=(2, 3)) / mass
    d2 = (xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2
    return np.sqrt((clips * d2).sum(axis=(2, 3)) / mass)


def test_output_shape_and_dtype(embedded):
    clips = render_clips(embedded.test.digits[:3], embedded.test.labels[:3], seed=0)
    assert clips.shape == (3, FRAMES, 28, 28)
    assert clips.dtype == np.uint8


def test_same_seed_same_bytes_different_seed_different_bytes(embedded):
    digits, labels = embedded.train.digits[::100], embedded.train.labels[::100]  # 40, all classes
    a = render_clips(digits, labels, seed=0)
    b = render_clips(digits, labels, seed=0)
    c = render_clips(digits, labels, seed=1)
    assert a.tobytes() == b.tobytes()
    random_classes = np.isin(labels, [0, 1, 5, 7, 9])
    for n in np.flatnonzero(random_classes):
        assert not np.array_equal(a[n], c[n]), f"clip {n} (class {labels[n]}) ignores the seed"


def test_subset_and_chunks_render_identical_bytes(embedded):
    # 70 clips span several internal render blocks; subsets and chunks must not matter.
    digits, labels, index = embedded.train
    digits, labels, index = digits[::57][:70], labels[::57][:70], index[::57][:70]
    full = render_clips(digits, labels, seed=3, ids=index)
    rows = [3, 7, 11]
    subset = render_clips(digits[rows], labels[rows], seed=3, ids=index[rows])
    assert subset.tobytes() == full[rows].tobytes()
    chunked = np.concatenate(
        [render_clips(digits[s:s + 25], labels[s:s + 25], 3, index[s:s + 25]) for s in (0, 25, 50)]
    )
    assert chunked.tobytes() == full.tobytes()


def test_default_ids_are_positions(embedded):
    digits, labels = embedded.val.digits[:5], embedded.val.labels[:5]
    default = render_clips(digits, labels, 0)
    assert np.array_equal(default, render_clips(digits, labels, 0, range(5)))


def test_class0_moves_horizontally_in_both_directions():
    cx, cy = _centroids(_render_pattern(_blob(), 0))
    travel = cx.max(axis=1) - cx.min(axis=1)
    assert (travel >= 8).all(), travel
    assert np.abs(cy).max() < 0.3
    first_step = np.sign(cx[:, 1] - cx[:, 0])
    assert set(first_step) == {-1.0, 1.0}, "initial direction should be random"
    speeds = np.abs(cx[:, 1] - cx[:, 0])
    assert speeds.min() >= 0.9 and speeds.max() <= 2.1 and speeds.std() > 0.1


def test_class1_moves_vertically_in_both_directions():
    cx, cy = _centroids(_render_pattern(_blob(), 1))
    assert ((cy.max(axis=1) - cy.min(axis=1)) >= 8).all()
    assert np.abs(cx).max() < 0.3
    assert set(np.sign(cy[:, 1] - cy[:, 0])) == {-1.0, 1.0}


def test_class5_moves_on_a_circle():
    cx, cy = _centroids(_render_pattern(_blob(), 5))
    radius = np.hypot(cx, cy)  # (N, T) distance from the frame centre
    assert (radius.std(axis=1) < 0.5).all(), "distance from the centre should stay constant"
    assert radius.mean(axis=1).min() >= 3.5 and radius.mean(axis=1).max() <= 12.5
    assert ((cx.max(axis=1) - cx.min(axis=1)) > 6).all()
    assert ((cy.max(axis=1) - cy.min(axis=1)) > 6).all()
    back = np.hypot(cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0])
    assert (back < 0.3 * radius[:, 0]).all(), "the path should (almost) close"
    # both directions of travel occur: the sign of the swept angle's first step
    sweep = np.sign(np.arctan2(-cy[:, 1], cx[:, 1]) - np.arctan2(-cy[:, 0], cx[:, 0]))
    assert set(sweep) == {-1.0, 1.0}


def test_class2_shrinks_almost_to_nothing_then_grows():
    mass = _render_pattern(_blob(), 2, n=2).sum(axis=(2, 3))[0]
    assert mass[15] < 0.05 * mass[0]
    assert (np.diff(mass[:16]) < 0).all()
    assert (np.diff(mass[15:]) > 0).all()
    assert mass[-1] > 0.9 * mass[0]


def test_class6_grows_while_rotating_clockwise():
    clips = _render_pattern(_bar(), 6, n=2)
    mass = clips.sum(axis=(2, 3))[0]
    assert mass[0] < 0.05 * mass[-1]
    assert (np.diff(mass[:26]) > 0).all()  # afterwards the 2x bar leaves the frame
    angle = _displayed_angle(clips[:, 8:14])[0]  # frame 0 may be (almost) empty
    steps = _wrap180(np.diff(angle))
    assert np.allclose(steps, -12, atol=2), steps


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize(("label", "per_frame"), [(3, -12.0), (4, 12.0), (7, 12.0)])
def test_rotation_direction_as_displayed(label, per_frame, motion):
    """3 turns clockwise (negative displayed angle), 4 and 7 counter-clockwise."""
    angle = _displayed_angle(_render_pattern(_bar(), label, n=4, motion=motion))
    for k in (1, 2, 3):
        assert np.allclose(_wrap180(angle[:, k] - angle[:, 0]), per_frame * k, atol=1.5)


def test_class7_also_moves_horizontally():
    cx, cy = _centroids(_render_pattern(_blob(), 7))
    assert ((cx.max(axis=1) - cx.min(axis=1)) >= 8).all()
    assert np.abs(cy).max() < 0.3


def test_class8_rotates_clockwise_then_counter_clockwise():
    angle = _displayed_angle(_render_pattern(_bar(), 8, n=2))[0]
    steps = _wrap180(np.diff(angle))  # (T-1,)
    assert np.allclose(steps[:15], -12, atol=1.5), steps
    assert np.allclose(steps[15:], 12, atol=1.5), steps


def test_class9_random_rotation_and_translation():
    bar = _render_pattern(_bar(), 9, n=N_IDS)
    cx, cy = _centroids(bar)
    angle = _displayed_angle(bar)
    assert np.abs(cx).max() >= 3 and np.abs(cy).max() >= 3
    assert np.abs(cx).max() <= 10.5 and np.abs(cy).max() <= 10.5
    steps = _wrap180(np.diff(angle, axis=1))
    assert (np.abs(steps) > 6).any() and (np.abs(steps) < 3).any()
    assert (steps > 6).any() and (steps < -6).any()
    assert len({tuple(np.round(c, 1)) for c in cx}) == N_IDS, "every clip walks differently"


@pytest.mark.parametrize("table", [MOTION_TABLE, AUTHORS_MOTION_TABLE])
def test_motion_table_covers_every_class(table):
    assert sorted(table) == list(range(10))
    assert all(isinstance(row["motion"], str) for row in table.values())


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        render_clips(np.zeros((2, 28, 28), np.float32), np.zeros(2), 0)
    with pytest.raises(ValueError, match="0..9"):
        render_clips(np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), 0)
    with pytest.raises(ValueError, match=r"motion='smooth' is not one of \('table1', 'authors'\)"):
        render_clips(np.zeros((2, 28, 28), np.uint8), np.zeros(2), 0, motion="smooth")


def test_table1_motion_is_that_of_generator_version_1():
    """Presets must not change "table1": its parameters are pinned (rounded, so platform-free)."""
    labels = np.arange(200) % 10
    params = np.stack(motion_parameters(labels, clip_uniforms(0, np.arange(200))))  # (4, N, T)
    digest = hashlib.sha256((np.round(params, 6) + 0.0).tobytes()).hexdigest()  # +0.0: no -0.0
    assert digest == "723b8a9db4645c2827dad6792a7ed897f769261231e5ff6e4adc3a8e32bdf612"


def test_bytes_do_not_depend_on_torch_thread_count(embedded):
    import torch

    digits, labels, index = (a[::40] for a in embedded.train)  # 100 clips, all classes
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = render_clips(digits, labels, 0, index)
        torch.set_num_threads(max(2, before))
        multi = render_clips(digits, labels, 0, index)
    finally:
        torch.set_num_threads(before)
    assert single.tobytes() == multi.tobytes()


# ----------------------------------------------------------------------------- "authors" preset
def test_authors_preset_is_deterministic_and_subset_invariant(embedded):
    digits, labels, index = (a[::40] for a in embedded.train)  # 100 clips, all classes
    a = render_clips(digits, labels, 0, index, "authors")
    assert a.tobytes() == render_clips(digits, labels, 0, index, "authors").tobytes()
    rows = [5, 17, 60]
    subset = render_clips(digits[rows], labels[rows], 0, index[rows], "authors")
    assert subset.tobytes() == a[rows].tobytes()
    changed = (a != render_clips(digits, labels, 1, index, "authors")).any(axis=(1, 2, 3))
    random_classes = np.isin(labels, [0, 1, 5, 7, 9])
    assert not changed[~random_classes].any()
    # classes 0, 1 and 7 have only four paths (direction x speed 1 or 2): many repeat
    assert changed[random_classes].mean() > 0.5
    same = (a == render_clips(digits, labels, 0, index, "table1")).all(axis=(1, 2, 3))
    # 3 and 4 rotate alike; 9 draws the same walks, which differ only past table1's 10 px bound
    assert set(labels[same]) <= {3, 4, 9} and set(labels[~same]) >= {0, 1, 2, 5, 6, 7, 8}


def _check_turning_travel(offsets: np.ndarray, atol: float = 0.02) -> None:
    """The authors' travel, from measured offsets (N, T): whole pixels from the centre at 1 or 2
    px/frame, turning back 1 px/frame faster only where going on would pass 13 px."""
    assert np.allclose(offsets, np.round(offsets), atol=atol), "whole-pixel translations"
    offsets = np.round(offsets)
    assert (offsets[:, 0] == 0).all() and np.abs(offsets).max() == 13
    steps = np.diff(offsets, axis=1)  # (N, T-1)
    assert set(np.abs(steps[:, 0])) == {1, 2} and set(np.sign(steps[:, 0])) == {-1, 1}
    for path, step in zip(offsets, steps, strict=True):
        for t in range(1, FRAMES - 1):
            if np.sign(step[t]) == np.sign(step[t - 1]):
                assert step[t] == step[t - 1], "constant speed between turns"
            else:
                assert abs(path[t] + step[t - 1]) > 13, "turned back although not at the limit"
                assert abs(step[t]) == abs(step[t - 1]) + 1, "each turn adds 1 px/frame"


def test_authors_class0_moves_horizontally_speeding_up_at_each_turn():
    cx, cy = _centroids(_render_pattern(_dot(), 0, motion="authors"))
    assert np.abs(cy).max() < 1e-3
    _check_turning_travel(cx)


def test_authors_class1_moves_vertically_speeding_up_at_each_turn():
    cx, cy = _centroids(_render_pattern(_dot(), 1, motion="authors"))
    assert np.abs(cx).max() < 1e-3
    _check_turning_travel(cy)


def test_authors_class7_travels_like_class0_while_rotating():
    cx, cy = _centroids(_render_pattern(_dot(), 7, motion="authors"))
    assert np.abs(cy).max() < 0.02
    _check_turning_travel(cx, atol=0.1)  # at +/-13 px the frame edge clips the turned dot


def test_authors_class2_shrinks_to_2px_grows_to_30px_and_ends_blank():
    clips = _render_pattern(_blob(4.0), 2, n=1, motion="authors")
    assert not clips[0, -1].any(), "scale() never writes the last frame"
    assert np.array_equal(clips[0, 27], clips[0, 0]), "full size again at frame 27"
    t = np.arange(FRAMES - 1)
    side = np.where(t < 14, 28 - 2 * t, 2 * (t - 13))  # px: 28..2 (frames 0-13), 2..30 (14-28)
    spread = _spread(clips[:, :-1])[0]
    visible = side >= 12
    assert np.allclose(spread[visible] / spread[0], side[visible] / 28, rtol=0.05)
    mass = clips.sum(axis=(2, 3))[0]
    assert mass[13] == mass[14] < 0.02 * mass[0], "2 px at frames 13 and 14"
    assert mass[28] > 1.1 * mass[0]


def test_authors_class5_laps_its_circle_2_6_times_by_whole_pixels():
    """Degrees passed to np.cos/np.sin: 12 rad/frame, seen as 32.4 deg/frame."""
    cx, cy = _centroids(_render_pattern(_dot(), 5, motion="authors"))
    assert np.allclose(cx, np.round(cx), atol=0.02) and np.allclose(cy, np.round(cy), atol=0.02)
    radius = np.hypot(cx, cy)  # (N, T)
    r = np.round(np.median(radius, axis=1))
    assert (np.abs(radius - r[:, None]) <= 0.75).all(), "rounded points of one circle"
    assert r.min() >= 4 and r.max() <= 12 and len(set(r)) >= 4
    # displayed angle turned per frame, counter-clockwise > 0, wrapped into [-180, 180)
    turn = (np.diff(np.degrees(np.arctan2(-cy, cx)), axis=1) + 180) % 360 - 180  # (N, T-1)
    assert ((np.abs(turn) > 10) & (np.abs(turn) < 55)).all()
    total = turn.sum(axis=1)
    assert ((np.abs(total) > 915) & (np.abs(total) < 965)).all(), total  # 29 x 32.4 deg
    ccw = total > 0
    assert 0 < ccw.sum() < len(ccw), "both directions"
    # counter-clockwise clips start right of the centre; the others play that path backwards
    assert np.allclose(cx[ccw, 0], r[ccw]) and np.allclose(cx[~ccw, -1], r[~ccw])


def test_authors_class6_grows_2px_per_frame_while_rotating_clockwise():
    clips = _render_pattern(_blob(), 6, n=1, motion="authors")
    spread = _spread(clips[:, 8:])[0]  # from frame 8 on (side >= 16 px)
    t = np.arange(8, FRAMES)
    assert np.allclose(spread / spread[14 - 8], t / 14, rtol=0.05)  # side 2t px
    mass = clips.sum(axis=(2, 3))[0]
    assert mass[0] < 0.01 * mass[14], "1 px at frame 0"
    angle = _displayed_angle(_render_pattern(_bar(), 6, n=1, motion="authors")[:, 8:14])[0]
    assert np.allclose(_wrap180(np.diff(angle)), -12, atol=2)


def test_authors_class8_turns_24_deg_clockwise_then_counter_clockwise():
    angle = _displayed_angle(_render_pattern(_bar(), 8, n=1, motion="authors"))[0]
    steps = _wrap180(np.diff(angle))  # (T-1,)
    assert np.allclose(steps[:15], -24, atol=1.5), steps  # one full turn by frame 15
    assert np.allclose(steps[15:], 24, atol=1.5), steps
    assert abs(_wrap180(angle[15] - angle[0])) < 1.5, "upright again at frame 15"


def test_authors_class9_walks_by_whole_pixels_without_bound():
    n = 64
    cx, cy = _centroids(_render_pattern(_dot(), 9, n=n, motion="authors"))
    inside = (np.abs(cx) <= 11) & (np.abs(cy) <= 11)  # the frame edge does not clip the dot
    for offsets in (cx, cy):
        assert np.allclose(offsets[inside], np.round(offsets[inside]), atol=0.02), "whole pixels"
        steps = np.diff(np.round(offsets), axis=1)[inside[:, 1:] & inside[:, :-1]]
        assert set(steps) == {-1.0, 0.0, 1.0}
    assert (cx[:, 0] == 0).all() and (cy[:, 0] == 0).all()
    assert max(np.abs(cx).max(), np.abs(cy).max()) > 10, "table1 would reflect at 10 px"
    angle = _displayed_angle(_render_pattern(_bar(), 9, n=8, motion="authors"))
    steps = _wrap180(np.diff(angle, axis=1))
    near = np.abs(steps[..., None] - np.array([-12.0, 0.0, 12.0])).min(axis=-1)
    assert (near < 2).all() and (np.abs(steps) > 6).any() and (np.abs(steps) < 3).any()
