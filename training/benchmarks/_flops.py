"""FLOPs of a training step and the device's practical peak, the two halves of the efficiency figures.

FLOPs are counted with `torch.utils.flop_counter` (matmuls, convolutions and attention, recomputation included;
the CPU flash-attention kernel is registered here since torch does not count it; attention backward counts 2.5x
its forward, as torch counts the CUDA kernels). The peak is the best plain fp32 matmul, timed in the process
that times the steps. `op_category` sorts operators and CUDA kernels into GEMM / attention / other for the
profiled step of `efficiency.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

MATMUL_SIZES = (1024, 2048, 3072)  # the matmul peak's problem sizes on CPU (x4 on a GPU)
QUICK_MATMUL_SIZES = (256,)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a wall-clock time covers it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: str, sizes: Sequence[int] = MATMUL_SIZES, repeats: int = 3) -> float:
    """Best FLOP/s of plain fp32 `n x n` matmuls (`n` in `sizes`, each `repeats` times after a warm-up): the
    device's practical dense peak, the denominator of the efficiency figures."""
    import torch

    if device.startswith("cuda"):
        sizes = tuple(size * 4 for size in sizes)  # a GPU needs bigger problems to reach its peak
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        for index in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            if index:  # the first one warms up
                best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA SDPA kernels but not the CPU flash kernel: count it the same way."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is None or forward in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_step_flops(step: Callable[[], Any], by_op: dict[str, int] | None = None) -> int:
    """FLOPs of one call of `step`; per operator into `by_op` when given."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        step()
    if by_op is not None:
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            by_op[str(op).split(".")[-1]] = int(flops)
    return int(counter.get_total_flops())


OP_CATEGORIES = ("gemm", "attention", "other")
GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul")
GEMM_OPS += ("convolution", "_convolution", "convolution_backward", "mkldnn_convolution")  # the tubelet embedding
# On a GPU the profiler times CUDA kernels, named by their library: cuBLAS / CUTLASS / cuDNN GEMMs ("...gemm...",
# cuBLAS's "nvjet_..." on Hopper), flash and memory-efficient attention ("flash_fwd...", "fmha_cutlass...").
GEMM_KERNEL_MARKS = ("gemm", "nvjet")
ATTENTION_MARKS = ("scaled_dot_product", "flash", "efficient_attention", "fmha")


def op_category(name: str) -> str:
    """GEMM, attention, or anything else (norms, activations, copies, optimizer, ...), from an aten operator's
    name or a CUDA kernel's."""
    lowered = name.lower()
    if any(mark in lowered for mark in ATTENTION_MARKS):
        return "attention"
    operator = name.removeprefix("aten::").split(".")[0]
    if operator in GEMM_OPS or any(mark in lowered for mark in GEMM_KERNEL_MARKS):
        return "gemm"
    return "other"
