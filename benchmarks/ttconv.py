"""Forward+backward time of ``TTConv3d`` vs ``nn.Conv3d`` on the paper's two conv layers.

Both layers of a pair are timed in the same run, interleaved (alternating which goes first),
after a warm-up. The table reports medians over ``--repeats``, the ratio of the two medians and
the paired ratio (median of the per-repeat ratios of adjacent calls, more robust when other
processes share the CPU). The kernel-build columns time ``layer.kernel()`` alone (the ``T-1``
sequential ``grid_sample`` calls), forward and forward+backward. Torch threads: default unless
``--threads``.

With ``--compile`` a second table compares eager and ``torch.compile`` (inductor, default mode)
forward+backward of both modules, and of ``TTConv3d`` with ``kernel()`` excluded from
compilation by ``torch.compiler.disable`` (only the convolution compiled), on the same layers
with batch ``--compile-batch`` (compiling takes seconds to tens of seconds per module on a small
CPU). ``torch.compiler.reset()`` before each module, so that each is compiled fresh with static
shapes (a second ``TTConv3d`` instance would otherwise recompile with dynamic shapes). The
compile column is the first call (tracing, compilation, one step); eager and compiled are then
timed interleaved in the same process. ``--compile-only`` skips the first table.

CPU timings depend on glibc malloc: buffers above its dynamic mmap threshold (128 KiB, growing
up to 32 MiB) are mmapped fresh on every step and the kernel zeroes each of their pages (page
faults). The threshold moves with the allocation history of the process (importing
``torch._dynamo`` alone can move it), so the same eager step (conv1, batch 4) costs 8 ms in one
process and 20 ms in another, and a compiled and an eager step can land on different sides of
it; the last column of the compile table shows the page faults per step. At batch 20 conv1's
buffers exceed 32 MiB and always fault (37,700 faults per step: 103 ms instead of 44 ms for
TTConv3d on one thread). For stable and faster CPU numbers, disable mmapped allocations and
heap trimming:

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/ttconv.py ...

    python benchmarks/ttconv.py --repeats 30 --device cpu --dtype float32
    python benchmarks/ttconv.py --compile-only --compile-batch 4 --repeats 10 --threads 1
"""

from __future__ import annotations

import argparse
import resource
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


def page_faults_per_call(fn: Callable[[], None], calls: int = 3) -> float:
    """Minor page faults of the process per call of ``fn`` (fresh memory the kernel zeroes)."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / calls


def non_identity(layer: TTConv3d) -> TTConv3d:
    """A trained-looking, non-identity transform (the cost does not depend on the values)."""
    with torch.no_grad():
        layer.rotation.uniform_(-0.3, 0.3)
        layer.translation.uniform_(-0.2, 0.2)
    return layer


def main_table(args: argparse.Namespace, factory: dict) -> None:
    """TTConv3d vs nn.Conv3d forward+backward and the kernel build alone."""
    device = factory["device"]
    print(
        "\n| layer | input | TTConv3d fwd+bwd (ms) | nn.Conv3d fwd+bwd (ms) | ratio TT/Conv3d "
        "| paired ratio | kernel build fwd (ms) | kernel build fwd+bwd (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, c_in, c_out, k, pad, shape, input_grad in LAYERS:
        tt = non_identity(TTConv3d(c_in, c_out, k, padding=pad, **factory))
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


def compile_table(args: argparse.Namespace, factory: dict) -> None:
    """Eager vs ``torch.compile`` forward+backward of ``nn.Conv3d`` and ``TTConv3d``."""
    print(
        f"\ntorch.compile (inductor) vs eager, forward+backward, batch {args.compile_batch}\n\n"
        "| layer | module | eager (ms) | compiled (ms) | ratio compiled/eager | paired ratio "
        "| compile + first step (s) | page faults / step, eager / compiled |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    device = factory["device"]
    for label, c_in, c_out, k, pad, shape, input_grad in LAYERS:
        shape = (args.compile_batch, *shape[1:])
        x = torch.randn(shape, **factory).requires_grad_(input_grad)
        for name in ("nn.Conv3d", "TTConv3d", "TTConv3d, kernel build eager"):
            torch.manual_seed(args.seed)
            if name == "nn.Conv3d":
                layer: nn.Module = nn.Conv3d(c_in, c_out, k, padding=pad, **factory)
            else:
                layer = non_identity(TTConv3d(c_in, c_out, k, padding=pad, **factory))
            if name.endswith("eager"):
                # Only the convolution compiled: kernel() graph-breaks and runs eagerly.
                layer.kernel = torch.compiler.disable(layer.kernel)
            grad_out = torch.randn_like(layer(x))
            torch.compiler.reset()
            compiled = torch.compile(layer)
            start = time.perf_counter()
            train_step(compiled, x, grad_out)()
            sync(device)
            compile_s = time.perf_counter() - start
            steps = [train_step(layer, x, grad_out), train_step(compiled, x, grad_out)]
            times_eager, times_compiled = time_interleaved(
                steps, args.repeats, args.warmup, device
            )
            faults = [page_faults_per_call(step) for step in steps]
            t_eager, t_compiled = statistics.median(times_eager), statistics.median(times_compiled)
            paired = statistics.median(
                c / e for c, e in zip(times_compiled, times_eager, strict=True)
            )
            print(
                f"| {label} | {name} | {1e3 * t_eager:.2f} | {1e3 * t_compiled:.2f} "
                f"| {t_compiled / t_eager:.3f} | {paired:.3f} | {compile_s:.1f} "
                f"| {faults[0]:.0f} / {faults[1]:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--compile", action="store_true", help="also compare eager with torch.compile"
    )
    parser.add_argument(
        "--compile-only", action="store_true", help="only the torch.compile table"
    )
    parser.add_argument(
        "--compile-batch", type=int, default=4, help="batch size of the torch.compile table"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    factory = {"device": device, "dtype": dtype}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"median of {args.repeats} (warm-up {args.warmup})"
    )
    if not args.compile_only:
        main_table(args, factory)
    if args.compile or args.compile_only:
        compile_table(args, factory)


if __name__ == "__main__":
    main()
