"""Tests of the ``TTConv3d`` module: drop-in shapes, equivalence, gradients, parameters, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lightning_ttn.functional import build_tt_kernel
from lightning_ttn.layers import TTConv3d

F64 = torch.float64
VARIANTS = {
    "similarity": {},
    "affine": {"transform": "affine"},
    "shared": {"shared_transform": True},
    "shared_affine": {"transform": "affine", "shared_transform": True},
    "none": {"transform": "none"},
}


def perturb_transforms(layer: TTConv3d, amount: float, seed: int = 0) -> None:
    """Moves the transforms away from identity by uniform noise in [-amount, amount]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("scale", "rotation", "translation", "affine"):
            if hasattr(layer, name):
                p = getattr(layer, name)
                p.add_(amount * (2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- drop-in replacement for nn.Conv3d ---------------------------------------------------------

# (in, out, kernel_size, kwargs, input shape (B, C, D, H, W))
CASES = [
    (2, 4, 3, {}, (2, 2, 5, 6, 7)),
    (2, 4, (3, 5, 5), {}, (1, 2, 5, 7, 7)),
    (2, 4, (1, 3, 3), {}, (1, 2, 4, 6, 6)),
    (2, 4, (2, 3, 4), {"padding": 1}, (1, 2, 5, 6, 7)),
    (2, 4, 3, {"stride": 2}, (2, 2, 7, 8, 9)),
    (2, 4, 3, {"stride": (1, 2, 3), "padding": (0, 1, 2)}, (1, 2, 6, 7, 8)),
    (2, 4, (3, 5, 5), {"padding": "same"}, (1, 2, 5, 6, 7)),
    pytest.param(
        2, 4, (2, 4, 3), {"padding": "same", "dilation": (2, 1, 2)}, (1, 2, 6, 6, 7),
        marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
    ),
    (2, 4, 3, {"padding": "valid"}, (1, 2, 5, 6, 7)),
    (2, 4, 3, {"dilation": 2, "padding": 2}, (1, 2, 6, 7, 8)),
    (4, 6, 3, {"groups": 2, "padding": 1}, (2, 4, 4, 5, 6)),
    (4, 4, (3, 1, 3), {"groups": 4}, (1, 4, 5, 5, 5)),
    (2, 4, 3, {"bias": False}, (1, 2, 4, 5, 6)),
    (2, 4, 3, {"padding": (1, 2, 0), "padding_mode": "reflect"}, (1, 2, 5, 6, 7)),
    (2, 4, 3, {"padding": 1, "padding_mode": "replicate", "stride": 2}, (1, 2, 5, 6, 7)),
    (2, 4, (3, 5, 5), {"padding": "same", "padding_mode": "circular"}, (1, 2, 5, 6, 7)),
    pytest.param(
        2, 4, (2, 4, 3), {"padding": "same", "padding_mode": "reflect"}, (1, 2, 5, 6, 7),
        marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
    ),
    (2, 4, 3, {"padding": "valid", "padding_mode": "reflect"}, (1, 2, 5, 6, 7)),
    (2, 4, 3, {"padding": 1}, (0, 2, 4, 5, 6)),
    (2, 4, 3, {"transform": "affine", "padding": 1}, (1, 2, 4, 5, 6)),
    (2, 4, 3, {"shared_transform": True, "stride": 2}, (1, 2, 5, 6, 7)),
    (4, 6, (3, 5, 5), {"transform": "none", "padding": "same", "groups": 2}, (1, 4, 5, 6, 7)),
    (2, 4, 3, {"transform": "none", "padding": 1, "padding_mode": "reflect"}, (1, 2, 4, 5, 6)),
]


def conv_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in ("transform", "shared_transform")}


@pytest.mark.parametrize("c_in, c_out, k, kwargs, shape", CASES)
def test_output_shape_matches_nn_conv3d(c_in, c_out, k, kwargs, shape):
    x = torch.randn(shape)
    out = TTConv3d(c_in, c_out, k, **kwargs)(x)
    assert out.shape == nn.Conv3d(c_in, c_out, k, **conv_kwargs(kwargs))(x).shape


@pytest.mark.parametrize("c_in, c_out, k, kwargs, shape", CASES)
def test_to_conv3d_is_equivalent(c_in, c_out, k, kwargs, shape):
    layer = TTConv3d(c_in, c_out, k, dtype=F64, **kwargs)
    perturb_transforms(layer, 0.3)
    conv = layer.to_conv3d()
    assert type(conv) is nn.Conv3d
    assert conv.weight.dtype == F64 and conv.weight.device == layer.base.device
    assert conv.padding_mode == layer.padding_mode
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(conv.weight, layer.kernel(), atol=0, rtol=0)


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [(3, 3, 3), (1, 3, 3)])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradcheck_wrt_input_base_transform_and_bias(variant, kernel_size):
    torch.manual_seed(0)
    layer = TTConv3d(2, 2, kernel_size, padding=1, dtype=F64, **VARIANTS[variant])
    # Non-degenerate transforms: sample points off pixel boundaries (bilinear kinks).
    perturb_transforms(layer, 0.15, seed=1)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(1, 2, 3, 4, 4, dtype=F64, requires_grad=True)  # (B, C, D, H, W)

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_all_parameters_receive_gradient():
    layer = TTConv3d(2, 3, 3, padding=1)
    perturb_transforms(layer, 0.2)
    layer(torch.randn(2, 2, 4, 5, 5)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c_in, c_out, k, groups",
    [(1, 18, 5, 1), (18, 28, 5, 1), (4, 6, (3, 5, 4), 2), (3, 2, (1, 3, 3), 1)],
)
def test_parameter_counts(c_in, c_out, k, groups):
    T, kH, kW = (k,) * 3 if isinstance(k, int) else k
    slice_params = c_in // groups * kH * kW
    n_trans = T - 1

    def count(**kwargs) -> int:
        return n_params(TTConv3d(c_in, c_out, k, groups=groups, **kwargs))

    assert count() == c_out * (slice_params + 1 + 4 * n_trans)
    assert count(bias=False) == c_out * (slice_params + 4 * n_trans)
    assert count(transform="affine") == c_out * (slice_params + 1 + 6 * n_trans)
    assert count(shared_transform=True) == c_out * (slice_params + 1 + 4 * min(n_trans, 1))
    assert count(transform="affine", shared_transform=True) == c_out * (
        slice_params + 1 + 6 * min(n_trans, 1)
    )
    assert count(transform="none") == c_out * (slice_params + 1)
    assert count(transform="none", shared_transform=True) == c_out * (slice_params + 1)
    assert count(transform="none", bias=False) == c_out * slice_params


def test_paper_layer_parameter_counts():
    assert n_params(TTConv3d(1, 18, 5)) == 756
    assert n_params(TTConv3d(18, 28, 5)) == 13076


def test_named_parameters_have_no_full_weight():
    assert {n for n, _ in TTConv3d(2, 3, 3).named_parameters()} == {
        "base", "scale", "rotation", "translation", "bias",
    }
    assert {n for n, _ in TTConv3d(2, 3, 3, transform="affine").named_parameters()} == {
        "base", "affine", "bias",
    }
    assert {n for n, _ in TTConv3d(2, 3, 3, transform="none").named_parameters()} == {
        "base", "bias",
    }
    layer = TTConv3d(2, 3, (4, 5, 6), groups=1)
    assert layer.base.shape == (3, 2, 5, 6)
    assert layer.scale.shape == layer.rotation.shape == (3, 3)
    assert layer.translation.shape == (3, 3, 2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_initial_kernel_is_base_repeated_over_time(variant):
    layer = TTConv3d(3, 4, (5, 3, 4), dtype=F64, **VARIANTS[variant])
    kernel = layer.kernel()  # (4, 3, 5, 3, 4)
    assert kernel.shape == (4, 3, 5, 3, 4)
    for t in range(5):
        torch.testing.assert_close(kernel[:, :, t], layer.base, atol=1e-12, rtol=0)


def test_shared_transform_is_reused_for_every_transition():
    layer = TTConv3d(2, 3, (4, 3, 3), shared_transform=True, dtype=F64)
    perturb_transforms(layer, 0.3)
    theta = layer.theta()  # (3, 3, 2, 3)
    assert theta.shape == (3, 3, 2, 3)
    for t in range(3):
        torch.testing.assert_close(theta[:, t], theta[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(
        layer.kernel(), build_tt_kernel(layer.base, theta.contiguous()), atol=0, rtol=0
    )


def test_translation_parameter_is_tx_then_ty():
    layer = TTConv3d(2, 3, (2, 4, 5), dtype=F64)  # kH=4, kW=5
    with torch.no_grad():
        layer.translation[..., 0] = 2 / 5  # tx: one pixel, content moves left
    slice1 = layer.kernel()[:, :, 1]  # (3, 2, 4, 5)
    torch.testing.assert_close(slice1[..., :-1], layer.base[..., 1:], atol=1e-12, rtol=0)
    with torch.no_grad():
        layer.translation[..., 0], layer.translation[..., 1] = 0.0, 2 / 4  # ty: content moves up
    slice1 = layer.kernel()[:, :, 1]
    torch.testing.assert_close(slice1[..., :-1, :], layer.base[..., 1:, :], atol=1e-12, rtol=0)


# --- temporal size 1: a 2D kernel, nothing to transform ----------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_temporal_size_one_has_no_transform_parameters(variant):
    # Asked for any transform, a single slice gets none: no zero-element parameters that could
    # never receive a gradient.
    layer = TTConv3d(2, 3, (1, 3, 3), padding=(0, 1, 1), **VARIANTS[variant])
    assert layer.transform == "none"
    assert {n for n, _ in layer.named_parameters()} == {"base", "bias"}
    assert layer.state_dict().keys() == {"base", "bias"}
    assert all(p.numel() > 0 for p in layer.parameters())
    assert layer.theta().shape == (3, 0, 2, 3)
    layer(torch.randn(2, 2, 4, 5, 5)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    shared = variant.startswith("shared")
    assert layer.extra_repr() == (
        "2, 3, kernel_size=(1, 3, 3), padding=(0, 1, 1), transform='none'"
        + (", shared_transform=True" if shared else "")
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "padding": (0, 1, 1), "groups": 2}])
def test_temporal_size_one_is_the_conv3d_with_k0(variant, kwargs):
    torch.manual_seed(0)
    layer = TTConv3d(4, 6, (1, 3, 3), dtype=F64, **kwargs, **VARIANTS[variant])
    assert torch.equal(layer.kernel(), layer.base.unsqueeze(2))  # (6, 4/groups, 1, 3, 3)
    x = torch.randn(2, 4, 3, 7, 7, dtype=F64)
    expected = F.conv3d(
        x, layer.base.unsqueeze(2), layer.bias, layer.stride, layer.padding, layer.dilation,
        layer.groups,
    )
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_temporal_size_one_round_trips_through_conv3d_exactly(variant):
    conv = nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1), groups=2, dtype=F64)
    layer = TTConv3d.from_conv3d(conv, **VARIANTS[variant])
    assert layer.transform == "none" and {n for n, _ in layer.named_parameters()} == {
        "base", "bias",
    }
    assert torch.equal(layer.base, conv.weight[:, :, 0])  # the one slice, exactly
    back = layer.to_conv3d()
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    x = torch.randn(1, 4, 3, 5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), conv(x), atol=0, rtol=0)
    # state_dict round trip into a layer asked for another transform
    other = TTConv3d(4, 6, (1, 3, 3), padding=(0, 1, 1), groups=2, dtype=F64)
    other.load_state_dict(layer.state_dict())
    torch.testing.assert_close(other(x), conv(x), atol=0, rtol=0)
    other.reset_parameters()
    assert {n for n, _ in other.named_parameters()} == {"base", "bias"}
    assert not torch.equal(other.base, layer.base)


def test_base_init_std_matches_documented_value():
    torch.manual_seed(0)
    layer = TTConv3d(64, 64, 5)
    fan_in = 64 * 125
    assert layer.base.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.02)
    assert abs(layer.base.mean().item()) < 1e-4
    assert layer.bias.abs().max().item() <= 1 / math.sqrt(fan_in)
    # Same std as nn.Conv3d's default init of the full kernel.
    conv = nn.Conv3d(64, 64, 5)
    assert layer.base.std().item() == pytest.approx(conv.weight.std().item(), rel=0.03)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reset_parameters_reinitializes(variant):
    layer = TTConv3d(8, 8, 3, **VARIANTS[variant])
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(5.0)
    layer.reset_parameters()
    assert layer.base.abs().max() < 1.0 and layer.base.std() > 0
    assert layer.bias.abs().max() <= 1 / math.sqrt(8 * 27)
    kernel = layer.kernel()
    torch.testing.assert_close(kernel, layer.base[:, :, None].expand_as(kernel))
    if variant in ("similarity", "shared"):
        assert (layer.scale == 1).all() and (layer.rotation == 0).all()
        assert (layer.translation == 0).all()
    elif variant == "none":
        assert {n for n, _ in layer.named_parameters()} == {"base", "bias"}
    else:
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        assert (layer.affine == identity).all()


def test_extra_repr_shows_non_default_fields_only():
    assert repr(TTConv3d(1, 18, 5)) == "TTConv3d(1, 18, kernel_size=(5, 5, 5))"
    layer = TTConv3d(
        4, 8, (3, 5, 5), stride=2, padding=(1, 2, 2), dilation=(1, 2, 2), groups=2, bias=False,
        padding_mode="reflect", transform="affine", shared_transform=True,
    )
    assert layer.extra_repr() == (
        "4, 8, kernel_size=(3, 5, 5), stride=(2, 2, 2), padding=(1, 2, 2), dilation=(1, 2, 2), "
        "groups=2, bias=False, padding_mode='reflect', transform='affine', shared_transform=True"
    )
    assert TTConv3d(4, 8, 3, padding="same").extra_repr() == (
        "4, 8, kernel_size=(3, 3, 3), padding='same'"
    )
    assert TTConv3d(4, 8, 3, transform="none").extra_repr() == (
        "4, 8, kernel_size=(3, 3, 3), transform='none'"
    )


# --- weight: the built kernel, read as nn.Conv3d.weight ----------------------------------------


@pytest.mark.parametrize("c_in, c_out, k, kwargs, shape", CASES)
def test_weight_is_the_kernel_shaped_as_conv3d_weight(c_in, c_out, k, kwargs, shape):
    layer = TTConv3d(c_in, c_out, k, dtype=F64, **kwargs)
    perturb_transforms(layer, 0.3)
    weight = layer.weight
    assert weight.shape == nn.Conv3d(c_in, c_out, k, **conv_kwargs(kwargs)).weight.shape
    assert torch.equal(weight, layer.kernel())
    # Code that convolves with .weight as it would for an nn.Conv3d gets the layer's output.
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(layer.to_conv3d()._conv_forward(x, weight, layer.bias), layer(x))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_weight_is_differentiable_and_not_a_parameter(variant):
    layer = TTConv3d(2, 3, 3, **VARIANTS[variant])
    perturb_transforms(layer, 0.2)
    assert "weight" not in dict(layer.named_parameters()) and "weight" not in layer.state_dict()
    assert not isinstance(layer.weight, nn.Parameter)
    layer.weight.square().sum().backward()
    for name, p in layer.named_parameters():
        if name != "bias":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert layer.bias.grad is None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("k", [3, (1, 3, 3)])
def test_writing_into_weight_changes_no_parameter(variant, k):
    # Also where kernel() is a view of K0 (transform="none", T = 1): the weight is a copy.
    layer = TTConv3d(2, 3, k, **VARIANTS[variant])
    before = {n: p.clone() for n, p in layer.named_parameters()}
    with torch.no_grad():
        layer.weight.zero_()
    for name, p in layer.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("value", [torch.zeros(3), nn.Parameter(torch.zeros(3)), None])
def test_assigning_weight_raises(value):
    layer = TTConv3d(2, 3, 3)
    with pytest.raises(AttributeError, match="TTConv3d.weight is read-only: it is built from base"):
        layer.weight = value
    assert {n for n, _ in layer.named_parameters()} == {
        "base", "scale", "rotation", "translation", "bias",
    }


# --- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((3, 4, 3), {"groups": 2}, "divisible by groups"),
        ((4, 3, 3), {"groups": 2}, "divisible by groups"),
        ((2, 4, 0), {}, "kernel_size must be an int >= 1"),
        ((2, 4, (0, 3, 3)), {}, "kernel_size must be an int >= 1"),
        ((2, 4, (3, 3)), {}, "kernel_size must be"),
        ((0, 4, 3), {}, "in_channels must be a positive int"),
        ((2, -1, 3), {}, "out_channels must be a positive int"),
        ((2, 4, 3), {"groups": 0}, "groups must be a positive int"),
        ((2, 4, 3), {"stride": 0}, "stride must be an int >= 1"),
        ((2, 4, 3), {"dilation": (1, 0, 1)}, "dilation must be an int >= 1"),
        ((2, 4, 3), {"padding": -1}, "padding must be an int >= 0"),
        ((2, 4, 3), {"transform": "projective"}, "transform must be one of"),
        ((2, 4, (1, 3, 3)), {"transform": "projective"}, "transform must be one of"),
        ((2, 4, 3), {"padding": "full"}, "padding must be one of"),
        ((2, 4, 3), {"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
        ((2, 4, 3), {"padding_mode": "mirror"}, "padding_mode must be one of"),
    ],
)
def test_invalid_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTConv3d(*args, **kwargs)


# --- serialization, dtype, training ------------------------------------------------------------


def test_state_dict_round_trip():
    torch.manual_seed(0)
    src = TTConv3d(2, 3, 3, padding=1)
    perturb_transforms(src, 0.3)
    dst = TTConv3d(2, 3, 3, padding=1)
    assert set(src.state_dict()) == {"base", "scale", "rotation", "translation", "bias"}
    dst.load_state_dict(src.state_dict())
    x = torch.randn(1, 2, 4, 5, 5)
    torch.testing.assert_close(dst(x), src(x), atol=0, rtol=0)


def test_module_to_float64_works():
    layer = TTConv3d(2, 3, 3, padding=1).to(F64)
    assert all(p.dtype == F64 for p in layer.parameters())
    x = torch.randn(1, 2, 4, 5, 5, dtype=F64)
    out = layer(x)
    assert out.dtype == F64 and layer.kernel().dtype == F64
    torch.testing.assert_close(out, layer.to_conv3d()(x), atol=1e-12, rtol=1e-12)


def test_factory_dtype_argument():
    layer = TTConv3d(2, 3, 3, dtype=F64)
    assert all(p.dtype == F64 for p in layer.parameters())


def test_fitting_a_transformed_teacher_learns_the_transform():
    torch.manual_seed(0)
    teacher = TTConv3d(1, 4, (3, 5, 5), padding=(1, 2, 2))
    with torch.no_grad():
        teacher.rotation.fill_(0.4)
        teacher.translation.fill_(0.15)
    student = TTConv3d(1, 4, (3, 5, 5), padding=(1, 2, 2))
    student.load_state_dict({"base": teacher.base, "bias": teacher.bias}, strict=False)
    x = torch.randn(4, 1, 5, 8, 8)  # (B, C, D, H, W)
    target = teacher(x).detach()
    opt = torch.optim.Adam([student.scale, student.rotation, student.translation], lr=0.02)

    def loss_fn() -> torch.Tensor:
        return (student(x) - target).square().mean()

    initial = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.1 * initial
    # Away from identity (transitions may trade rotation for translation, so compare means).
    assert student.rotation.abs().mean() > 0.1
    assert student.translation.abs().mean() > 0.02
    kernel_error = (student.kernel() - teacher.kernel()).abs().max()
    assert kernel_error < 0.5 * (teacher.base[:, :, None] - teacher.kernel()).abs().max()


# --- transform="none": K0 repeated over time ---------------------------------------------------


def test_none_transform_kernel_is_base_repeated_and_theta_identity():
    layer = TTConv3d(3, 4, (5, 3, 4), transform="none", dtype=F64)
    assert layer.state_dict().keys() == {"base", "bias"}
    kernel = layer.kernel()  # (4, 3, 5, 3, 4)
    assert kernel.shape == (4, 3, 5, 3, 4)
    for t in range(5):
        assert torch.equal(kernel[:, :, t], layer.base)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    theta = layer.theta()
    assert theta.shape == (4, 4, 2, 3) and (theta == identity).all()
    torch.testing.assert_close(build_tt_kernel(layer.base, theta), kernel, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"padding": "same", "groups": 2}, {"stride": 2}])
def test_none_transform_equals_similarity_at_identity(kwargs):
    torch.manual_seed(0)
    similarity = TTConv3d(4, 6, (3, 5, 4), dtype=F64, **kwargs)
    none = TTConv3d(4, 6, (3, 5, 4), transform="none", dtype=F64, **kwargs)
    none.load_state_dict({"base": similarity.base, "bias": similarity.bias})
    # Identity resampling is exact up to the rounding of the grid coordinates (~1e-16).
    torch.testing.assert_close(none.kernel(), similarity.kernel(), atol=1e-12, rtol=0)
    x = torch.randn(2, 4, 5, 7, 8, dtype=F64)
    torch.testing.assert_close(none(x), similarity(x), atol=1e-12, rtol=0)


def test_none_transform_ignores_shared_transform_and_trains_base():
    plain = TTConv3d(2, 3, (4, 3, 3), transform="none")
    shared = TTConv3d(2, 3, (4, 3, 3), transform="none", shared_transform=True)
    shared.load_state_dict(plain.state_dict())
    assert torch.equal(shared.kernel(), plain.kernel())
    assert shared.extra_repr().endswith("transform='none', shared_transform=True")
    shared(torch.randn(1, 2, 5, 5, 5)).square().sum().backward()
    assert shared.base.grad.abs().sum() > 0 and shared.bias.grad.abs().sum() > 0


# --- from_conv3d (model conversion is tested in test_convert.py) -------------------------------


def test_from_conv3d_copies_configuration_and_takes_temporal_mean():
    conv = nn.Conv3d(
        4, 6, (3, 5, 3), stride=(1, 2, 1), padding=(1, 2, 0), dilation=(2, 1, 1), groups=2,
        padding_mode="replicate", dtype=F64,
    ).eval()
    layer = TTConv3d.from_conv3d(conv, transform="affine")
    assert layer.extra_repr() == (
        "4, 6, kernel_size=(3, 5, 3), stride=(1, 2, 1), padding=(1, 2, 0), dilation=(2, 1, 1), "
        "groups=2, padding_mode='replicate', transform='affine'"
    )
    assert not layer.training and layer.base.dtype == F64
    torch.testing.assert_close(layer.base, conv.weight.mean(dim=2), atol=0, rtol=0)
    torch.testing.assert_close(layer.bias, conv.bias, atol=0, rtol=0)
    assert layer.bias.data_ptr() != conv.bias.data_ptr()
    kernel = layer.kernel()  # identity transforms: K0 repeated
    torch.testing.assert_close(kernel, layer.base[:, :, None].expand_as(kernel), atol=1e-12, rtol=0)


def test_from_conv3d_keeps_the_response_to_temporally_constant_input():
    # Sum over the T slices of K0 = mean is sum_t W_t: the same response when x is constant in t.
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 5, (4, 3, 3), padding=(0, 1, 1), dtype=F64)
    layer = TTConv3d.from_conv3d(conv, transform="none")
    frame = torch.randn(2, 3, 1, 6, 7, dtype=F64)
    x = frame.expand(-1, -1, 6, -1, -1)  # (2, 3, 6, 6, 7), the same frame 6 times
    torch.testing.assert_close(layer(x), conv(x), atol=1e-12, rtol=0)
    y = torch.randn(2, 3, 6, 6, 7, dtype=F64)  # varies in time: an approximation only
    assert (layer(y) - conv(y)).abs().max() > 0.01


def test_from_conv3d_rejects_other_modules_and_lazy_convs():
    with pytest.raises(TypeError, match="conv must be an nn.Conv3d, got Conv2d"):
        TTConv3d.from_conv3d(nn.Conv2d(2, 3, 3))
    with pytest.raises(ValueError, match="uninitialized"):
        TTConv3d.from_conv3d(nn.LazyConv3d(3, 3))
    with pytest.raises(ValueError, match="transform must be one of"):
        TTConv3d.from_conv3d(nn.Conv3d(2, 3, 3), transform="projective")


# --- TorchScript and torch.compile -------------------------------------------------------------

# torch.jit is deprecated in favour of torch.compile / torch.export, but still works and is tested.
ignore_jit_deprecation = pytest.mark.filterwarnings(
    "ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"
)


@ignore_jit_deprecation
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1, "bias": False},
        {"padding": "same", "padding_mode": "circular"},
        {"padding": "valid", "stride": 2, "dilation": (1, 2, 1), "groups": 2},
        {"padding": (1, 0, 2), "padding_mode": "reflect"},
    ],
)
def test_torchscript_matches_eager(variant, kwargs):
    torch.manual_seed(0)
    layer = TTConv3d(2, 4, 3, dtype=F64, **VARIANTS[variant], **kwargs)
    perturb_transforms(layer, 0.3)
    scripted = torch.jit.script(layer)
    x = torch.randn(2, 2, 5, 6, 7, dtype=F64, requires_grad=True)
    expected = layer(x)
    torch.testing.assert_close(scripted(x), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(scripted.kernel(), layer.kernel(), atol=0, rtol=0)
    grads = torch.autograd.grad(scripted(x).square().sum(), [x, *scripted.parameters()])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(grads, expected_grads, atol=1e-12, rtol=0)


class ReadsWeight(nn.Module):
    """Reads its conv's ``weight`` in forward, as code written for ``nn.Conv3d`` does."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.conv = TTConv3d(2, 3, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv.weight.square().sum()


@ignore_jit_deprecation
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("k", [3, (1, 3, 3)])
def test_torchscript_compiles_weight(variant, k):
    torch.manual_seed(0)
    model = ReadsWeight(kernel_size=k, padding=1, dtype=F64, **VARIANTS[variant])
    perturb_transforms(model.conv, 0.3)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 2, 4, 5, 6, dtype=F64)
    torch.testing.assert_close(scripted(x), model(x), atol=1e-12, rtol=0)


@ignore_jit_deprecation
def test_torchscript_save_load_round_trip():
    layer = TTConv3d(2, 3, 3, padding="same")
    perturb_transforms(layer, 0.3)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(layer), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(1, 2, 4, 5, 6)
    torch.testing.assert_close(loaded(x), layer(x), atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["similarity", "none"])
def test_torch_compile_traces_one_graph(variant):
    # fullgraph: any graph break raises. The aot_eager backend traces forward and backward as
    # inductor would, without the minutes of C++ compilation (benchmarks/ttconv.py --compile).
    torch.compiler.reset()
    layer = TTConv3d(2, 3, 3, padding=1, dtype=F64, **VARIANTS[variant])
    perturb_transforms(layer, 0.3)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 2, 4, 5, 6, dtype=F64)
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), atol=1e-12, rtol=0)
    out.sum().backward()
    assert layer.base.grad is not None and layer.base.grad.abs().sum() > 0
