"""Tests of the functional core: Eq. 2 (``similarity_theta``), Eq. 3-4 (``build_tt_kernel``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_ttn.functional import build_tt_kernel, similarity_theta, tt_conv3d

F64 = torch.float64
# Geometric tests are exact up to float64 rounding of the grid coordinates (~1e-15).
EXACT = {"atol": 1e-12, "rtol": 0.0}


def naive_tt_kernel(base: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4 written out: per output pixel, map its coordinate through Θ, sum over all pixels.

    base: (O, I, H, W), theta: (O, T-1, 2, 3) -> kernel (O, I, T, H, W), all float64.
    Tensor index [row y, col x]; the paper's K[i, j] has i along x (columns), j along y (rows).
    """
    O, _, H, W = base.shape
    T = theta.shape[1] + 1
    cols = torch.arange(W, dtype=F64)  # pixel index i (x)
    rows = torch.arange(H, dtype=F64)  # pixel index j (y)
    slices = [base.to(F64)]
    for t in range(T - 1):
        prev = slices[-1]  # (O, I, H, W)
        nxt = torch.zeros_like(prev)
        for o in range(O):
            (a11, a12, a13), (a21, a22, a23) = theta[o, t].tolist()
            for y in range(H):
                for x in range(W):
                    # Normalized output coordinate, align_corners=False.
                    xn, yn = (2 * x + 1) / W - 1, (2 * y + 1) / H - 1
                    gx = a11 * xn + a12 * yn + a13  # Eq. 3
                    gy = a21 * xn + a22 * yn + a23
                    # Back to pixel units.
                    px, py = ((gx + 1) * W - 1) / 2, ((gy + 1) * H - 1) / 2
                    wx = torch.clamp(1 - (px - cols).abs(), min=0)  # (W,)
                    wy = torch.clamp(1 - (py - rows).abs(), min=0)  # (H,)
                    # Eq. 4: sum over all pixels of K_t[j, i] * wx[i] * wy[j].
                    nxt[o, :, y, x] = (prev[o] * wy[:, None] * wx[None, :]).sum(dim=(-2, -1))
        slices.append(nxt)
    return torch.stack(slices, dim=2)


def random_similarity(O: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(O, n, 2, 3) similarity matrices with scale in [0.6, 1.4], any rotation, shifts < 0.5."""
    scale = 0.6 + 0.8 * torch.rand(O, n, generator=gen, dtype=F64)
    rotation = (2 * torch.rand(O, n, generator=gen, dtype=F64) - 1) * math.pi
    tx, ty = (torch.rand(2, O, n, generator=gen, dtype=F64) - 0.5)
    return similarity_theta(scale, rotation, tx, ty)


def random_affine(O: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(O, n, 2, 3) identity plus uniform noise in [-0.4, 0.4]."""
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    return identity + 0.8 * (torch.rand(O, n, 2, 3, generator=gen, dtype=F64) - 0.5)


def theta_of(O: int, n: int, scale=1.0, rotation=0.0, tx=0.0, ty=0.0) -> torch.Tensor:
    """(O, n, 2, 3) copies of one similarity matrix."""
    full = [torch.full((O, n), v, dtype=F64) for v in (scale, rotation, tx, ty)]
    return similarity_theta(*full)


# --- similarity_theta (Eq. 2) ------------------------------------------------------------------


def test_similarity_theta_matches_eq2_by_hand():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        s, r, tx, ty = (torch.randn(4, generator=gen, dtype=F64)).tolist()
        expected = torch.tensor(
            [
                [s * math.cos(r), -s * math.sin(r), tx * s * math.cos(r) - ty * s * math.sin(r)],
                [s * math.sin(r), s * math.cos(r), tx * s * math.sin(r) + ty * s * math.cos(r)],
            ],
            dtype=F64,
        )
        got = similarity_theta(*(torch.tensor(v, dtype=F64) for v in (s, r, tx, ty)))
        torch.testing.assert_close(got, expected, atol=1e-14, rtol=0)


def test_similarity_theta_broadcasts_leading_shapes():
    gen = torch.Generator().manual_seed(1)
    scale = torch.rand(3, 1, generator=gen, dtype=F64) + 0.5  # (3, 1)
    rotation = torch.randn(1, 4, generator=gen, dtype=F64)  # (1, 4)
    tx = torch.tensor(0.3, dtype=F64)  # ()
    ty = torch.randn(4, generator=gen, dtype=F64)  # (4,)
    theta = similarity_theta(scale, rotation, tx, ty)
    assert theta.shape == (3, 4, 2, 3)
    for a in range(3):
        for b in range(4):
            one = similarity_theta(scale[a, 0], rotation[0, b], tx, ty[b])  # (2, 3)
            torch.testing.assert_close(theta[a, b], one, atol=0, rtol=0)


# --- build_tt_kernel against the naive Eq. 3-4 ---------------------------------------------------


@pytest.mark.parametrize("kind", ["similarity", "affine"])
@pytest.mark.parametrize(
    "O, I, T, kH, kW", [(1, 1, 1, 3, 3), (2, 3, 2, 3, 5), (3, 2, 5, 4, 3), (2, 1, 5, 5, 5)]
)
def test_build_tt_kernel_matches_naive_eq3_eq4(kind, O, I, T, kH, kW):
    gen = torch.Generator().manual_seed(O * 100 + T * 10 + kH)
    base = torch.randn(O, I, kH, kW, generator=gen, dtype=F64)
    make = random_similarity if kind == "similarity" else random_affine
    theta = make(O, T - 1, gen)  # (O, T-1, 2, 3)
    kernel = build_tt_kernel(base, theta)  # (O, I, T, kH, kW)
    assert kernel.shape == (O, I, T, kH, kW)
    torch.testing.assert_close(kernel, naive_tt_kernel(base, theta), atol=1e-12, rtol=1e-12)


def test_build_tt_kernel_rejects_bad_shapes():
    with pytest.raises(ValueError, match="base must have shape"):
        build_tt_kernel(torch.zeros(2, 3, 3), theta_of(2, 1))
    with pytest.raises(ValueError, match="theta must have shape"):
        build_tt_kernel(torch.zeros(2, 1, 3, 3, dtype=F64), theta_of(3, 1))


# --- geometric meaning of Θ ----------------------------------------------------------------------


def test_identity_repeats_the_slice():
    base = torch.randn(2, 3, 4, 5, dtype=F64)
    kernel = build_tt_kernel(base, theta_of(2, 4))  # (2, 3, 5, 4, 5)
    torch.testing.assert_close(kernel, base[:, :, None].expand_as(kernel), **EXACT)


def test_translation_x_by_one_pixel_shifts_left():
    base = torch.randn(2, 3, 4, 5, dtype=F64)  # kH=4, kW=5
    nxt = build_tt_kernel(base, theta_of(2, 1, tx=2 / 5))[:, :, 1]
    torch.testing.assert_close(nxt[..., :-1], base[..., 1:], **EXACT)
    torch.testing.assert_close(nxt[..., -1], torch.zeros_like(nxt[..., -1]), **EXACT)


def test_translation_y_by_one_pixel_shifts_up():
    base = torch.randn(2, 3, 4, 5, dtype=F64)
    nxt = build_tt_kernel(base, theta_of(2, 1, ty=2 / 4))[:, :, 1]
    torch.testing.assert_close(nxt[..., :-1, :], base[..., 1:, :], **EXACT)
    torch.testing.assert_close(nxt[..., -1, :], torch.zeros_like(nxt[..., -1, :]), **EXACT)


def test_translation_by_two_pixels_down_right():
    base = torch.randn(1, 1, 5, 5, dtype=F64)
    nxt = build_tt_kernel(base, theta_of(1, 1, tx=-4 / 5, ty=-4 / 5))[0, 0, 1]  # (5, 5)
    torch.testing.assert_close(nxt[2:, 2:], base[0, 0, :-2, :-2], **EXACT)
    assert nxt[:2].abs().max() == 0 and nxt[:, :2].abs().max() == 0


@pytest.mark.parametrize("size", [4, 5])
def test_rotation_by_pi_over_2_is_counter_clockwise_rot90(size):
    base = torch.randn(2, 3, size, size, dtype=F64)
    nxt = build_tt_kernel(base, theta_of(2, 1, rotation=math.pi / 2))[:, :, 1]
    torch.testing.assert_close(nxt, torch.rot90(base, k=1, dims=(-2, -1)), **EXACT)
    torch.testing.assert_close(
        build_tt_kernel(base, theta_of(2, 1, rotation=-math.pi / 2))[:, :, 1],
        torch.rot90(base, k=-1, dims=(-2, -1)),
        **EXACT,
    )


def test_rotation_moves_top_middle_to_left_middle():
    base = torch.zeros(1, 1, 3, 3, dtype=F64)
    base[0, 0, 0, 1] = 1.0  # top-middle
    nxt = build_tt_kernel(base, theta_of(1, 1, rotation=math.pi / 2))[0, 0, 1]  # (3, 3)
    expected = torch.zeros(3, 3, dtype=F64)
    expected[1, 0] = 1.0  # left-middle
    torch.testing.assert_close(nxt, expected, **EXACT)


def test_constant_rotation_composes_into_successive_rot90s():
    base = torch.randn(2, 2, 5, 5, dtype=F64)
    kernel = build_tt_kernel(base, theta_of(2, 4, rotation=math.pi / 2))  # (2, 2, 5, 5, 5)
    for t in range(5):
        torch.testing.assert_close(kernel[:, :, t], torch.rot90(base, k=t, dims=(-2, -1)), **EXACT)


def test_scale_two_shrinks_content():
    # 5x5: output pixels 1..3 sample input pixels 0, 2, 4; the border samples outside (zeros).
    base = torch.randn(2, 3, 5, 5, dtype=F64)
    nxt = build_tt_kernel(base, theta_of(2, 1, scale=2.0))[:, :, 1]
    torch.testing.assert_close(nxt[..., 1:4, 1:4], base[..., ::2, ::2], **EXACT)
    border = nxt.clone()
    border[..., 1:4, 1:4] = 0
    assert border.abs().max() <= 1e-12


def test_per_output_channel_transforms_are_independent():
    base = torch.randn(2, 3, 5, 5, dtype=F64)
    theta = torch.cat([theta_of(1, 1), theta_of(1, 1, rotation=math.pi / 2)])  # (2, 1, 2, 3)
    nxt = build_tt_kernel(base, theta)[:, :, 1]
    torch.testing.assert_close(nxt[0], base[0], **EXACT)
    torch.testing.assert_close(nxt[1], torch.rot90(base[1], k=1, dims=(-2, -1)), **EXACT)


# --- tt_conv3d ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stride, padding, dilation, groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), ((1, 2, 1), (2, 1, 0), (1, 1, 2), 2), (1, "same", 1, 2)],
)
def test_tt_conv3d_equals_conv3d_with_built_kernel(stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 7, 10, generator=gen, dtype=F64)  # (B, C_in, D, H, W)
    base = torch.randn(6, 4 // groups, 3, 5, generator=gen, dtype=F64)  # (C_out, C_in/g, kH, kW)
    theta = random_similarity(6, 2, gen)  # T = 3
    bias = torch.randn(6, generator=gen, dtype=F64)
    out = tt_conv3d(x, base, theta, bias, stride, padding, dilation, groups)
    kernel = build_tt_kernel(base, theta)  # (6, 4/g, 3, 3, 5)
    expected = F.conv3d(x, kernel, bias, stride, padding, dilation, groups)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
