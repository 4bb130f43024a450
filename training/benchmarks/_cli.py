"""The command line every memory / speed benchmark shares, and the device it measures on.

`setup` turns the shared options into the device and the CPU threads of the measuring processes;
`device_description` names both in the result files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _towers import SIZES

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "training" / "benchmarks" / "results"
CPU_THREADS = 1  # see `set_cpu_threads`


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


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads of the measuring processes on CPU (0: torch's default).

    The default is 1: on a CPU shared with other jobs, torch's OpenMP threads wait for each other at every
    operator, and a step with 2 threads on 2 busy cores measured 5-20x slower and far noisier than with 1.
    """
    global CPU_THREADS
    CPU_THREADS = threads


def device_description(device: str) -> str:
    """The device, and on CPU the torch threads of each measuring process, for the result files' headers."""
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
