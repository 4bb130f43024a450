"""Bit-reproducible training: the seed streams of the forward passes (`reseed`) and the `run.deterministic` switch,
applied once at run setup (`configure_determinism`).

What makes two runs of one recipe and seed bit-identical (and a resumed run equal to an uninterrupted one):

- the randomness: `run.seed`, re-seeded before every forward pass on a named seed stream (`reseed`, below);
- the model: its masked path has no accumulation whose order depends on thread scheduling (the kept tokens'
  position embeddings are gathered per sample, `VideoFirstEmbeddings.kept_positions`), so on CPU it is
  deterministic with or without this switch;
- the kernels: with the switch on, `torch.use_deterministic_algorithms(True)` makes PyTorch pick deterministic
  implementations (e.g. serial indexed accumulation on CPU, sorted scatter on CUDA) and raise an error naming any op
  that has none, and on CUDA cuBLAS gets the fixed workspace (`CUBLAS_WORKSPACE_CONFIG`) its reproducible GEMMs need
  and cuDNN stops benchmarking algorithms.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = [
    "CHUNK_STREAM_STRIDE",
    "CUBLAS_WORKSPACE",
    "EVALUATION_STREAM",
    "IMAGE_STREAM_OFFSET",
    "chunk_stream",
    "configure_determinism",
    "image_stream",
    "reseed",
]

logger = logging.getLogger(__name__)

# The workspace PyTorch's reproducibility notes give for cuBLAS >= 10.2 (":16:8" also works, with less memory and
# possibly slower GEMMs).
CUBLAS_WORKSPACE = ":4096:8"

# The seed streams (see `reseed`). Changing a value changes every run's masking and dropout: committed benchmark
# results would no longer reproduce.
IMAGE_STREAM_OFFSET = 500  # an image-text batch co-training with video micro-batch `slot` uses stream `slot + 500`
CHUNK_STREAM_STRIDE = 1_000  # gradient caching: chunk `c` of the batch on stream `s` uses stream `s * 1000 + c`
EVALUATION_STREAM = 999_983  # inference-time masking in held-out evaluation (a prime far above any training stream)


def reseed(seed: int, step: int, stream: int, process: int) -> None:
    """Seed torch's global generator for one forward pass, from `(seed, step, stream, process)` alone.

    This is the determinism contract of the training loops: every forward pass that draws random numbers (token
    masking, dropout) first calls `reseed` with the run's seed, the optimizer step, its seed stream and the process
    index, so a run resumed from a checkpoint needs no RNG state beyond the step, and replays exactly what the
    uninterrupted run would have done. The streams one step uses (all distinct while `slot < IMAGE_STREAM_OFFSET`,
    i.e. fewer than 500 micro-batches per optimizer step, and fewer than 1,000 gradient-caching chunks):

    - `slot`: the video-text micro-batch `slot` of the step (0 without gradient accumulation);
    - `image_stream(slot)` = `slot + IMAGE_STREAM_OFFSET`: the image-text batch trained beside it;
    - `chunk_stream(stream, c)` = `stream * CHUNK_STREAM_STRIDE + c`: chunk `c` of a batch under gradient caching
      (`optim.contrastive_micro_batches`), both when embedded without a graph and when replayed with one;
    - `EVALUATION_STREAM` (process 0): held-out evaluation of the video-to-text model, whose inference masks tokens
      too, so every evaluation of a run draws the same masks.

    The data order does not come from here: it follows `(seed, epoch)` (`videofirst.train.loop.batches_from`).
    """
    torch.manual_seed(((seed * 1_000_003 + step) * 1_009 + stream) * 257 + process)


def image_stream(slot: int) -> int:
    """The seed stream of the image-text batch trained with video micro-batch `slot` (see `reseed`)."""
    return slot + IMAGE_STREAM_OFFSET


def chunk_stream(stream: int, chunk: int) -> int:
    """The seed stream of chunk `chunk` of the batch on `stream` under gradient caching (see `reseed`)."""
    return stream * CHUNK_STREAM_STRIDE + chunk


def configure_determinism(deterministic: bool | None, device: torch.device) -> bool:
    """Apply `run.deterministic` for a run on `device`; returns whether deterministic mode is on.

    `None` (the default) means on for CPU runs, where it costs nothing measurable, and off on accelerators, where
    deterministic kernels can be slower. Must run before the first CUDA matmul: cuBLAS reads its workspace setting
    when it creates its handle. An existing `CUBLAS_WORKSPACE_CONFIG` is kept.
    """
    enabled = device.type == "cpu" if deterministic is None else bool(deterministic)
    if enabled and device.type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(enabled)
    if enabled:
        torch.backends.cudnn.benchmark = False
    logger.info(
        "Deterministic algorithms %s (run.deterministic=%s, device %s).",
        "on" if enabled else "off",
        deterministic,
        device.type,
    )
    return enabled
