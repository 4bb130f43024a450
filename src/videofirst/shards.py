"""WebDataset-style tar shards: reading them, and preparing them from a manifest.

A shard is a plain (uncompressed) tar whose members are grouped into samples by key: ``000000042.mp4``,
``000000042.json`` and ``000000042.txt`` form the sample ``000000042`` (the key is the member name up to the
first dot of its file name, as in WebDataset). A sample has one media member (a video: ``mp4``, ``mkv``,
``webm``, ``mov``, ``avi``; or an image: ``jpg``, ``jpeg``, ``png``, ``webp``) and a caption in ``txt`` or in
``json`` (``caption`` or ``text``); the ``json`` may also give ``start`` / ``end`` seconds.

Reading: `index_tar_shard` lists the samples of a local shard with the byte range of their media member, so a
map-style dataset reads any sample with one seek (`read_range`); `iter_tar_samples` reads a shard front to back
(local or remote, e.g. ``hf://`` or ``https://`` through fsspec) for streaming. Unreadable or truncated shards,
incomplete samples and samples whose caption is not a non-empty UTF-8 string are reported as bad samples,
never raised.

Preparing (`prepare_shards`, CLI ``training/prepare_data.py``): decoding dominates long-video training, so a
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
manifest is read with `videofirst.data.load_manifest`, which refuses rows without a proper caption up front.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import re
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "mov", "avi")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_NAME = "shard-{:06d}.tar"
SETTINGS_FILE = "prepared.json"
REPORT_FILE = "report.json"
BAD_FILES = "bad_files.jsonl"
FORMAT_VERSION = 2  # 2: no B-frames (really), bit-exact muxing, real member offsets
_CHUNK_FRAMES = 512  # frames decoded at once while transcoding (bounds a worker's memory)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def split_member_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """``dir/000042.seg.mp4`` -> (``dir/000042``, ``seg.mp4``): the key is everything before the first dot of
    the file name; (None, None) for names without an extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None, None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _media_extension(extensions: Sequence[str]) -> tuple[str | None, str | None]:
    for extension in extensions:
        last = extension.rsplit(".", 1)[-1]
        if last in VIDEO_EXTENSIONS:
            return extension, "video"
        if last in IMAGE_EXTENSIONS:
            return extension, "image"
    return None, None


def sample_row(key: str, shard: str, metadata: dict[str, bytes], media: tuple[str, int, int] | None) -> dict:
    """A normalised row (the data pipeline's schema) for one tar sample.

    `metadata` holds the small members (``txt`` / ``json``) by extension; `media` is ``(extension, offset,
    size)`` of the media member, or None. A sample without media or caption gets an ``error`` (it is then
    counted as a bad sample when read).
    """
    info: dict[str, Any] = {}
    error = None
    if "json" in metadata:
        try:
            parsed = json.loads(metadata["json"].decode("utf-8"))
            info = parsed if isinstance(parsed, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            error = f"invalid json member: {err}"
    caption = info.get("caption") if info.get("caption") is not None else info.get("text")
    if caption is None and "txt" in metadata:
        try:
            caption = metadata["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            error = error or f"the txt member is not UTF-8 ({err})"
    extension, modality = _media_extension([media[0]] if media else [])
    problem = caption_problem(caption)
    if media is None:
        error = error or "sample has no video or image member"
    elif caption is None or (isinstance(caption, str) and problem is not None):
        error = error or "sample has no caption (txt, or caption/text in json)"
    elif problem is not None:
        error = error or f"the caption is {problem}"
    return {
        "media": shard,
        "modality": modality or str(info.get("modality") or "video"),
        "caption": caption if isinstance(caption, str) else "",
        "start": _seconds(info.get("start")),
        "end": _seconds(info.get("end")),
        "offset": media[1] if media else None,
        "size": media[2] if media else None,
        "key": key,
        "error": error,
    }


def caption_problem(caption: Any) -> str | None:
    """What is wrong with a caption (None when it is a non-empty string): "missing", "empty", "a number: 5"..."""
    if caption is None:
        return "missing"
    if isinstance(caption, (int, float)) and not isinstance(caption, bool):
        return f"a number: {caption!r}"
    if not isinstance(caption, str):
        return f"not a string: {caption!r}"
    if not caption.strip():
        return "empty" if not caption else "empty (whitespace only)"
    return None


def _seconds(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_METADATA_EXTENSIONS = ("txt", "json")
_MAX_METADATA_BYTES = 16 * 2**20


def _sample_members(archive: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """``(key, extension, member)`` for the regular files of `archive` that belong to a sample, in archive order
    (see `split_member_name`)."""
    for member in archive:
        if not member.isfile():
            continue
        key, extension = split_member_name(member.name)
        if key is not None:
            yield key, extension, member


def index_tar_shard(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """Rows (see `sample_row`) of a local shard, with the byte range of each media member, plus an error
    message when the shard is unreadable or truncated (the rows read before the damage are kept)."""
    path = os.fspath(path)
    rows: list[dict] = []
    current_key, metadata, media = None, {}, None

    def flush():
        if current_key is not None:
            rows.append(sample_row(current_key, path, metadata, media))

    try:
        with tarfile.open(path, mode="r:") as archive:
            for key, extension, member in _sample_members(archive):
                if key != current_key:
                    flush()
                    current_key, metadata, media = key, {}, None
                if extension in _METADATA_EXTENSIONS and member.size <= _MAX_METADATA_BYTES:
                    handle = archive.extractfile(member)
                    metadata[extension] = handle.read() if handle is not None else b""
                elif media is None and _media_extension([extension])[0] is not None:
                    media = (extension, member.offset_data, member.size)
            flush()
    except (tarfile.TarError, OSError, EOFError) as err:
        flush()
        return rows, f"cannot read tar shard {path} ({type(err).__name__}: {err}); {len(rows)} samples read before it"
    return rows, None


def read_range(path: str, offset: int, size: int) -> bytes:
    """The bytes of one tar member."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{path} ends before byte {offset + size} (truncated shard?)")
    return data


def iter_tar_samples(url: str, opener: Callable[[str], BinaryIO] | None = None) -> Iterator[dict]:
    """Samples of a shard read front to back (streaming): rows as in `sample_row` with the media bytes under
    ``data`` instead of a byte range. A damaged shard ends with one row carrying an ``error``."""
    current_key, metadata, media_name, media_data = None, {}, None, None

    def row():
        media = (media_name, 0, len(media_data)) if media_name is not None else None
        result = sample_row(current_key, url, metadata, media)
        result.update(offset=None, size=None, data=media_data)
        return result

    try:
        with (opener or _open_url)(url) as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for key, extension, member in _sample_members(archive):
                if key != current_key:
                    if current_key is not None:
                        yield row()
                    current_key, metadata, media_name, media_data = key, {}, None, None
                if extension in _METADATA_EXTENSIONS and member.size <= _MAX_METADATA_BYTES:
                    metadata[extension] = archive.extractfile(member).read()
                elif media_name is None and _media_extension([extension])[0] is not None:
                    media_name, media_data = extension, archive.extractfile(member).read()
            if current_key is not None:
                yield row()
    except (tarfile.TarError, OSError, EOFError) as err:
        yield {
            "media": url, "modality": "video", "caption": "", "start": None, "end": None, "offset": None,
            "size": None, "key": None, "data": None,
            "error": f"cannot read tar shard {url} ({type(err).__name__}: {err})",
        }  # fmt: skip


def _open_url(url: str) -> BinaryIO:
    if "://" not in url:
        return open(url, "rb")
    import fsspec  # remote shards (hf://, https://, s3://, ...)

    return fsspec.open(url, "rb").open()


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


class TarShardWriter:
    """Writes samples to ``path`` through a temporary file that is renamed into place on `close`, with
    deterministic member headers (so a rebuilt shard is byte-identical)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.archive = tarfile.open(self.partial, mode="w", format=tarfile.PAX_FORMAT)
        self.samples: list[dict] = []

    def add(self, key: str, files: dict[str, bytes]) -> None:
        """Adds one sample's members (``{extension: bytes}``, in that order) and records where each member's data
        starts in the shard (``samples``, written to the shard's done-marker as its index)."""
        entry: dict[str, Any] = {"key": key}
        for extension, data in files.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # uid/gid 0 and empty owner names by default
            self.archive.addfile(info, io.BytesIO(data))
            # The data ends at the archive's position, padded to a whole block (tarfile does not set offset_data
            # when writing).
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            entry[extension] = {"offset": self.archive.offset - padded, "size": len(data)}
        self.samples.append(entry)

    def close(self) -> int:
        self.archive.close()
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.partial, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        self.archive.close()
        self.partial.unlink(missing_ok=True)


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _sampled_chunks(
    source, *, fps, size, start, end, decode_backend, decode_timeout, max_frames
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The clip's frames at `fps` in chunks of `_CHUNK_FRAMES`. Chunk k starts k * _CHUNK_FRAMES / fps seconds
    into the clip, so its samples fall on the same time grid as a single pass would (memory stays bounded)."""
    from videofirst.modeling.video_processing_videofirst import read_video_frames

    done = 0
    while max_frames is None or done < max_frames:
        count = _CHUNK_FRAMES if max_frames is None else min(_CHUNK_FRAMES, max_frames - done)
        chunk_start = (start or 0.0) + done / fps
        if end is not None and chunk_start >= end:
            return
        try:
            frames, times = read_video_frames(
                source, fps=fps, num_frames=count, sampling="window", start=chunk_start, end=end, size=size,
                max_frames=None, backend=decode_backend, timeout=decode_timeout,
            )  # fmt: skip
        except ValueError as err:
            if done and "at or after the end" in str(err):
                return  # the previous chunk ended exactly at the end of the video
            raise
        yield frames, times
        done += len(frames)
        if len(frames) < count:
            return


def _check_frame_limit(source, fps, start, end, limit, decode_backend, decode_timeout) -> None:
    """Refuse a clip with more than `limit` samples at `fps`: one probe for sample number `limit` (counted from
    0), which exists exactly when there are more, costs one frame instead of the whole clip."""
    from videofirst.modeling.video_processing_videofirst import VideoDecodingError, read_video_frames

    probe = (start or 0.0) + limit / fps
    if end is not None and probe >= end:
        return
    try:
        read_video_frames(
            source, fps=fps, num_frames=1, sampling="window", start=probe, end=end, size=16, max_frames=None,
            backend=decode_backend, timeout=decode_timeout,
        )  # fmt: skip
    except ValueError as err:
        if "at or after the end" in str(err):
            return
        raise
    name = source if isinstance(source, str) else f"<{len(source)} bytes>"
    raise VideoDecodingError(
        name,
        f"the clip would hold more than {limit} frames at {fps:g} FPS (its timestamps run past {probe:g} s: a very "
        "long video or a timestamp gap); raise the bound (--max-clip-frames) or keep the first frames (--max-frames)",
    )


def transcode_video(
    source: str | bytes,
    *,
    fps: float = 1.0,
    size: int = 224,
    keyframe_interval: float = 2.0,
    crf: int = 23,
    preset: str = "fast",
    tune: str | None = "fastdecode",
    start: float | None = None,
    end: float | None = None,
    decode_backend: str = "pyav",
    decode_timeout: float | None = 300.0,
    max_frames: int | None = None,
    frame_limit: int | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Samples a video (or its clip ``[start, end)``) at `fps` with the rules of `read_video_frames`, shrinks it
    to shortest edge `size`, and encodes it as H.264 mp4 (yuv420p, no B-frames, a keyframe every
    `keyframe_interval` seconds; x264's ``tune=fastdecode`` by default: no CABAC nor deblocking, which about
    halves decoding time for some 10% more bytes at the same quality).

    `max_frames` keeps the first frames of a longer clip; `frame_limit` refuses (before decoding it) a clip that
    would hold more frames than that, e.g. a few frames with a huge timestamp gap.

    Returns the mp4 bytes and facts about the result (frames, frame size, and the source times of its first
    and last frame). Raises `VideoDecodingError` for a bad input.
    """
    import av

    if frame_limit is not None and (max_frames is None or max_frames > frame_limit):
        _check_frame_limit(source, fps, start, end, frame_limit, decode_backend, decode_timeout)

    rate = Fraction(fps).limit_denominator(1000)
    gop = max(1, round(keyframe_interval * fps))
    chunks = _sampled_chunks(
        source, fps=fps, size=size, start=start, end=end, decode_backend=decode_backend,
        decode_timeout=decode_timeout, max_frames=max_frames,
    )  # fmt: skip
    frames, times = next(chunks)  # a bad input fails here, before any output exists
    height, width = _even(frames.shape[1]), _even(frames.shape[2])  # yuv420p needs even sides
    facts = {"frames": 0, "fps": float(fps), "height": height, "width": width, "source_first_time": float(times[0])}
    buffer = io.BytesIO()
    # Byte-reproducible output: no muxer or encoder version tags, no creation time, one encoder thread, and the
    # RGB -> YUV conversion on one thread (PyAV's implicit one uses threaded swscale, whose bytes vary from call
    # to call). The pool parallelises over files.
    with av.open(buffer, mode="w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.gop_size = gop
        codec = stream.codec_context
        codec.thread_count = 1
        codec.max_b_frames = 0  # x264 has no "bframes" option under that name: set the generic one
        codec.flags |= av.codec.context.Flags.bitexact
        stream.options = {"crf": str(crf), "preset": preset, "keyint_min": str(gop), **({"tune": tune} if tune else {})}
        while frames is not None:
            for array in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[:height, :width]), format="rgb24")
                frame = frame.reformat(format="yuv420p", threads=1)
                frame.pts, frame.time_base = facts["frames"], 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
                facts["frames"] += 1
            facts["source_last_time"] = float(times[-1])
            frames, times = next(chunks, (None, None))
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue(), facts


def encode_image(source: str | bytes, size: int = 224, quality: int = 90) -> tuple[bytes, dict[str, Any]]:
    """Re-encodes an image as RGB JPEG with its shortest edge shrunk to `size` (never enlarged)."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        image = opened.convert("RGB")
    short = min(image.size)
    if short > size:
        scale = size / short
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), {"width": image.width, "height": image.height}


# ----------------------------------------------------------------------------------------------------------------
# Preparing a collection
# ----------------------------------------------------------------------------------------------------------------


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
                decode_backend=options.get("decode_backend", "pyav"),
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
    from videofirst.data import load_manifest  # here: videofirst.data imports this module

    settings = settings or PrepareSettings()
    if settings.samples_per_shard < 1 or settings.fps <= 0 or settings.size < 2 or settings.keyframe_interval <= 0:
        raise ValueError(f"invalid settings {settings}")
    if decode_backend == "auto":
        decode_backend = "pyav" if _has_av() else "decord"
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


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> the three names (zero padding kept), as WebDataset writes shard lists."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    low, high = match.group(1), match.group(2)
    width = len(low) if low.startswith("0") else 0
    names = []
    for number in range(int(low), int(high) + 1):
        names.extend(expand_braces(pattern[: match.start()] + str(number).zfill(width) + pattern[match.end() :]))
    return names
