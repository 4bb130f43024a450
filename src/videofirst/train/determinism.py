"""Bit-reproducible training: the `run.deterministic` switch, applied once at run setup.

What makes two runs of one recipe and seed bit-identical (and a resumed run equal to an uninterrupted one):

- the randomness: `run.seed`, re-seeded per micro-batch (`videofirst.train.loop.reseed`);
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

__all__ = ["CUBLAS_WORKSPACE", "configure_determinism"]

logger = logging.getLogger(__name__)

# The workspace PyTorch's reproducibility notes give for cuBLAS >= 10.2 (":16:8" also works, with less memory and
# possibly slower GEMMs).
CUBLAS_WORKSPACE = ":4096:8"


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
