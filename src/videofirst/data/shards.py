"""WebDataset-style tar shards: reading and writing them.

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

Writing: `TarShardWriter` and `transcode_video` / `encode_image`, used by `videofirst.data.preparation`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from videofirst.modeling.video_processing_videofirst import VideoDecodingError, read_video_frames

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
