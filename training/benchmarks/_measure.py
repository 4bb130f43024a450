"""Measurement machinery shared by the memory / speed benchmarks (sweep, peers, limit, efficiency).

One configuration is a [`Spec`]: a video tower (ours or one of transformers' video models) at some size, frame
count and training recipe. What a training step is, for every tower alike: forward on a random video batch,
mean-pooled features, an InfoNCE loss against fixed random targets, backward, `AdamW.step()`, `zero_grad()`.
With `text_tower=True` the step is instead the full [`VideoFirstModel`] forward (video tower, BERT text tower,
projections, contrastive loss) on random captions, as in `videofirst.train.pretraining`.

Memory is measured in a fresh process per configuration ([`measure_isolated`]): a fork of a server process
that has imported torch and transformers and run nothing (so it is a clean process, without paying the
imports every time):

* CUDA: `torch.cuda.max_memory_allocated()` (tensors only; the CUDA context is not counted);
* CPU: the kernel's peak resident set size (`VmHWM`, reset through `/proc/self/clear_refs` before each
  measured step; without `/proc`, the RSS sampled every millisecond), with glibc's mmap threshold pinned to
  64 KiB so that freed tensors leave the RSS at once.

Reported per configuration:

* `idle`: the process's memory after the imports, before the model and the inputs exist;
* `static`: model weights, optimizer state, gradients left over (none: `zero_grad(set_to_none=True)`) and the
  input batch, i.e. the memory right before a training step, after one warm-up step allocated the optimizer
  state, minus `idle`;
* `peak_mb`: the peak during the measured training step minus `idle` ("peak training memory");
* `act_mb` ("activation memory"): the memory held when the forward pass ends (the loss is computed) minus the
  memory right before the step: what autograd keeps for the backward pass;
* `step_mb`: the peak during the step minus the memory right before it: activations plus the gradients and
  the temporaries of backward and optimizer (it excludes weights, optimizer state and inputs).

Throughput ([`measure_interleaved`]): all configurations of a group are built in ONE process and their
training steps run round-robin (A B C A B C ...), so that the noise of a shared machine hits them alike; the
median step time of each is reported (allocator as usual there: the pinned mmap threshold of the memory
processes costs page faults). FLOPs are counted on the warm-up step with `torch.utils.flop_counter` (matmuls,
convolutions and attention, recomputation included; the CPU flash-attention kernel is registered here since
torch does not count it; attention backward counts 2.5x its forward, as torch counts the CUDA kernels). With
`matmul_peak`, a plain matmul is timed after every round in the same process, and the best is the peak.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "training" / "benchmarks" / "results"
FAMILIES = ("videofirst", "vivit", "timesformer", "videomae", "videoprism")
_PRELOAD = ["torch", "transformers", "videofirst.adaptation"]

SIZES = {
    # ViT-S width, 12 layers, 96 px (36 patches per tubelet step; 96 is the smallest size that 32x32 tubelets and
    # TubeViT's strides divide), batch 2: what one shared CPU core can sweep in minutes.
    "cpu": dict(hidden_size=384, num_heads=6, intermediate_size=1536, num_layers=12, image_size=96, batch_size=2),
    "vit-b": dict(hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12, image_size=224, batch_size=8),
    "micro": dict(
        hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2, image_size=32, patch_size=16, batch_size=2
    ),
}
MATMUL_SIZES = (1024, 2048, 3072)  # the matmul peak's problem sizes on CPU (x4 on a GPU)
QUICK_MATMUL_SIZES = (256,)


@dataclass
class Spec:
    """One configuration to measure. Sizes default to the CPU tower of `SIZES`."""

    name: str
    family: str = "videofirst"
    frames: int = 16
    image_size: int = 96
    patch_size: int = 16
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    intermediate_size: int = 1536
    batch_size: int = 2
    attention_type: str = "joint"
    mask_ratio: float = 0.0
    mask_type: str = "random"
    tubelet_size: tuple[int, int, int] = (2, 16, 16)
    tubevit: bool = False
    adaptation: str = "full"  # full | last_layers | adapters | lora (`videofirst.adaptation` methods)
    train_patch_embedding: bool = True
    checkpointing: bool = False
    # "indexed": the masked path's former position lookup (`indexed_kept_positions`), the sweep's "positions" baseline.
    position_lookup: str = "gathered"
    attn_implementation: str = "sdpa"
    text_tower: bool = False  # full dual encoder with a BERT-medium text tower (the `limit` benchmark)
    bf16_autocast: bool = False  # mixed precision as the recipes' `mixed_precision: bf16`
    count_flops: bool = False
    matmul_peak: bool = False  # also time plain matmuls in the same process (the efficiency's denominator)
    matmul_sizes: tuple[int, ...] = MATMUL_SIZES

    def to_json(self) -> dict:
        return dataclasses.asdict(self)  # JSON writes the tuples as lists: `from_json` turns them back

    @classmethod
    def from_json(cls, data: dict) -> Spec:
        data = dict(data, tubelet_size=tuple(data["tubelet_size"]), matmul_sizes=tuple(data["matmul_sizes"]))
        return cls(**data)


def measured_tower(name: str, size: str, quick: bool, **changes: Any) -> Spec:
    """The spec the throughput benchmarks start from: tower `size` of `SIZES`, FLOPs counted, matmul peak timed
    (on a tiny matmul in `quick` mode)."""
    sizes = QUICK_MATMUL_SIZES if quick else MATMUL_SIZES
    return Spec(name, count_flops=True, matmul_peak=True, matmul_sizes=sizes, **SIZES[size], **changes)


# ----------------------------------------------------------------------------------------------- command line


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser with the options every benchmark shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per measuring process (0: torch default)")
    parser.add_argument("--quick", action="store_true", help="micro model, seconds: the machinery only (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the CSV, markdown and PNG results")
    return parser


def tower_argument_parser(doc: str, rounds: int, frames_help: str) -> argparse.ArgumentParser:
    """The parser of a script that times towers: the shared options, the tower size, frame counts, timing rounds."""
    parser = argument_parser(doc)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="tower (default: cpu; vit-b on a GPU)")
    parser.add_argument("--frames", type=int, nargs="*", default=None, help=frames_help)
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved timing rounds per group")
    return parser


def setup(args: argparse.Namespace) -> str:
    """The device to measure on (`--device`, else CUDA when available), with the CPU threads set."""
    import torch

    set_cpu_threads(args.threads)
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def tower_size(size: str | None, quick: bool, device: str) -> str:
    """`--size`, else the micro tower for `--quick`, ViT-B on a GPU, the CPU tower on a CPU."""
    return size or ("micro" if quick else "vit-b" if device.startswith("cuda") else "cpu")


# ----------------------------------------------------------------------------------------------- devices, memory


CPU_THREADS = 1  # see `set_cpu_threads`


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads of the measuring processes on CPU (0: torch's default).

    The default is 1: on a CPU shared with other jobs, torch's OpenMP threads wait for each other at every
    operator, and a step with 2 threads on 2 busy cores measured 5-20x slower and far noisier than with 1.
    """
    global CPU_THREADS
    CPU_THREADS = threads


def device_description(device: str) -> str:
    import platform

    import torch

    threads = CPU_THREADS if CPU_THREADS > 0 else torch.get_num_threads()
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"CPU {cpu} ({os.cpu_count()} cores, shared), {threads} torch thread(s) per measuring process, "
        f"torch {torch.__version__}"
    )


CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing "5" resets the peak RSS (VmHWM)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class _RssSampler:
    """Peak RSS where the kernel keeps no resettable high-water mark: the RSS polled every millisecond on a
    thread (an allocation that lives for less than that can be missed)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self._peak, self._process.memory_info().rss)


class MemoryProbe:
    """Current and peak memory of this process, in bytes.

    CUDA: the allocator's counters (tensors only). CPU on Linux: VmRSS, and VmHWM after a reset through
    `/proc/self/clear_refs`, which sees every page ever resident, however briefly. Elsewhere: psutil's RSS,
    sampled every millisecond between `reset_peak` and `peak`.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._cuda = None  # torch.cuda when measuring a GPU
        self._kernel_peak = CLEAR_REFS.exists()
        self._sampler: _RssSampler | None = None
        if device.startswith("cuda"):
            import torch

            self._cuda = torch.cuda
            self.method = "torch.cuda.max_memory_allocated"
        elif self._kernel_peak:
            self.method = "VmHWM after clear_refs"
        else:
            self.method = "psutil RSS sampled every 1 ms"

    def current(self) -> int:
        if self._cuda is not None:
            self._cuda.synchronize(self.device)
            return self._cuda.memory_allocated(self.device)
        if self._kernel_peak:
            return _status_kib("VmRSS") * 1024
        import psutil

        return psutil.Process().memory_info().rss

    def reset_peak(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize(self.device)
            self._cuda.reset_peak_memory_stats(self.device)
        elif self._kernel_peak:
            CLEAR_REFS.write_text("5")
        else:
            if self._sampler is not None:
                self._sampler.stop()
            self._sampler = _RssSampler()

    def peak(self) -> int:
        """The peak since the last `reset_peak`."""
        if self._cuda is not None:
            self._cuda.synchronize(self.device)
            return self._cuda.max_memory_allocated(self.device)
        if self._kernel_peak:
            return _status_kib("VmHWM") * 1024
        if self._sampler is None:
            return self.current()
        peak, self._sampler = self._sampler.stop(), None
        return peak


def pin_malloc() -> None:
    """Make freed tensors leave the RSS: glibc keeps small-heap memory, so serve all but tiny blocks by mmap."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


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
            _sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            if index:  # the first one warms up
                best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- FLOP counting


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


# ----------------------------------------------------------------------------------------------- models


BERT_MEDIUM = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 2048}
CAPTION_TOKENS = 32


def _tower_sizes(spec: Spec) -> dict[str, Any]:
    """The config fields that size a video tower, named as transformers' vision configs name them."""
    return {
        "image_size": spec.image_size,
        "num_frames": spec.frames,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": spec.intermediate_size,
    }


def _videofirst(spec: Spec) -> Any:
    """Our model (the video tower, plus the text tower the step uses or a stub), adapted as the recipe says."""
    from videofirst.modeling.configuration_videofirst import VideoFirstConfig
    from videofirst.modeling.modeling_videofirst import VideoFirstModel

    from videofirst.adaptation import apply_adaptation

    vision = {
        **_tower_sizes(spec),
        "num_hidden_layers": spec.num_layers,
        "patch_size": spec.patch_size,
        "tubelet_size": list(spec.tubelet_size),
        "attention_type": spec.attention_type,
        "mask_ratio": spec.mask_ratio,
        "mask_type": spec.mask_type,
        "tubevit_kernels": "default" if spec.tubevit else None,
    }
    # Without the text tower in the step, a one-layer stub stands in (frozen or unused: no memory, no time).
    text = (
        dict(BERT_MEDIUM)
        if spec.text_tower
        else {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    )
    config = VideoFirstConfig(vision_config=vision, text_config={"model_type": "bert", **text}, projection_dim=512)
    config._attn_implementation = spec.attn_implementation
    config.vision_config._attn_implementation = spec.attn_implementation
    config.text_config._attn_implementation = "sdpa"
    model = VideoFirstModel(config)
    # The text tower is frozen for every method but "full" (`apply_adaptation`'s default, as in the recipes).
    apply_adaptation(
        model,
        method=spec.adaptation,
        train_patch_embedding=spec.train_patch_embedding,
        trainable_last_layers=min(4, spec.num_layers),
    )
    if spec.checkpointing:
        model.activation_checkpointing_enable()
    if spec.position_lookup == "indexed":
        model.vision_model.embeddings.kept_positions = indexed_kept_positions
    return model


def indexed_kept_positions(spatial: Any, temporal: Any, token_indices: Any) -> Any:
    """The kept tokens' positions as the masked path looked them up before `VideoFirstEmbeddings.kept_positions`:
    both tables indexed at all samples' kept (step, position) at once, added in place. Its backward accumulates many
    samples' gradients into one table row in no fixed order (nondeterministic with 2+ threads and on GPUs); kept here
    only as the speed baseline of the deterministic path."""
    positions = spatial.shape[0]
    return spatial[token_indices % positions].add_(temporal[token_indices // positions])


def _peer(spec: Spec) -> tuple[Any, str]:
    """transformers' own video towers, sized like ours (width, depth, heads, MLP, patch, frames), and the
    attention implementation they run with."""
    import transformers

    common = {**_tower_sizes(spec), "hidden_act": "gelu", "qkv_bias": True}
    patch = spec.patch_size
    if spec.family == "vivit":  # joint space-time attention over 2x16x16 tubelets, a CLS token
        config = transformers.VivitConfig(**common, num_hidden_layers=spec.num_layers, tubelet_size=[2, patch, patch])
        model_class = transformers.VivitModel
        kwargs = {"add_pooling_layer": False}
    elif spec.family == "timesformer":  # divided space-time attention over per-frame 16x16 patches
        config = transformers.TimesformerConfig(
            **common, num_hidden_layers=spec.num_layers, patch_size=patch, attention_type="divided_space_time"
        )
        model_class, kwargs = transformers.TimesformerModel, {}
    elif spec.family == "videomae":  # joint attention over 2x16x16 tubelets, fixed sinusoidal positions
        config = transformers.VideoMAEConfig(
            **common, num_hidden_layers=spec.num_layers, patch_size=patch, tubelet_size=2, use_mean_pooling=True
        )
        model_class, kwargs = transformers.VideoMAEModel, {}
    elif spec.family == "videoprism":
        # Factorised encoder: L spatial layers per frame, then L/3 temporal layers per position (VideoPrism's own
        # 12:4), which matches our factorized tower's parameters (L layers with an extra temporal attention).
        config = transformers.VideoPrismVisionConfig(
            **common,
            tubelet_size=[1, patch, patch],
            num_spatial_layers=spec.num_layers,
            num_temporal_layers=max(1, spec.num_layers // 3),
        )
        model_class, kwargs = transformers.VideoPrismVisionModel, {}
    else:
        raise ValueError(f"Unknown family {spec.family!r}; known: {FAMILIES}.")
    implementation = spec.attn_implementation if model_class._supports_sdpa else "eager"
    config._attn_implementation = implementation
    model = model_class(config, **kwargs)
    if spec.checkpointing:
        model.activation_checkpointing_enable()
    return model, implementation


@dataclass
class Trainee:
    """A built configuration: a training step closure and what it processes."""

    step: Callable[..., Any]
    grid_tokens: int  # video tokens per clip before masking
    seen: dict  # filled by the step: "kept", the tokens per clip the encoder attends over
    parameters: int
    trainable: int
    attention: str  # the attention implementation used
    flops: int | None = None  # FLOPs of one training step, when counted

    @property
    def kept_tokens(self) -> int:
        return int(self.seen["kept"])


def build(spec: Spec, device: str, warm_up: bool = True) -> Trainee:
    """Model, optimizer and inputs of `spec`, and its training step.

    `warm_up`: run one step now (FLOPs are counted on it with `spec.count_flops`). Without it, the optimizer
    state is allocated by an update with zero gradients (no forward pass; AdamW then changes nothing). The
    kept-token count is known after the first step.
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    videos = torch.randn(spec.batch_size, spec.frames, 3, spec.image_size, spec.image_size, generator=generator)
    videos = videos.to(device)
    implementation = spec.attn_implementation
    if spec.family == "videofirst":
        full = _videofirst(spec).to(device).train()
        model = full if spec.text_tower else full.vision_model
    else:
        model, implementation = _peer(spec)
        model = model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(parameters)
    targets = torch.randn(spec.batch_size, spec.hidden_size, generator=generator).to(device)
    labels = torch.arange(spec.batch_size, device=device)
    input_ids = torch.randint(1, 1000, (spec.batch_size, CAPTION_TOKENS), generator=generator).to(device)
    seen = {}

    def forward() -> torch.Tensor:
        if spec.text_tower:
            out = model(
                pixel_values_videos=videos,
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                return_loss=True,
            )
            seen["kept"] = out.vision_model_output.last_hidden_state.shape[1]
            return out.loss
        if spec.family == "videofirst":
            out = model(pixel_values_videos=videos)
            pooled = out.pooler_output
        else:
            out = model(pixel_values_videos=videos) if spec.family == "videoprism" else model(pixel_values=videos)
            pooled = out.last_hidden_state.mean(dim=1)
        seen["kept"] = out.last_hidden_state.shape[1]
        logits = F.normalize(pooled, dim=-1) @ F.normalize(targets, dim=-1).t() / 0.07
        return F.cross_entropy(logits, labels)

    def step(after_forward: Callable[[], None] | None = None) -> float:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=spec.bf16_autocast):
            loss = forward()
        if after_forward is not None:
            after_forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    flops = None
    if warm_up:
        flops = count_step_flops(step) if spec.count_flops else None
        if flops is None:
            step()
    else:
        for parameter in parameters:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return Trainee(
        step=step,
        grid_tokens=_grid_tokens(spec),
        seen=seen,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in parameters),
        attention=implementation,
        flops=flops,
    )


def _adamw(parameters: list) -> Any:
    """AdamW, fused where torch has the kernel (CPU and CUDA, torch >= 2.4): the for-each-parameter loop costs up
    to 10x more on CPU, a fixed cost per step that would hide the model's own speed."""
    import torch

    try:
        return torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0)


def _grid_tokens(spec: Spec) -> int:
    side = spec.image_size // spec.patch_size
    if spec.family in ("timesformer", "videoprism"):
        return spec.frames * side * side  # per-frame 2D patches
    if spec.family in ("vivit", "videomae"):
        return spec.frames // 2 * side * side
    if spec.tubevit:
        from videofirst.modeling.configuration_videofirst import default_tubevit_kernels, tube_grid

        return sum(
            math.prod(tube_grid(k, spec.frames, spec.image_size, spec.image_size))
            for k in default_tubevit_kernels(spec.patch_size)
        )
    t, h, w = spec.tubelet_size
    return (spec.frames // t) * (spec.image_size // h) * (spec.image_size // w)


# ----------------------------------------------------------------------------------------------- workers


def _measure_memory(spec: Spec, device: str) -> dict:
    """In a fresh process: build, warm up, then measure one training step's peak memory and time."""
    import torch

    pin_malloc()
    torch.manual_seed(0)
    probe = MemoryProbe(device)
    idle = probe.current()
    # A real warm-up step: the first forward / backward also leaves ~30 MB of lasting allocations (BLAS buffers,
    # allocator pools) that would otherwise count as activation memory.
    trainee = build(dataclasses.replace(spec, count_flops=False), device)
    before = probe.current()
    held = []  # the memory when the forward pass ends
    probe.reset_peak()
    _sync(device)
    start = time.perf_counter()
    trainee.step(lambda: held.append(probe.current()))
    _sync(device)
    seconds = time.perf_counter() - start
    peak = probe.peak()
    return {
        "memory_method": probe.method,
        "idle_mb": idle / 2**20,
        "static_mb": (before - idle) / 2**20,
        "peak_mb": (peak - idle) / 2**20,
        "step_mb": (peak - before) / 2**20,
        "act_mb": (held[0] - before) / 2**20,
        "step_s_isolated": seconds,
        "grid_tokens": trainee.grid_tokens,
        "kept_tokens": trainee.kept_tokens,
        "parameters": trainee.parameters,
        "trainable": trainee.trainable,
        "attention": trainee.attention,
    }


def _measure_timing(specs: list[Spec], device: str, rounds: int) -> list[dict]:
    """In one process: build every spec, then run their steps round-robin; per-spec median step time."""
    import torch

    torch.manual_seed(0)
    trainees = [build(spec, device) for spec in specs]  # each already warmed up once
    times: list[list[float]] = [[] for _ in specs]
    peaks: list[float] = []
    for _ in range(rounds):
        for index, trainee in enumerate(trainees):
            _sync(device)
            start = time.perf_counter()
            trainee.step()
            _sync(device)
            times[index].append(time.perf_counter() - start)
        if any(spec.matmul_peak for spec in specs):
            peaks.append(peak_matmul_flops(device, specs[0].matmul_sizes))
    results = []
    for trainee, samples in zip(trainees, times):
        row = {
            "step_s": statistics.median(samples),
            "step_s_samples": samples,
            "grid_tokens": trainee.grid_tokens,
            "kept_tokens": trainee.kept_tokens,
            "parameters": trainee.parameters,
            "trainable": trainee.trainable,
            "attention": trainee.attention,
        }
        if trainee.flops is not None:
            row["flops"] = trainee.flops
        if peaks:
            row["matmul_peak_flops"] = max(peaks)
        results.append(row)
    return results


def _profile_step(spec: Spec, device: str) -> dict:
    """Per category (GEMM / attention / other): FLOPs counted on the warm-up step, time of one profiled step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    by_op: dict[str, int] = {}
    trainee = build(spec, device, warm_up=False)
    count_step_flops(trainee.step, by_op)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    _sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as profiler:
        trainee.step()
        _sync(device)
    wall = time.perf_counter() - start
    seconds = dict.fromkeys(OP_CATEGORIES, 0.0)
    for event in profiler.key_averages():
        self_time = event.self_device_time_total if device.startswith("cuda") else event.self_cpu_time_total
        seconds[op_category(event.key)] += self_time / 1e6
    flops = dict.fromkeys(OP_CATEGORIES, 0)
    for op, count in by_op.items():
        flops[op_category(op)] += count
    return {"profiled_step_s": wall, "seconds": seconds, "flops": flops, "flops_by_op": by_op}


def _child(kind: str, payload: str, device: str, rounds: int, threads: int, connection: Any) -> None:
    try:
        import torch

        if threads > 0 and not device.startswith("cuda"):
            torch.set_num_threads(threads)
        specs = [Spec.from_json(item) for item in json.loads(payload)]
        if kind == "memory":
            result: Any = _measure_memory(specs[0], device)
        elif kind == "profile":
            result = _profile_step(specs[0], device)
        else:
            result = _measure_timing(specs, device, rounds)
        connection.send(("ok", result))
    except BaseException as error:  # report, never hang the parent
        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"))
    finally:
        connection.close()


_CONTEXT = None


def _context() -> Any:
    """A forkserver that imported torch / transformers / videofirst once; every measurement forks from it."""
    global _CONTEXT
    if _CONTEXT is None:
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:
            sys.path.insert(0, here)
        methods = multiprocessing.get_all_start_methods()
        _CONTEXT = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


def _run_child(kind: str, specs: Sequence[Spec], device: str, rounds: int, timeout: float) -> tuple[str, Any]:
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    payload = json.dumps([spec.to_json() for spec in specs])
    process = context.Process(target=_child, args=(kind, payload, device, rounds, CPU_THREADS, sender))
    process.start()
    sender.close()
    status: tuple[str, Any] = ("error", "no result")
    if receiver.poll(timeout):
        try:
            status = receiver.recv()
        except EOFError:
            status = ("error", "the measuring process died (out of memory?)")
    else:
        status = ("error", f"timed out after {timeout:.0f} s")
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    if status[0] == "error" and process.exitcode not in (0, None):
        status = ("error", f"{status[1]} (exit code {process.exitcode})")
    return status


def measure_isolated(spec: Spec, device: str, timeout: float = 900.0) -> dict:
    """Peak / activation memory (and an isolated step time) of `spec`, in a fresh process."""
    status, result = _run_child("memory", [spec], device, 0, timeout)
    if status != "ok":
        return {"error": str(result).strip().splitlines()[0]}
    return result


def measure_profile(spec: Spec, device: str, timeout: float = 1800.0) -> dict:
    """Where one training step of `spec` spends its time and FLOPs, by category, in a fresh process."""
    status, result = _run_child("profile", [spec], device, 0, timeout)
    if status != "ok":
        return {"error": str(result).strip().splitlines()[0]}
    return result


def measure_interleaved(specs: Sequence[Spec], device: str, rounds: int, timeout: float = 1800.0) -> list[dict]:
    """Median step times of `specs`, built in one fresh process and stepped round-robin."""
    status, result = _run_child("timing", specs, device, rounds, timeout)
    if status != "ok":
        message = str(result).strip().splitlines()[0]
        return [{"error": message} for _ in specs]
    return result


def describe(spec: Spec) -> dict:
    """The columns of a configuration in the result tables."""
    return {
        "config": spec.name,
        "family": spec.family,
        "frames": spec.frames,
        "attention_type": spec.attention_type if spec.family == "videofirst" else spec.family,
        "mask_ratio": spec.mask_ratio,
        "mask_type": spec.mask_type,
        "tokeniser": "tubevit" if spec.tubevit else "x".join(str(size) for size in spec.tubelet_size),
        "adaptation": spec.adaptation,
        "train_patch_embedding": spec.train_patch_embedding,
        "checkpointing": spec.checkpointing,
        "position_lookup": spec.position_lookup,
        "batch_size": spec.batch_size,
        "hidden_size": spec.hidden_size,
        "layers": spec.num_layers,
        "image_size": spec.image_size,
    }


def run_groups(
    groups: Sequence[tuple[str, Sequence[Spec]]],
    device: str,
    rounds: int | Callable[[Sequence[Spec]], int],
) -> list[dict]:
    """Memory of every distinct spec (own process each), then each group's step times (one interleaved process).

    `rounds`: timing rounds per group, or a function of the group's specs giving them."""
    memory: dict[str, dict] = {}
    rows = []
    for group, specs in groups:
        for spec in specs:
            if spec.name not in memory:
                start = time.perf_counter()
                memory[spec.name] = measure_isolated(spec, device)
                shown = memory[spec.name].get("error") or f"peak {memory[spec.name]['peak_mb']:.0f} MB"
                print(
                    f"  memory  {group:>12} {spec.name:<28} {shown} ({time.perf_counter() - start:.0f} s)", flush=True
                )
        start = time.perf_counter()
        count = rounds(specs) if callable(rounds) else rounds
        timings = measure_interleaved(specs, device, count)
        print(
            f"  timing  {group:>12} {len(specs)} configs x {count} rounds ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        for spec, timing in zip(specs, timings):
            row = {"group": group, **describe(spec), **memory[spec.name], **timing}
            if "error" in memory[spec.name] or "error" in timing:
                row["error"] = memory[spec.name].get("error") or timing.get("error")
            row.update(throughput(row, spec))
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- reporting


def throughput(row: dict, spec: Spec) -> dict:
    """clips/s and tokens/s of a timed row (tokens: video grid tokens per clip, i.e. before masking)."""
    step = row.get("step_s")
    if not step or "grid_tokens" not in row:
        return {}
    clips = spec.batch_size / step
    out = {
        "clips_per_s": clips,
        "tokens_per_s": clips * row["grid_tokens"],
        "kept_tokens_per_s": clips * row["kept_tokens"],
    }
    if row.get("flops"):
        out["tflops_per_s"] = row["flops"] / step / 1e12
        if row.get("matmul_peak_flops"):
            out["efficiency"] = row["flops"] / step / row["matmul_peak_flops"]
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in keys})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """`rows` as a markdown table, one column per `(key, title)`; a missing value shows as "-"."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def error_lines(rows: Sequence[dict]) -> str:
    """The configurations that failed, as a markdown list preceded by a blank line ("" when none did)."""
    errors = [f"* `{row['config']}`: {row['error']}" for row in rows if row.get("error")]
    return "\n" + "\n".join(errors) + "\n" if errors else ""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def tower_line(spec: Spec) -> str:
    """The size of a spec's tower, for the headers of the result files."""
    return (
        f"width {spec.hidden_size}, {spec.num_layers} layers, {spec.num_heads} heads, MLP {spec.intermediate_size}, "
        f"{spec.image_size} px, patch {spec.patch_size}, batch {spec.batch_size}"
    )


def exit_code(rows: Sequence[dict]) -> int:
    """A script's exit status: 1 when any configuration failed (its error is in the results)."""
    return 1 if any(row.get("error") for row in rows) else 0


def environment_line(device: str) -> str:
    return f"Device: {device_description(device)}. Measured {time.strftime('%Y-%m-%d %H:%M')}."


# ----------------------------------------------------------------------------------------------- plots


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frames_axis(axis: Any, ylabel: str, xlabel: str = "frames", legend_size: int | None = None) -> None:
    """An axis over frame counts: log2 x scale, labels, a light grid, the legend when something is labelled."""
    axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=legend_size)


def save_figure(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
