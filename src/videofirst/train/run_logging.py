"""What a run reports: a JSONL log in the run folder (always), accelerate trackers, throughput and memory."""

import importlib.util
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)


def tracker_names(requested: str) -> list[str]:
    """`"auto"` means TensorBoard when it is installed; `"none"` disables trackers; else a comma list."""
    if requested == "none":
        return []
    if requested == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [name.strip() for name in requested.split(",") if name.strip()]


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory allocated by tensors, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class RunLogger:
    """Writes metrics from the main process to `metrics.jsonl` and the accelerate trackers."""

    def __init__(self, accelerator: Accelerator, run_dir: Path):
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"
        self._window_start = time.perf_counter()
        self._window_videos = 0
        self._window_tokens = 0

    def count(self, videos: int, tokens: int) -> None:
        """Add one step's global number of clips and kept video tokens to the throughput window."""
        self._window_videos += videos
        self._window_tokens += tokens

    def throughput(self) -> dict[str, float]:
        """Clips/s and tokens/s since the last call (the window then restarts)."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        rates = {
            "videos_per_second": self._window_videos / elapsed,
            "tokens_per_second": self._window_tokens / elapsed,
            "peak_memory_gb": peak_memory_bytes(self.accelerator.device) / 2**30,
        }
        self._window_start, self._window_videos, self._window_tokens = time.perf_counter(), 0, 0
        return rates

    def truncate(self, size: int) -> None:
        """Cut the log back to its first `size` bytes (its size at the checkpoint a run resumes from)."""
        if not self.accelerator.is_main_process or not self.path.exists():
            return
        if self.path.stat().st_size < size:
            logger.warning(
                "%s is shorter than when the checkpoint was saved (%d bytes): appending to it.", self.path, size
            )
            return
        with self.path.open("r+b") as handle:
            handle.truncate(size)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, **metrics}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.accelerator.log(metrics, step=step)
