"""Decoding benchmark: seconds to sample N frames at 1 FPS from a long video, resized to 224, side by side.

    python training/benchmarks/decode.py --video /tmp/bbb/bbb_full.mp4            # 256 frames, 3 repeats
    python training/benchmarks/decode.py --video clip.mp4 --frames 64 --repeats 5 --out /tmp/decode_results

Methods (all on the clip [0, frames / fps) of `--video`, frames resized so the shortest edge is 224):

* ``processor_decord`` / ``processor_pyav``: (a) ``VideoFirstVideoProcessor`` with ``decode_backend`` decord or
  pyav (the default, ``"auto"``, where av is installed): sampling, decode-time resize, centre crop, normalisation
  (the full training input);
* ``hf_load_video_decord`` / ``hf_load_video_pyav``: (b) transformers' ``load_video`` with the same frame indices,
  then the same resize / crop / normalisation (our processor on the decoded frames);
* ``sequential_decode``: (c) one sequential PyAV decode of every frame of the clip, nothing converted: the floor
  for exact sampling when keyframes are further apart than the sampling period;
* ``shard_read`` / ``shard_processor``: (d) the clip prepared once with ``videofirst.data.shards`` (1 FPS, shortest
  edge 224, a keyframe every 2 s) and read back from its tar shard: decoded frames, and the full processor;
* ``fast_snap_inf`` / ``fast_snap_1s``: the opt-in fast mode (``keyframe_snap``, PyAV): every sample moved to
  its nearest keyframe, or only when one is within 1 s; their timing error against exact sampling is reported.

Every repeat runs all methods once, in a rotated order, so the load of a shared machine hits them alike; the
report gives each method's median time and the median of the per-repeat ratios. Results go to
``OUT/decode.csv`` (every timing) and ``OUT/decode.md`` (the table and the goals).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor, read_video_frames

from videofirst.data.preparation import PrepareSettings, prepare_shards
from videofirst.data.shards import index_tar_shard, read_range

RESULTS = Path(__file__).resolve().parent / "results"


def _sequential_decode(path: str, span: float) -> int:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = 0
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= span:
                break
            decoded += 1
    return decoded


def _hf_load_video(path: str, backend: str, indices: np.ndarray) -> np.ndarray:
    from transformers.video_utils import load_video

    video, _ = load_video(path, backend=backend, sample_indices_fn=lambda metadata, **_: indices)
    return np.asarray(video)


def build_methods(video: str, frames: int, fps: float, size: int, work: Path) -> tuple[dict[str, Callable], dict]:
    """The timed callables (each returns frames) and facts gathered while setting them up."""
    processor = VideoFirstVideoProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    span = frames / fps
    exact_times = read_video_frames(video, fps=fps, num_frames=frames, sampling="window", size=16, backend="pyav")[1]
    # The same indices for transformers' loader: our sampler's choice (frame on screen at k / fps).
    video_fps = float(
        processor(video, fps=fps, num_frames=1, sampling="window", return_metadata=True)["video_metadata"][0].fps
    )
    indices = np.floor(np.arange(len(exact_times)) / fps * video_fps + 1e-6).astype(np.int64)

    manifest = work / "clip.jsonl"
    manifest.write_text(json.dumps({"video": os.path.abspath(video), "caption": "benchmark clip", "end": span}) + "\n")
    started = time.perf_counter()
    report = prepare_shards(manifest, work / "shards", PrepareSettings(fps=fps, size=size), workers=0, progress=False)
    prepare_seconds = time.perf_counter() - started
    if report.prepared != 1:
        raise RuntimeError(f"preparing the clip failed: {report.bad_files}")
    (row,) = index_tar_shard(work / "shards" / "shard-000000.tar")[0]

    def shard_bytes() -> bytes:
        return read_range(row["media"], row["offset"], row["size"])

    def pixels(decoded: np.ndarray):
        return processor(decoded, return_tensors="pt")["pixel_values_videos"]

    def processed(**kwargs):
        return processor(video, fps=fps, num_frames=frames, sampling="window", return_tensors="pt", **kwargs)[
            "pixel_values_videos"
        ]

    methods = {
        "processor_decord": lambda: processed(decode_backend="decord"),
        "processor_pyav": lambda: processed(decode_backend="pyav"),
        "hf_load_video_decord": lambda: pixels(_hf_load_video(video, "decord", indices)),
        "hf_load_video_pyav": lambda: pixels(_hf_load_video(video, "pyav", indices)),
        "sequential_decode": lambda: _sequential_decode(video, span),
        "shard_read": lambda: read_video_frames(
            shard_bytes(), fps=fps, num_frames=frames, sampling="window", backend="pyav"
        )[0],
        "shard_processor": lambda: processor(
            shard_bytes(), fps=fps, num_frames=frames, sampling="window", decode_backend="pyav", return_tensors="pt"
        )["pixel_values_videos"],
        "fast_snap_inf": lambda: processed(decode_backend="pyav", keyframe_snap=math.inf),
        "fast_snap_1s": lambda: processed(decode_backend="pyav", keyframe_snap=1.0),
    }
    facts = {
        "samples": len(exact_times),
        "prepare_seconds": prepare_seconds,
        "shard_bytes": row["size"],
        "exact_times": exact_times,
        "video_fps": video_fps,
    }
    for name, snap in (("fast_snap_inf", math.inf), ("fast_snap_1s", 1.0)):
        snapped = read_video_frames(
            video, fps=fps, num_frames=frames, sampling="window", size=16, backend="pyav", keyframe_snap=snap
        )[1]
        error = np.abs(snapped - exact_times)
        facts[name] = {
            "mean_error_s": float(error.mean()),
            "max_error_s": float(error.max()),
            "moved": float((error > 1e-6).mean()),
            "distinct_frames": len(np.unique(snapped)),
        }
    return methods, facts


def run(video: str, frames: int, fps: float, size: int, repeats: int, work: Path) -> tuple[list[dict], dict]:
    methods, facts = build_methods(video, frames, fps, size, work)
    names = list(methods)
    rows = []
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order between repeats
            started = time.perf_counter()
            result = methods[name]()
            seconds = time.perf_counter() - started
            count = (
                result if isinstance(result, int) else int(result.shape[-4] if result.ndim == 5 else result.shape[0])
            )
            rows.append({"repeat": repeat, "method": name, "seconds": round(seconds, 4), "frames": count})
            print(f"repeat {repeat} {name:22s} {seconds:7.2f} s", flush=True)
    return rows, facts


def summarise(rows: list[dict], facts: dict, args) -> str:
    by_method: dict[str, dict[int, float]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["repeat"]] = row["seconds"]
    median = {name: statistics.median(times.values()) for name, times in by_method.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(by_method[a][r] / by_method[b][r] for r in by_method[a])

    floor = "sequential_decode"
    lines = [
        f"# Decoding benchmark: {facts['samples']} frames at {args.fps:g} FPS, shortest edge {args.size}",
        "",
        f"Video: `{Path(args.video).name}` ({facts['video_fps']:g} fps); clip [0, {args.frames / args.fps:g}) s. "
        f"{args.repeats} repeats, methods interleaved; median seconds, and the median of per-repeat ratios to (c). "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); "
        f"load average {facts['load_before']} before, {facts['load_after']} after.",
        "",
        "| method | what | median s | x (c) |",
        "|---|---|---:|---:|",
    ]
    labels = {
        "processor_decord": '(a) our processor, `decode_backend="decord"`',
        "processor_pyav": '(a) our processor, PyAV (the default backend, `"auto"`, when av is installed)',
        "hf_load_video_decord": "(b) transformers `load_video`, decord",
        "hf_load_video_pyav": "(b) transformers `load_video`, pyav",
        "sequential_decode": "(c) one sequential decode of the span (floor)",
        "shard_read": "(d) prepared shard: read + decode",
        "shard_processor": "(d) prepared shard: full processor",
        "fast_snap_inf": "fast mode, `keyframe_snap=inf`",
        "fast_snap_1s": "fast mode, `keyframe_snap=1.0`",
    }
    for name, label in labels.items():
        lines.append(f"| `{name}` | {label} | {median[name]:.2f} | {ratio(name, floor):.3f} |")
    best_ours = "processor_pyav"  # the processor's default backend ("auto") where av is installed
    fastest_hf = min(median["hf_load_video_decord"], median["hf_load_video_pyav"])
    read_speedup = 1 / ratio("shard_read", floor)
    goals = [
        (
            "(a) default backend within 1.2x of (c)",
            f"{best_ours}: {ratio(best_ours, floor):.2f}x",
            ratio(best_ours, floor) <= 1.2,
        ),
        (
            "(a) faster than every (b)",
            f"{median[best_ours]:.2f} s vs {fastest_hf:.2f} s",
            median[best_ours] < fastest_hf,
        ),
        (
            "(d) at least 20x faster than (c)",
            f"read {read_speedup:.1f}x, processor {1 / ratio('shard_processor', floor):.1f}x",
            read_speedup >= 20,
        ),
    ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {'yes' if met else 'no'} |" for goal, measured, met in goals]
    lines += ["", "Fast mode (PyAV, against exact sampling with the same backend):", ""]
    lines += ["| setting | speedup | mean timing error | max timing error | samples moved | distinct frames |"]
    lines += ["|---|---:|---:|---:|---:|---:|"]
    for name in ("fast_snap_inf", "fast_snap_1s"):
        info = facts[name]
        lines.append(
            f"| `{name}` | {1 / ratio(name, 'processor_pyav'):.1f}x | {info['mean_error_s']:.2f} s | "
            f"{info['max_error_s']:.2f} s | {info['moved']:.0%} | {info['distinct_frames']} of {facts['samples']} |"
        )
    lines += [
        "",
        f"Preparing the clip (one-off, 1 process): {facts['prepare_seconds']:.1f} s; shard sample "
        f"{facts['shard_bytes'] / 2**20:.2f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="a long H.264 video (e.g. the full Big Buck Bunny)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the prepared shard")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        rows, facts = run(args.video, args.frames, args.fps, args.size, args.repeats, work)
    facts["load_before"] = load_before
    facts["load_after"] = " ".join(f"{value:.1f}" for value in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "decode.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["repeat", "method", "seconds", "frames"])
        writer.writeheader()
        writer.writerows(rows)
    report = summarise(rows, facts, args)
    (args.out / "decode.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
