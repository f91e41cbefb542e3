"""Forward+backward time of ``TTConv3d`` vs ``nn.Conv3d`` on the paper's two conv layers.

Both layers of a pair are timed in the same run, interleaved (alternating which goes first),
after a warm-up. The table reports medians over ``--repeats``, the ratio of the two medians and
the paired ratio (median of the per-repeat ratios of adjacent calls, more robust when other
processes share the CPU). The kernel-build columns time ``layer.kernel()`` alone (the ``T-1``
sequential ``grid_sample`` calls), forward and forward+backward. Torch threads: default.

    python benchmarks/ttconv.py --repeats 30 --device cpu --dtype float32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_ttn import TTConv3d

# name, in, out, kernel, padding, input shape (B, C, D, H, W), input needs grad (inner layer)
LAYERS = [
    ("conv1 1->18, 5x5x5, pad 2", 1, 18, 5, 2, (20, 1, 30, 28, 28), False),
    ("conv2 18->28, 5x5x5", 18, 28, 5, 0, (20, 18, 15, 14, 14), True),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    """One forward+backward pass with a fixed output gradient; grads reset to None first."""

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        layer(x).backward(grad_out)

    return step


def kernel_steps(layer: TTConv3d) -> tuple[Callable[[], None], Callable[[], None]]:
    """Forward and forward+backward of ``layer.kernel()`` alone."""
    grad_kernel = torch.randn_like(layer.kernel())

    def forward() -> None:
        layer.kernel()

    def forward_backward() -> None:
        for p in layer.parameters():
            p.grad = None
        layer.kernel().backward(grad_kernel)

    return forward, forward_backward


def time_interleaved(
    fns: list[Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> list[list[float]]:
    """Seconds of each call of each function, interleaved and their order rotated each repeat."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))
        order = order[r % len(fns) :] + order[: r % len(fns)]
        for i in order:
            sync(device)
            start = time.perf_counter()
            fns[i]()
            sync(device)
            times[i].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    factory = {"device": device, "dtype": dtype}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"median of {args.repeats} (warm-up {args.warmup})\n"
    )
    print(
        "| layer | input | TTConv3d fwd+bwd (ms) | nn.Conv3d fwd+bwd (ms) | ratio TT/Conv3d "
        "| paired ratio | kernel build fwd (ms) | kernel build fwd+bwd (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, c_in, c_out, k, pad, shape, input_grad in LAYERS:
        tt = TTConv3d(c_in, c_out, k, padding=pad, **factory)
        with torch.no_grad():  # a trained-looking, non-identity transform (cost is value-free)
            tt.rotation.uniform_(-0.3, 0.3)
            tt.translation.uniform_(-0.2, 0.2)
        conv = nn.Conv3d(c_in, c_out, k, padding=pad, **factory)
        x = torch.randn(shape, **factory).requires_grad_(input_grad)
        grad_out = torch.randn_like(conv(x))
        times_tt, times_conv = time_interleaved(
            [train_step(tt, x, grad_out), train_step(conv, x, grad_out)],
            args.repeats, args.warmup, device,
        )
        times_kf, times_kfb = time_interleaved(
            list(kernel_steps(tt)), args.repeats, args.warmup, device
        )
        t_tt, t_conv = statistics.median(times_tt), statistics.median(times_conv)
        paired = statistics.median(a / b for a, b in zip(times_tt, times_conv, strict=True))
        print(
            f"| {label} | {tuple(shape)} | {1e3 * t_tt:.2f} | {1e3 * t_conv:.2f} "
            f"| {t_tt / t_conv:.3f} | {paired:.3f} | {1e3 * statistics.median(times_kf):.3f} "
            f"| {1e3 * statistics.median(times_kfb):.3f} |"
        )


if __name__ == "__main__":
    main()
