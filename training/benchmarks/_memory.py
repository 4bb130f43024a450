"""Memory of this process, for the benchmarks that measure a training step's memory (see `_isolation.py`).

* CUDA: `torch.cuda.max_memory_allocated()` (tensors only; the CUDA context is not counted);
* CPU: the kernel's peak resident set size (`VmHWM`, reset through `/proc/self/clear_refs` before each
  measured step; without `/proc`, the RSS sampled every millisecond), with glibc's mmap threshold pinned to
  64 KiB (`pin_malloc`) so that freed tensors leave the RSS at once.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

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
