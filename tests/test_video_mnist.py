"""Video-MNIST generator: determinism, subset invariance and each class's motion, measured from
the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_ttn.data.mnist import read_embedded
from lightning_ttn.data.video_mnist import (
    FRAMES,
    MOTION_TABLE,
    main,
    render_clips,
)

N_IDS = 16  # clips per class in the motion tests


@pytest.fixture(scope="module")
def embedded():
    return read_embedded()


def _blob() -> np.ndarray:
    """A round Gaussian spot at the frame centre: its centroid is the translation."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    return np.round(255 * np.exp(-(xx**2 + yy**2) / (2 * 2.0**2))).astype(np.uint8)


def _bar() -> np.ndarray:
    """A horizontal 16x3 bar centred in the frame: its principal axis gives the rotation."""
    img = np.zeros((28, 28), np.uint8)
    img[13:16, 6:22] = 255
    return img


def _render_pattern(pattern: np.ndarray, label: int, n: int = N_IDS, seed: int = 0) -> np.ndarray:
    digits = np.repeat(pattern[None], n, axis=0)  # (n, 28, 28)
    return render_clips(digits, np.full(n, label), seed, np.arange(n)).astype(np.float64)


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


@pytest.mark.parametrize(("label", "per_frame"), [(3, -12.0), (4, 12.0), (7, 12.0)])
def test_rotation_direction_as_displayed(label, per_frame):
    """3 turns clockwise (negative displayed angle), 4 and 7 counter-clockwise."""
    angle = _displayed_angle(_render_pattern(_bar(), label, n=4))
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


def test_motion_table_covers_every_class():
    assert sorted(MOTION_TABLE) == list(range(10))
    assert all(isinstance(row["motion"], str) for row in MOTION_TABLE.values())


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        render_clips(np.zeros((2, 28, 28), np.float32), np.zeros(2), 0)
    with pytest.raises(ValueError, match="0..9"):
        render_clips(np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), 0)


def test_preview_cli_writes_png_and_gif(tmp_path):
    png, gif = tmp_path / "p.png", tmp_path / "p.gif"
    main(["--preview", str(png), "--gif", str(gif)])
    from PIL import Image

    assert Image.open(png).size[0] > 300
    with Image.open(gif) as im:
        assert im.n_frames == FRAMES


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
