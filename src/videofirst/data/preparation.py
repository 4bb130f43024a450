"""Preparing a collection as tar shards (`prepare_shards`, CLI ``training/prepare_data.py``).

decoding dominates long-video training, so a
collection is transcoded once. Each video is sampled at the training frame rate with the exact rules of
`read_video_frames` (the frame on screen at every ``k / fps`` seconds of its clip), resized so its shortest
edge is ``size``, and re-encoded as H.264 with a keyframe every ``keyframe_interval`` seconds, no B-frames, and
x264's ``fastdecode`` tuning, byte-reproducibly (bit-exact muxing without version tags or creation time, one
encoder and one scaler thread). Why transcoded mp4 rather than stored frames: the processor reads it unchanged
(same sampling code, clip bounds, timestamps, checks), it is several times smaller than the same frames as
JPEGs, and it keeps any lower sampling rate or sub-clip available; with short keyframe intervals a clip decodes
from a nearby keyframe. Images are re-encoded as JPEG at the same size. Work is spread over a process pool (one
task per file); shards are written in manifest order, each atomically, followed by a done-marker
(``shard-000012.json``, which also lists the shard's bad files and the byte offset and size of every member),
so an interrupted run resumes at the first unfinished shard and rebuilds it byte for byte. A file that fails
(bad input, decode error, a clip longer than ``max_clip_frames`` frames, or a worker stuck past the time limit,
which is then killed) is skipped and listed in ``bad_files.jsonl``; ``report.json`` sums up the run. The
manifest is read with `videofirst.data.sources.load_manifest`, which refuses rows without a proper caption up front.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from videofirst.data.shards import (
    BAD_FILES,
    FORMAT_VERSION,
    REPORT_FILE,
    SETTINGS_FILE,
    SHARD_NAME,
    TarShardWriter,
    encode_image,
    transcode_video,
)
from videofirst.data.sources import load_manifest

logger = logging.getLogger(__name__)


@dataclass
class PrepareSettings:
    """What the shards store; recorded in ``prepared.json`` and checked when a run resumes."""

    fps: float = 1.0
    size: int = 224
    keyframe_interval: float = 2.0
    crf: int = 23
    preset: str = "fast"
    tune: str | None = "fastdecode"
    samples_per_shard: int = 64
    # Keep at most this many frames of each video (None: all) ...
    max_frames: int | None = None
    # ... and refuse (as a bad file) a clip that would hold more than this many (a timestamp gap can make a
    # 3-frame file last 100000 s). None: no bound.
    max_clip_frames: int | None = 18_000
    format_version: int = FORMAT_VERSION


@dataclass
class PrepareReport:
    output_dir: str
    total: int = 0
    prepared: int = 0
    bad: int = 0
    shards: int = 0
    resumed_shards: int = 0
    seconds: float = 0.0
    bytes: int = 0
    bad_files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0


def prepare_one(row_index: int, row: dict[str, Any], settings: PrepareSettings, options: dict[str, Any]) -> dict:
    """Transcodes one manifest row; returns ``{"row", "files"}`` or ``{"row", "error"}``. Runs in a worker."""
    started = time.monotonic()
    try:
        if row["media"] is None:
            raise ValueError("the row names no media file")
        if row["modality"] == "image":
            data, facts = encode_image(row["media"], settings.size)
            media = {"jpg": data}
        else:
            data, facts = transcode_video(
                row["media"],
                fps=settings.fps,
                size=settings.size,
                keyframe_interval=settings.keyframe_interval,
                crf=settings.crf,
                preset=settings.preset,
                tune=settings.tune,
                start=row.get("start"),
                end=row.get("end"),
                decode_backend=options.get("decode_backend", "auto"),
                decode_timeout=options.get("decode_timeout"),
                max_frames=settings.max_frames,
                frame_limit=settings.max_clip_frames,
            )
            media = {"mp4": data}
    except Exception as err:  # every failure is a bad file, reported, never fatal
        return {"row": row_index, "error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - started}
    metadata = {
        "caption": row["caption"],
        "modality": row["modality"],
        "source": row["media"],
        "source_start": row.get("start"),
        "source_end": row.get("end"),
        "row": row_index,
        **facts,
    }
    files = {"json": json.dumps(metadata, sort_keys=True).encode(), "txt": str(row["caption"]).encode(), **media}
    return {"row": row_index, "files": files, "seconds": time.monotonic() - started}


def _shard_ranges(total: int, per_shard: int) -> list[range]:
    return [range(start, min(total, start + per_shard)) for start in range(0, total, per_shard)]


def _write_json(path: Path, payload: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def _check_settings(output_dir: Path, settings: PrepareSettings, manifest: str, total: int) -> None:
    recorded_path = output_dir / SETTINGS_FILE
    current = {"settings": asdict(settings), "manifest": manifest, "rows": total}
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())
        if recorded.get("settings") != current["settings"] or recorded.get("rows") != total:
            raise ValueError(
                f"{output_dir} holds shards prepared with other settings or another manifest ({recorded}); "
                "resume with the same settings, or use a new output folder."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(recorded_path, current)


class _Pool:
    """Runs `prepare_one` over rows with at most `window` files in flight, results in row order. A file whose
    worker does not answer within `task_timeout` is reported bad and the pool is restarted (killing the stuck
    worker); the other files in flight are resubmitted."""

    def __init__(self, workers: int, settings: PrepareSettings, options: dict, task_timeout: float | None):
        self.workers = workers
        self.settings = settings
        self.options = options
        self.task_timeout = task_timeout
        # fork is cheap (no re-import of torch in every worker); spawn where fork does not exist.
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.pool = None

    def _start(self):
        self.pool = self.context.Pool(self.workers, maxtasksperchild=32) if self.workers > 0 else None

    def run(self, jobs: Iterator[tuple[int, dict]]) -> Iterator[dict]:
        if self.workers <= 0:
            for index, row in jobs:
                yield prepare_one(index, row, self.settings, self.options)
            return
        self._start()
        window = 2 * self.workers
        pending: deque[tuple[int, dict, Any, float]] = deque()
        try:
            jobs = iter(jobs)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                        break
                    pending.append((*job, self._submit(*job), time.monotonic()))
                if not pending:
                    break
                index, row, result, submitted = pending[0]
                # Up to `window` files are queued ahead of a file, so it may wait for one turn before it starts.
                limit = None
                if self.task_timeout is not None:
                    limit = max(0.0, submitted + 2 * self.task_timeout - time.monotonic())
                try:
                    outcome = result.get(timeout=limit)
                except multiprocessing.TimeoutError:
                    outcome = {"row": index, "error": f"timed out: no result after {2 * self.task_timeout:g} s"}
                    pending.popleft()
                    self.pool.terminate()
                    self._start()
                    pending = deque((i, r, self._submit(i, r), time.monotonic()) for i, r, _, _ in pending)
                    yield outcome
                    continue
                pending.popleft()
                yield outcome
        finally:
            if self.pool is not None:
                self.pool.terminate()

    def _submit(self, index: int, row: dict):
        return self.pool.apply_async(prepare_one, (index, row, self.settings, self.options))


def prepare_shards(
    manifest: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: PrepareSettings | None = None,
    *,
    workers: int | None = None,
    decode_backend: str = "auto",
    decode_timeout: float | None = 300.0,
    task_timeout: float | None = 1800.0,
    progress: bool = True,
) -> PrepareReport:
    """Transcodes every row of `manifest` into tar shards in `output_dir` (see the module docstring).

    Finished shards (done-marker present) are skipped, so calling it again after an interruption resumes.
    `workers` processes (default: all cores; 0 runs in this process), `decode_timeout` bounds one decode call
    inside a worker, `task_timeout` one file as seen from here (a worker stuck past it is killed).
    """
    settings = settings or PrepareSettings()
    if settings.samples_per_shard < 1 or settings.fps <= 0 or settings.size < 2 or settings.keyframe_interval <= 0:
        raise ValueError(f"invalid settings {settings}")
    started = time.monotonic()
    output_dir = Path(output_dir)
    rows = [dict(row) for row in load_manifest(manifest)]
    _check_settings(output_dir, settings, str(Path(manifest).resolve()), len(rows))
    ranges = _shard_ranges(len(rows), settings.samples_per_shard)
    report = PrepareReport(output_dir=str(output_dir), total=len(rows), shards=len(ranges))
    todo: list[tuple[int, range]] = []
    for shard_index, shard_rows in enumerate(ranges):
        marker = _read_marker(output_dir, shard_index)
        if marker is None:
            todo.append((shard_index, shard_rows))
            continue
        report.resumed_shards += 1
        report.prepared += marker["samples"]
        report.bad_files.extend(marker["bad_files"])
        report.bytes += marker["bytes"]
    options = {"decode_backend": decode_backend, "decode_timeout": decode_timeout}
    workers = (os.cpu_count() or 1) if workers is None else workers
    jobs = ((index, rows[index]) for _, shard_rows in todo for index in shard_rows)
    results = _Pool(workers, settings, options, task_timeout).run(jobs)
    done_files = report.prepared + len(report.bad_files)
    for shard_index, shard_rows in todo:
        writer = TarShardWriter(output_dir / SHARD_NAME.format(shard_index))
        bad: list[dict] = []
        try:
            for _ in shard_rows:
                outcome = next(results)
                row = rows[outcome["row"]]
                if "error" in outcome:
                    bad.append({"row": outcome["row"], "media": row["media"], "reason": outcome["error"]})
                    logger.warning("Bad file %s: %s", row["media"], outcome["error"])
                else:
                    writer.add(f"{outcome['row']:09d}", outcome["files"])
                done_files += 1
                if progress:
                    print(f"\rprepared {done_files}/{len(rows)} files", end="", flush=True)
        except BaseException:
            writer.abort()
            raise
        size = writer.close()
        marker = {
            "shard": writer.path.name,
            "rows": [shard_rows.start, shard_rows.stop],
            "samples": len(writer.samples),
            "bytes": size,
            "bad_files": bad,
            "index": writer.samples,
        }
        _write_json(output_dir / _marker_name(shard_index), marker)
        report.prepared += len(writer.samples)
        report.bad_files.extend(bad)
        report.bytes += size
    results.close()  # stops the worker pool now rather than whenever the generator is collected
    if progress:
        print()
    report.bad = len(report.bad_files)
    report.seconds = time.monotonic() - started
    with open(output_dir / BAD_FILES, "w") as handle:
        for entry in sorted(report.bad_files, key=lambda item: item["row"]):
            handle.write(json.dumps(entry) + "\n")
    summary = {key: value for key, value in asdict(report).items() if key != "bad_files"}
    _write_json(output_dir / REPORT_FILE, {**summary, "bad_fraction": report.bad_fraction})
    return report


def _marker_name(shard_index: int) -> str:
    return Path(SHARD_NAME.format(shard_index)).with_suffix(".json").name


def _read_marker(output_dir: Path, shard_index: int) -> dict | None:
    marker_path = output_dir / _marker_name(shard_index)
    shard_path = output_dir / SHARD_NAME.format(shard_index)
    if not marker_path.is_file() or not shard_path.is_file():
        return None
    try:
        marker = json.loads(marker_path.read_text())
    except json.JSONDecodeError:
        return None
    if marker.get("bytes") != shard_path.stat().st_size:
        return None  # the shard was replaced or damaged after it was marked done
    return marker
