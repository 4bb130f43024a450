"""Video decoding and the VideoFirst video processor.

This module turns video files (paths, raw bytes, binary file objects) or already-decoded frames into the
`pixel_values_videos` / `video_frame_mask` tensors that the VideoFirst model consumes.

Sampling rules (`read_video_frames`, `sample_frame_indices`)
------------------------------------------------------------
Times are seconds from the first frame. A clip is the half-open window ``[start, end)``; ``start`` defaults
to 0 and ``end`` to the video's duration (end of its last frame). Negative times, ``start`` at or past the
end of the video, ``end`` more than one frame past the end, or ``end <= start`` raise `VideoDecodingError`.

* Time -> frame: a time ``t`` selects the frame *on screen* at ``t``, the last frame whose presentation time
  is ``<= t`` (0.1 ms tolerance). For a constant-frame-rate file that is ``floor(t * video_fps)``, e.g.
  ``t = 1.0`` in a 29.97 fps file is frame 29. Variable-frame-rate files use the real presentation
  timestamps.
* The names mean what they mean in transformers (`resolve_sampling`): ``num_frames`` alone is
  ``sampling="uniform"``, ``fps`` alone is ``sampling="fps"``, both together need ``sampling="window"`` (anything
  else is a ValueError), neither takes every frame of the clip.
* ``"uniform"``: the ``count`` frames inside the clip are split into ``num_frames`` contiguous segments with
  boundaries ``b_k = first + floor(k * count / num_frames)``; the middle frame ``(b_k + b_{k+1} - 1) // 2`` of
  each segment is taken (a random frame of each segment with ``offset="random"``). A clip with no more than
  ``num_frames`` frames returns all its frames. Indices are strictly increasing.
* ``"fps"``: sample times ``start + offset + k / fps`` for ``k = 0, 1, ...`` while the time is ``< end``, over the
  whole clip (``max_frames`` bounds the count). ``offset`` is 0 by default, a number of seconds in
  ``[0, end - start)``, or ``"random"`` (uniform in ``[0, min(1 / fps, end - start))``, drawn from ``seed``).
  When ``fps`` exceeds the video's frame rate a frame can be selected more than once.
* ``"window"`` (the paper's training policy, "the first N seconds at 1 FPS"): the ``"fps"`` samples, at most the
  first ``num_frames`` of them; with ``offset="random"`` or a random ``start`` it gives random training windows.
  A video shorter than ``num_frames / fps`` seconds yields fewer frames (the batch padding below fills up).

Padding rules (`pad_video_batch`, used by `VideoFirstVideoProcessor`)
--------------------------------------------------------------------
Each video's real frames are first edge-padded (its last frame repeated) up to a multiple of
``tubelet_frames`` (the model's tubelet time size, default 2); these repeated frames count as *real*
(mask 1). The batch is then zero-padded to its longest video, and those frames get mask 0 in
``video_frame_mask`` (shape ``(B, T)``, int64). A video therefore has identical real frames whether it is
processed alone or in a batch. The mask is returned even when every video has the same length (all ones).

One frame index, two decoders
-----------------------------
When PyAV is installed, every video is indexed once by `_index_with_pyav`: the presentation timestamp of every
frame from one demux pass (no pixels decoded), or, where packets carry none, from one decoding pass; the frame
size comes from the decoder, not the container header. Both backends decode exactly the frames of that index that
the request selects. PyAV seeks to the keyframe before a needed frame in MP4/MOV, Matroska/WebM and FLV and reads
every other container in order, converting only the sampled frames to RGB (dense sampling costs about one
sequential decode of the span). decord seeks in those containers and reads AVI in order; it is handed to PyAV,
with a logged reason, where it is known or found wrong: containers it is not verified on (MPEG-PS, where it
returns every frame 12 frames late, MPEG-TS, raw streams, Ogg, ...), a container header whose frame size differs
from the stream's, output widths it cannot copy (16, 24, 48, 72), a frame count or timestamps that disagree with
the index, or frames of an unexpected size. Without PyAV, decord's own timestamps are the index (MPEG-TS is then
refused). Timestamps that are missing or not increasing fall back to a constant rate with a warning, never
silently. Both backends show frames as a player does: a display rotation (the MP4 track matrix) is applied, and
``size`` applies to the displayed frame.

Decoding and safety
-------------------
Before a decoder sees a file, cheap checks run without decoding: it must exist, be a regular non-empty file,
start with a known video container signature (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg, ASF, ...), and
for MP4/MOV, Matroska/WebM and AVI the container header is read to catch truncated files, files without a video
track, zero-frame tracks and absurd frame sizes (``max_pixels_per_frame``). The decoder's frame size is checked
again before any frame is decoded (a header can lie: decompression bombs), and every decoded frame before it is
converted. ``max_frames`` bounds the number of frames one video may return, and ``max_video_bytes`` the memory
its frames take at the output size (a shortest-edge resize enlarges thin videos: 16x8192 becomes 224x114688), so
extreme aspect ratios are refused before anything is allocated. Decoded arrays given to the processor are
checked too (no empty frames, booleans, integers outside 0-255, NaN/Inf, or floats already in [0, 1] when they
would be rescaled). Garbage files fail fast, but decord can hang on a few *valid-looking* files (upstream issues
dmlc/decord#269, #373, #375); decoding therefore runs in a worker thread with a timeout (``decode_timeout``,
default 300 s) after which `VideoDecodingError` is raised. A stuck native decoder cannot be killed from Python:
its thread is abandoned and keeps running in the background.

Fast mode
---------
``keyframe_snap`` (seconds, default None) is an opt-in fast mode: each sampled frame moves to the nearest
keyframe (as listed by the container's index) at most that far away, ties to the earlier one (`snap_to_keyframes`;
``math.inf`` snaps every sample). A keyframe decodes on its own, so a fully snapped clip decodes one frame per
keyframe instead of nearly every frame; the price is timing error (up to half the keyframe interval) and repeated
frames when keyframes are further apart than the sampling period. The returned timestamps are the real times of
the frames returned, so the error is visible.
"""

import io
import math
import os
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

logger = logging.get_logger(__name__)

__all__ = [
    "DECODE_BACKENDS",
    "DEFAULT_DECODE_TIMEOUT",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_PIXELS_PER_FRAME",
    "DEFAULT_MAX_VIDEO_BYTES",
    "VideoDecodingError",
    "VideoFirstVideoProcessor",
    "pad_video_batch",
    "read_video_frames",
    "resolve_sampling",
    "sample_frame_indices",
    "snap_to_keyframes",
]

DEFAULT_MAX_PIXELS_PER_FRAME = 7680 * 4320  # 8K UHD; larger frames are refused as decompression bombs
DEFAULT_MAX_FRAMES = 4096  # most frames a single video may return
DEFAULT_DECODE_TIMEOUT = 300.0  # seconds per video
SAMPLING_MODES = ("uniform", "fps", "window")
DECODE_BACKENDS = ("auto", "decord", "pyav")  # "auto": PyAV when installed, else decord

DEFAULT_MAX_VIDEO_BYTES = 4 * 2**30  # most memory one video's frames may take at the processor's output size

# Both backends seek in these containers; in the others frames are decoded in order up to the last needed one,
# because decord's seeking returns wrong frames there (e.g. AVI with B-frames).
_RANDOM_ACCESS_CONTAINERS = ("mp4", "matroska", "flv")
# decord is verified exact (frames and times compared with PyAV's) only in these containers; it returns MPEG-PS
# frames 12 late and MPEG-TS frames misplaced, so other containers go to PyAV.
_DECORD_CONTAINERS = ("mp4", "matroska", "flv", "avi")
# decord fails to copy frames of these widths out ("DECORDArrayCopyFromTo: The size must exactly match").
_DECORD_BAD_WIDTHS = frozenset({16, 24, 48, 72})

_TIME_TOLERANCE = 1e-4  # seconds: a sample time this close before a frame's start selects that frame
_MIN_VIDEO_BYTES = 64
_HEAD_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024 * 1024  # largest MP4 'moov' / Matroska header we parse ourselves


class VideoDecodingError(ValueError):
    """A video could not be read: bad file, unsupported content, or invalid sampling request.

    `source` names the input (a path, ``<N bytes>`` or a file object's name) and `reason` says what is
    wrong.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot decode video {source!r}: {reason}")


# ------------------------------------------------------------------------------------------------------------
# Sources and cheap container checks
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    name: str
    size: int
    path: str | None = None
    data: bytes | None = None
    handle: Any = None  # an open binary file while the container is inspected

    def read_at(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        if self.handle is None:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        self.handle.seek(offset)
        return self.handle.read(length)

    def decord_uri(self):
        # decord consumes file objects, so every open gets a fresh BytesIO.
        return self.path if self.path is not None else io.BytesIO(self.data)


def _is_source(value) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)) or (
        hasattr(value, "read") and not isinstance(value, (np.ndarray, torch.Tensor))
    )


def _load_source(source) -> _Source:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if "://" in path:
                raise VideoDecodingError(path, "URLs are not fetched; download the file first") from None
            raise VideoDecodingError(path, "file not found") from None
        except OSError as err:
            raise VideoDecodingError(path, f"cannot access file ({err.strerror or err})") from None
        if stat.S_ISDIR(info.st_mode):
            raise VideoDecodingError(path, "is a directory, not a video file")
        if not stat.S_ISREG(info.st_mode):
            # FIFOs, devices and sockets could block forever or never end.
            raise VideoDecodingError(path, "not a regular file")
        if not os.access(path, os.R_OK):
            raise VideoDecodingError(path, "file is not readable (permission denied)")
        return _Source(name=path, size=info.st_size, path=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _Source(name=f"<{len(data)} bytes>", size=len(data), data=data)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else "<file object>"
        try:
            data = source.read()
        except UnicodeDecodeError:
            raise VideoDecodingError(name, "file object is in text mode; open it in binary mode ('rb')") from None
        if isinstance(data, str):
            raise VideoDecodingError(name, "file object is in text mode; open it in binary mode ('rb')")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise VideoDecodingError(name, f"file object returned {type(data).__name__}, expected bytes")
        data = bytes(data)
        return _Source(name=name, size=len(data), data=data)
    raise TypeError(
        f"Unsupported video source of type {type(source).__name__}: expected a path, bytes, a binary file "
        "object, or decoded frames"
    )


_NON_VIDEO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image (animated GIFs are not supported; convert to MP4)"),
    (b"GIF89a", "a GIF image (animated GIFs are not supported; convert to MP4)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"\x7fELF", "an executable"),
)
_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp")


def _looks_like_mpeg_ts(head: bytes) -> bool:
    for packet, sync in ((188, 0), (192, 4)):
        positions = [sync + k * packet for k in range(3)]
        if len(head) > positions[-1] and all(head[p] == 0x47 for p in positions):
            return True
    return False


def _sniff_container(head: bytes) -> str | None:
    """Names the container from its first bytes, or None when no known video signature matches."""
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    simple = (
        (b"FLV\x01", "flv"),
        (b"OggS", "ogg"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),
        (b"\x00\x00\x01\xba", "mpeg-ps"),
        (b"\x00\x00\x01\xb3", "mpeg-video"),
        (b"DKIF", "ivf"),
        (b"YUV4MPEG2", "y4m"),
        (b"\x06\x0e\x2b\x34", "mxf"),
        (b".RMF", "realmedia"),
    )
    for magic, name in simple:
        if head.startswith(magic):
            return name
    if _looks_like_mpeg_ts(head):
        return "mpeg-ts"
    return None


def _describe_non_video(head: bytes) -> str:
    for magic, what in _NON_VIDEO_SIGNATURES:
        if head.startswith(magic):
            return f"not a video file: it looks like {what}"
    if head.startswith(b"RIFF"):
        return f"not a video file: RIFF container of type {head[8:12]!r} (not AVI)"
    if b"\x00" not in head[:4096]:
        try:
            head[:4096].decode("utf-8")
            return "not a video file: it looks like a text file"
        except UnicodeDecodeError:
            pass
    return f"not a video file: unrecognised container signature (first bytes {head[:12].hex(' ')})"


@dataclass
class _ContainerInfo:
    container: str
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    num_frames: int | None = None
    rotation: int = 0  # display rotation, degrees counter-clockwise (MP4/MOV track matrix)


def _iter_mp4_boxes(buffer: bytes, begin: int, end: int):
    pos = begin
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buffer, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", buffer, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _mp4_child(buffer: bytes, begin: int, end: int, kind: bytes):
    for child, child_begin, child_end in _iter_mp4_boxes(buffer, begin, end):
        if child == kind:
            return child_begin, child_end
    return None


def _parse_mp4_track(moov: bytes, begin: int, end: int) -> dict | None:
    mdia = _mp4_child(moov, begin, end, b"mdia")
    if mdia is None:
        return None
    hdlr = _mp4_child(moov, *mdia, b"hdlr")
    handler = moov[hdlr[0] + 8 : hdlr[0] + 12] if hdlr and hdlr[1] - hdlr[0] >= 12 else b""
    track = {"handler": handler, "codec": None, "width": None, "height": None, "num_frames": None, "rotation": 0}
    tkhd = _mp4_child(moov, begin, end, b"tkhd")
    if tkhd is not None:
        matrix_at = tkhd[0] + (52 if moov[tkhd[0]] == 1 else 40)
        if matrix_at + 36 <= tkhd[1]:
            track["rotation"] = _matrix_rotation(struct.unpack_from(">9i", moov, matrix_at))
    minf = _mp4_child(moov, *mdia, b"minf")
    stbl = _mp4_child(moov, *minf, b"stbl") if minf else None
    if stbl is None:
        return track
    stsd = _mp4_child(moov, *stbl, b"stsd")
    if stsd is not None and stsd[1] - stsd[0] >= 16:
        entry = stsd[0] + 8
        track["codec"] = moov[entry + 4 : entry + 8].decode("latin-1")
        if handler == b"vide" and entry + 36 <= stsd[1]:
            track["width"], track["height"] = struct.unpack_from(">HH", moov, entry + 32)
    for kind in (b"stsz", b"stz2"):
        sizes = _mp4_child(moov, *stbl, kind)
        if sizes is not None and sizes[1] - sizes[0] >= 12:
            track["num_frames"] = struct.unpack_from(">I", moov, sizes[0] + 8)[0]
            break
    return track


def _matrix_rotation(matrix: tuple[int, ...]) -> int:
    """Display rotation (degrees counter-clockwise, a multiple of 90) of an MP4 track matrix, as FFmpeg reads it."""
    a, b, c, d = (value / 65536 for value in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0
    angle = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    return int(round(angle / 90)) * 90 % 360


def _inspect_mp4(source: _Source) -> _ContainerInfo:
    pos, moov, moov_seen, fragmented, boxes = 0, None, False, False, 0
    while pos + 8 <= source.size and boxes < 100_000:
        boxes += 1
        header = source.read_at(pos, 16)
        if len(header) < 8:
            break
        size, kind = struct.unpack_from(">I4s", header, 0)
        header_size = 8
        if size == 1 and len(header) >= 16:
            size, header_size = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = source.size - pos
        if size < header_size:
            if not moov_seen:
                raise VideoDecodingError(source.name, f"corrupt MP4: box at byte {pos} has invalid size {size}")
            break
        if pos + size > source.size:
            if not moov_seen or kind in (b"moov", b"mdat"):
                raise VideoDecodingError(
                    source.name,
                    f"truncated file: MP4 box {kind.decode('latin-1')!r} at byte {pos} needs {size} bytes "
                    f"but only {source.size - pos} remain (incomplete download?)",
                )
            break
        if kind == b"moov" and not moov_seen:
            moov_seen = True
            if size <= _MAX_HEADER_BYTES:
                moov = source.read_at(pos + header_size, size - header_size)
        elif kind == b"moof":
            fragmented = True
        pos += size
    if not moov_seen:
        raise VideoDecodingError(
            source.name, "MP4 has no 'moov' header box (truncated or incomplete file, or not a playable MP4)"
        )
    if moov is None:  # an unusually large header: leave it to the decoder
        return _ContainerInfo(container="mp4")
    if _mp4_child(moov, 0, len(moov), b"mvex") is not None:
        fragmented = True
    tracks = [
        _parse_mp4_track(moov, begin, end)
        for kind, begin, end in _iter_mp4_boxes(moov, 0, len(moov))
        if kind == b"trak"
    ]
    video = [track for track in tracks if track is not None and track["handler"] == b"vide"]
    if not video:
        raise VideoDecodingError(source.name, "the file contains no video stream (audio-only or empty MP4)")
    track = video[0]
    if track["num_frames"] == 0 and not fragmented:
        raise VideoDecodingError(source.name, "the video stream has zero frames")
    return _ContainerInfo(
        container="mp4",
        width=track["width"] or None,
        height=track["height"] or None,
        codec=track["codec"],
        num_frames=None if fragmented else track["num_frames"],
        rotation=track["rotation"],
    )


def _read_ebml_vint(buffer: bytes, pos: int, keep_marker: bool):
    """Returns (value, length); value None means 'unknown size'."""
    if pos >= len(buffer):
        raise IndexError
    first = buffer[pos]
    if first == 0:
        raise ValueError("invalid EBML variable-length integer")
    length = 9 - first.bit_length()
    if pos + length > len(buffer):
        raise IndexError
    raw = int.from_bytes(buffer[pos : pos + length], "big")
    if keep_marker:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _iter_ebml(buffer: bytes, begin: int, end: int):
    pos = begin
    while pos < end:
        try:
            element_id, id_length = _read_ebml_vint(buffer, pos, keep_marker=True)
            size, size_length = _read_ebml_vint(buffer, pos + id_length, keep_marker=False)
        except (IndexError, ValueError):
            return
        data = pos + id_length + size_length
        yield element_id, data, size
        if size is None:
            return
        pos = data + size


def _inspect_matroska(source: _Source) -> _ContainerInfo:
    info = _ContainerInfo(container="matroska")
    head = source.read_at(0, min(source.size, 4 * 1024 * 1024))
    segment = None
    for element_id, data, size in _iter_ebml(head, 0, len(head)):
        if element_id == 0x18538067:
            if size is not None and data + size > source.size:
                raise VideoDecodingError(
                    source.name,
                    f"truncated file: Matroska segment needs {data + size} bytes but the file has {source.size}",
                )
            segment = (data, len(head) if size is None else min(len(head), data + size))
            break
    if segment is None:
        raise VideoDecodingError(source.name, "Matroska/WebM file has no segment (truncated or corrupt)")
    # `scanned` reaches the segment's end only if every top-level element of a fully buffered file was parsed.
    has_video, saw_cluster, scanned = False, False, segment[0]
    for element_id, data, size in _iter_ebml(head, *segment):
        if element_id in (0x1F43B675, 0x1F43B676):  # Cluster, or a (deprecated) slice: frames exist
            saw_cluster = True
            break
        if size is None:  # unknown-size element: stop scanning
            break
        scanned = data + size
        if element_id != 0x1654AE6B:  # Tracks
            continue
        found_video = False
        for entry_id, entry_data, entry_size in _iter_ebml(head, data, min(len(head), data + size)):
            if entry_id != 0xAE or entry_size is None:  # TrackEntry
                continue
            fields = {}
            for field_id, field_data, field_size in _iter_ebml(head, entry_data, entry_data + entry_size):
                if field_size is not None:
                    fields[field_id] = (field_data, field_size)
            track_type = fields.get(0x83)
            if track_type is None or int.from_bytes(head[track_type[0] : sum(track_type)], "big") != 1:
                continue
            found_video = True
            codec = fields.get(0x86)
            info.codec = head[codec[0] : sum(codec)].decode("latin-1").rstrip("\x00") if codec else None
            video = fields.get(0xE0)
            if video is not None:
                for video_id, video_data, video_size in _iter_ebml(head, video[0], sum(video)):
                    value = int.from_bytes(head[video_data : video_data + (video_size or 0)], "big")
                    if video_id == 0xB0:
                        info.width = value or None
                    elif video_id == 0xBA:
                        info.height = value or None
            break
        if not found_video:
            raise VideoDecodingError(source.name, "the file contains no video stream (Matroska/WebM without video)")
        has_video = True
    if has_video and not saw_cluster and len(head) >= source.size and scanned == segment[1]:
        raise VideoDecodingError(source.name, "the video stream has zero frames (the file holds no clusters)")
    return info


def _inspect_avi(source: _Source) -> _ContainerInfo:
    head = source.read_at(0, 96)
    info = _ContainerInfo(container="avi")
    riff_size = struct.unpack_from("<I", head, 4)[0]
    if riff_size + 8 > source.size and head[8:12] == b"AVI ":
        raise VideoDecodingError(
            source.name, f"truncated file: AVI declares {riff_size + 8} bytes but the file has {source.size}"
        )
    if len(head) >= 72 and head[12:16] == b"LIST" and head[20:28] == b"hdrlavih":
        (total_frames,) = struct.unpack_from("<I", head, 48)
        info.width, info.height = (value or None for value in struct.unpack_from("<II", head, 64))
        info.num_frames = total_frames or None
    return info


def _inspect_container(source: _Source) -> _ContainerInfo:
    """Cheap, decode-free checks on a file's bytes. Raises VideoDecodingError for definite problems."""
    if source.path is None:
        return _inspect_bytes(source)
    try:
        with open(source.path, "rb") as handle:
            source.handle = handle
            return _inspect_bytes(source)
    except OSError as err:
        raise VideoDecodingError(source.name, f"cannot read file ({err.strerror or err})") from None
    finally:
        source.handle = None


def _inspect_bytes(source: _Source) -> _ContainerInfo:
    if source.size == 0:
        raise VideoDecodingError(source.name, "empty file (0 bytes)")
    if source.size < _MIN_VIDEO_BYTES:
        raise VideoDecodingError(source.name, f"file too small to be a video ({source.size} bytes; truncated?)")
    head = source.read_at(0, _HEAD_BYTES)
    container = _sniff_container(head)
    if container is None:
        raise VideoDecodingError(source.name, _describe_non_video(head))
    if container == "mp4":
        return _inspect_mp4(source)
    if container == "matroska":
        return _inspect_matroska(source)
    if container == "avi":
        return _inspect_avi(source)
    return _ContainerInfo(container=container)


def _check_frame_size(name: str, width: int, height: int, max_pixels_per_frame: int | None, where: str):
    if width <= 0 or height <= 0:
        raise VideoDecodingError(name, f"invalid frame size {width}x{height} ({where})")
    if max_pixels_per_frame is not None and width * height > max_pixels_per_frame:
        raise VideoDecodingError(
            name,
            f"frame size {width}x{height} ({width * height} pixels, {where}) exceeds max_pixels_per_frame="
            f"{max_pixels_per_frame}; refusing to decode (possible decompression bomb)",
        )


# ------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------


def _as_time(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{name}={value:g} s is negative")
    return value


def resolve_sampling(fps: float | None, num_frames: int | None, sampling: str | None) -> str:
    """The sampling mode a request means (rules in this module's docstring); raises ValueError for ambiguous or
    incomplete ones. ``num_frames`` alone is uniform over the clip, ``fps`` alone is that rate, both together
    need the explicitly named ``sampling="window"``."""
    if sampling is None:
        if fps is not None and num_frames is not None:
            raise ValueError(
                f"fps={fps!r} and num_frames={num_frames!r} together are ambiguous: pass only num_frames (spread "
                "uniformly over the clip), only fps (every 1 / fps seconds), or sampling='window' (the first "
                "num_frames samples at fps from the clip start, the paper's training policy)"
            )
        return "uniform" if num_frames is not None else "fps"
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES} or None, got {sampling!r}")
    if sampling == "uniform" and (num_frames is None or fps is not None):
        raise ValueError(f"sampling='uniform' takes num_frames and no fps, got fps={fps!r}, num_frames={num_frames!r}")
    if sampling == "fps" and num_frames is not None:
        raise ValueError(
            f"sampling='fps' covers the whole clip and takes no num_frames (got {num_frames!r}); use "
            "sampling='window' for the first num_frames samples at fps"
        )
    if sampling == "window" and (fps is None or num_frames is None):
        raise ValueError(f"sampling='window' needs fps and num_frames, got fps={fps!r}, num_frames={num_frames!r}")
    return sampling


def sample_frame_indices(
    frame_times: Sequence[float] | np.ndarray,
    duration: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    sampling: str | None = None,
    start: float | None = None,
    end: float | None = None,
    offset: float | str | None = None,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Chooses which frames of a video to decode (the rules are in this module's docstring).

    Args:
        frame_times: presentation time in seconds of every frame, non-decreasing
            (``arange(n) / video_fps`` for a constant-frame-rate video).
        duration: the video's duration in seconds (end of its last frame).
        fps: sampling rate (``"fps"`` and ``"window"``); None with no `num_frames` takes every frame of the clip.
        num_frames: how many frames (``"uniform"``) or the most frames (``"window"``).
        sampling: None (``"uniform"`` when only `num_frames` is given, else ``"fps"``), ``"uniform"``, ``"fps"``
            or ``"window"``; see `resolve_sampling`.
        start, end: clip bounds in seconds (``[start, end)``), None for the video's start / end.
        offset: ``"fps"`` / ``"window"``: seconds after ``start`` of the first sample, or ``"random"``.
            ``"uniform"``: None (segment middles) or ``"random"`` (a random frame per segment).
        seed: seed or generator for ``offset="random"``.

    Returns:
        int64 array of frame indices, in playback order.

    Raises:
        ValueError: invalid arguments or clip bounds outside the video.
    """
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    count = times.shape[0]
    if count == 0:
        raise ValueError("the video has zero frames")
    duration = float(duration)
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"invalid video duration {duration}")
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    if fps is not None and (isinstance(fps, bool) or not (math.isfinite(fps) and fps > 0)):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    mode = resolve_sampling(fps, num_frames, sampling)

    clip_start = _as_time(start, "start") or 0.0
    clip_end = _as_time(end, "end")
    frame_length = duration / count
    if clip_start >= duration:
        raise ValueError(f"start={clip_start:g} s is at or after the end of the video (duration {duration:g} s)")
    if clip_end is not None:
        if clip_end > duration + frame_length + 1e-6:
            raise ValueError(f"end={clip_end:g} s is beyond the end of the video (duration {duration:g} s)")
        if clip_end <= clip_start:
            raise ValueError(f"end={clip_end:g} s must be greater than start={clip_start:g} s")
    clip_end = duration if clip_end is None else min(clip_end, duration)
    rng = seed if isinstance(seed, np.random.Generator) else None

    def generator():
        return rng if rng is not None else np.random.default_rng(seed)

    def frame_at(t):
        index = np.searchsorted(times, np.asarray(t, dtype=np.float64) + _TIME_TOLERANCE, side="right") - 1
        return np.clip(index, 0, count - 1)

    first = int(frame_at(clip_start))
    last = max(first, int(np.searchsorted(times, clip_end - _TIME_TOLERANCE, side="left")) - 1)
    span = clip_end - clip_start

    if mode == "fps" and fps is None:
        if offset is not None:
            raise ValueError("offset needs fps (there is no sampling period when fps=None)")
        return np.arange(first, last + 1, dtype=np.int64)

    if mode in ("fps", "window"):
        period = 1.0 / fps
        if offset is None:
            shift = 0.0
        elif isinstance(offset, str):
            if offset != "random":
                raise ValueError(f"offset must be a number of seconds, 'random' or None, got {offset!r}")
            shift = float(generator().uniform(0.0, min(period, span)))
        else:
            shift = _as_time(offset, "offset")
            if shift >= span:
                raise ValueError(f"offset={shift:g} s is not inside the clip (length {span:g} s)")
        n = int(math.floor((span - shift) / period - 1e-9)) + 1
        if mode == "window":
            n = min(n, int(num_frames))
        sample_times = clip_start + shift + np.arange(n) * period
        return np.clip(frame_at(sample_times), first, last).astype(np.int64)

    # uniform
    if offset is not None and offset != "random":
        raise ValueError(f"sampling='uniform' takes offset=None or 'random', got {offset!r}")
    available = last - first + 1
    n = int(num_frames)
    if available <= n:
        return np.arange(first, last + 1, dtype=np.int64)
    bounds = first + (np.arange(n + 1) * available) // n
    if offset == "random":
        return (bounds[:-1] + generator().integers(0, bounds[1:] - bounds[:-1])).astype(np.int64)
    return ((bounds[:-1] + bounds[1:] - 1) // 2).astype(np.int64)


def _clip_frame_range(times: np.ndarray, duration: float, start: float | None, end: float | None) -> tuple[int, int]:
    """First and last frame index inside the clip ``[start, end)`` (bounds already validated)."""
    count = len(times)
    clip_start = float(start or 0.0)
    clip_end = duration if end is None else min(float(end), duration)
    first = int(np.clip(np.searchsorted(times, clip_start + _TIME_TOLERANCE, side="right") - 1, 0, count - 1))
    last = max(first, int(np.searchsorted(times, clip_end - _TIME_TOLERANCE, side="left")) - 1)
    return first, min(last, count - 1)


def snap_to_keyframes(
    indices: np.ndarray,
    frame_times: np.ndarray,
    keyframes: Sequence[int] | np.ndarray,
    tolerance: float,
    frame_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """The fast mode: moves each sampled frame to the nearest keyframe when one is at most `tolerance` seconds
    away (ties go to the earlier keyframe), keeping the others.

    A keyframe decodes on its own, whereas an exact frame needs every frame from the keyframe before it; with
    keyframes a few seconds apart, exact 1 FPS sampling decodes nearly every frame. Snapped indices stay in
    playback order (several samples may land on the same keyframe). `frame_range` ``(first, last)`` limits the
    keyframes to the clip.
    """
    indices = np.asarray(indices, dtype=np.int64)
    keys = np.unique(np.asarray(keyframes, dtype=np.int64))
    keys = keys[(keys >= 0) & (keys < len(frame_times))]
    if frame_range is not None:
        keys = keys[(keys >= frame_range[0]) & (keys <= frame_range[1])]
    if len(indices) == 0 or len(keys) == 0:
        return indices
    key_times = frame_times[keys]
    sample_times = frame_times[indices]
    after = np.clip(np.searchsorted(key_times, sample_times, side="left"), 0, len(keys) - 1)
    before = np.clip(after - 1, 0, len(keys) - 1)
    use_before = np.abs(sample_times - key_times[before]) <= np.abs(key_times[after] - sample_times)
    nearest = np.where(use_before, keys[before], keys[after])
    close = np.abs(frame_times[nearest] - sample_times) <= tolerance + 1e-9
    return np.where(close, nearest, indices).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# Decoding: what both backends share
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8, as displayed (rotation applied)
    timestamps: np.ndarray  # (T,) float64 seconds
    indices: np.ndarray  # (T,) int64
    video_fps: float
    total_frames: int
    duration: float
    width: int  # displayed frame size (native resolution, rotation applied)
    height: int
    backend: str = "decord"


def _decode_size(width: int, height: int, size) -> tuple[int, int] | None:
    """Decode-time (width, height) for `size`, or None to keep the native size. Only ever shrinks."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        target_height, target_width = (int(v) for v in size)
        if target_height < height and target_width < width:
            return target_width, target_height
        return None
    shortest = int(size)
    short, long = min(width, height), max(width, height)
    if short <= shortest:
        return None
    new_long = int(shortest * long / short)  # same rounding as transformers' shortest-edge resize
    return (shortest, new_long) if width <= height else (new_long, shortest)


def _output_size(width: int, height: int, size) -> tuple[int, int]:
    """(width, height) of a `width` x `height` frame after the processor's resize to `size` (an int shortest
    edge or a ``(height, width)`` pair), which may enlarge it."""
    if isinstance(size, (tuple, list)):
        return int(size[1]), int(size[0])
    short, long = min(width, height), max(width, height)
    new_long = int(int(size) * long / short)
    return (int(size), new_long) if width <= height else (new_long, int(size))


def _check_output_memory(name: str, count: int, width: int, height: int, request: "_SamplingRequest") -> None:
    """Refuses, before anything is allocated, a request whose frames would be too large once resized: thin or
    tiny videos are enlarged by a shortest-edge resize, so native pixel counts do not bound the output."""
    if request.output_size is not None:
        width, height = _output_size(width, height, request.output_size)
        bytes_per_value = 4  # the processor resizes and normalises in float32
    else:
        width, height = _decode_size(width, height, request.size) or (width, height)
        bytes_per_value = 1
    if request.max_pixels_per_frame is not None and width * height > request.max_pixels_per_frame:
        raise VideoDecodingError(
            name,
            f"frames would be resized to {width}x{height} ({width * height} pixels), more than max_pixels_per_frame="
            f"{request.max_pixels_per_frame} (extreme aspect ratio?); refusing before allocating",
        )
    needed = count * width * height * 3 * bytes_per_value
    if request.max_video_bytes is not None and needed > request.max_video_bytes:
        raise VideoDecodingError(
            name,
            f"{count} frames of {width}x{height} need {needed / 2**30:.2f} GiB, more than max_video_bytes="
            f"{request.max_video_bytes / 2**30:.2f} GiB (extreme aspect ratio or too many frames); refusing before "
            "allocating",
        )


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` turned by the container's display rotation (degrees counter-clockwise), as players
    show them."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=turns, axes=(1, 2))) if turns else frames


def _check_frames(name: str, frames: np.ndarray, count: int) -> np.ndarray:
    """What a backend returned, checked before anything uses it."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != count or frames.shape[-1] != 3:
        raise VideoDecodingError(
            name, f"decoder returned frames of unexpected shape {frames.shape} / dtype {frames.dtype}"
        )
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise VideoDecodingError(name, f"decoder returned empty {frames.shape[2]}x{frames.shape[1]} frames")
    return frames


@dataclass(frozen=True, eq=False)
class _FrameIndex:
    """Every frame of a video, in presentation order: the one truth about time that both backends decode from.

    Built once per video from the demuxer's packet timestamps (no pixels decoded) or, where the container has
    none, from one decoding pass; `_index_with_decord` is the fallback when PyAV is not installed.
    """

    times: np.ndarray  # (N,) presentation time in seconds, from the first frame, strictly increasing
    duration: float
    keyframes: np.ndarray  # presentation indices of the frames a decoder can start from
    stamps: np.ndarray | None  # presentation timestamps in stream time base, for seeking; None: read in order
    width: int  # coded frame size, from the decoder (not the container header)
    height: int
    rotation: int  # display rotation in degrees counter-clockwise (0, 90, 180, 270)
    video_fps: float  # the container's frame rate (NaN when unknown)
    origin: str  # where the times come from, for messages

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the frames as displayed."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


@dataclass(frozen=True, eq=False)
class _Selection:
    """The frames a request selects from one video."""

    index: _FrameIndex
    indices: np.ndarray  # (T,) int64 frame indices in playback order, possibly repeated
    unique: np.ndarray  # the distinct indices, sorted: the frames a backend decodes
    inverse: np.ndarray  # positions in `unique` of each entry of `indices`

    def result(self, name: str, frames: np.ndarray, backend: str) -> _DecodedVideo:
        """The decoded video from the frames at `unique` (uint8 ``(len(unique), H, W, 3)``, as displayed)."""
        frames = _check_frames(name, frames, len(self.unique))
        if len(self.unique) != len(self.indices):
            frames = frames[self.inverse]
        index = self.index
        total = len(index.times)
        video_fps = index.video_fps
        if not np.isfinite(video_fps) or video_fps <= 0:
            video_fps = float(total / index.duration)
        width, height = index.display_size
        return _DecodedVideo(
            frames=frames,
            timestamps=index.times[self.indices],
            indices=self.indices,
            video_fps=video_fps,
            total_frames=total,
            duration=float(index.duration),
            width=width,
            height=height,
            backend=backend,
        )


@dataclass(frozen=True)
class _SamplingRequest:
    """What to read from one video, as given to `read_video_frames`: the same for every backend."""

    fps: float | None = None
    num_frames: int | None = None
    sampling: str | None = None
    start: float | None = None
    end: float | None = None
    offset: float | str | None = None
    size: int | tuple[int, int] | None = None
    seed: int | np.random.Generator | None = None
    max_pixels_per_frame: int | None = DEFAULT_MAX_PIXELS_PER_FRAME
    max_frames: int | None = DEFAULT_MAX_FRAMES
    num_threads: int = 0
    keyframe_snap: float | None = None
    # The processor's resize target (int shortest edge or (height, width)); None: frames stay at `size`.
    output_size: int | tuple[int, int] | None = None
    max_video_bytes: int | None = DEFAULT_MAX_VIDEO_BYTES

    def sample(self, name: str, times: np.ndarray, duration: float) -> np.ndarray:
        """`sample_frame_indices` for a video named `name` whose frames start at `times`; invalid requests raise
        VideoDecodingError."""
        try:
            return sample_frame_indices(
                times,
                duration,
                fps=self.fps,
                num_frames=self.num_frames,
                sampling=self.sampling,
                start=self.start,
                end=self.end,
                offset=self.offset,
                seed=self.seed,
            )
        except ValueError as err:
            raise VideoDecodingError(name, str(err)) from None

    def select(self, name: str, index: _FrameIndex) -> _Selection:
        """The frames to decode: sampled, checked against `max_frames` and the memory bound, then snapped to
        keyframes in the fast mode."""
        indices = self.sample(name, index.times, index.duration)
        _check_max_frames(name, len(indices), self.max_frames)
        _check_output_memory(name, len(indices), *index.display_size, self)
        if self.keyframe_snap is not None:
            frame_range = _clip_frame_range(index.times, index.duration, self.start, self.end)
            indices = snap_to_keyframes(indices, index.times, index.keyframes, self.keyframe_snap, frame_range)
        unique, inverse = np.unique(indices, return_inverse=True)
        return _Selection(index=index, indices=indices, unique=unique, inverse=inverse.reshape(-1))


def _check_max_frames(name: str, count: int, max_frames: int | None) -> None:
    if max_frames is not None and count > max_frames:
        raise VideoDecodingError(
            name,
            f"the request selects {count} frames, more than max_frames={max_frames} "
            "(lower fps, set num_frames, or raise max_frames)",
        )


def _decoder_error(
    err: BaseException,
    source: _Source,
    container: _ContainerInfo,
    reason: Callable[[BaseException, _ContainerInfo], str],
    stage: str = "decoding",
) -> VideoDecodingError:
    """A backend library's exception as a VideoDecodingError: one already is kept, running out of memory names
    the `stage`, anything else is explained by the backend's `reason`."""
    if isinstance(err, VideoDecodingError):
        return err
    if isinstance(err, MemoryError):
        return VideoDecodingError(source.name, f"out of memory while {stage}")
    return VideoDecodingError(source.name, reason(err, container))


class _UseOtherBackend(Exception):
    """decord is known or found wrong for this file; the message says why, and PyAV decodes it instead."""


# ------------------------------------------------------------------------------------------------------------
# The frame index
# ------------------------------------------------------------------------------------------------------------


def _index_with_pyav(source: _Source, container: _ContainerInfo, request: _SamplingRequest) -> _FrameIndex:
    """The frame index from PyAV: packet timestamps from one demux pass (nothing decoded) where every packet has
    one, else the decoder's frame timestamps from one decoding pass (frames are not converted)."""
    av = _import_av()
    handle, stream = _open_pyav(av, source, container, request)
    with handle:
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width and height:
            # The decoder's size, not the container header's: a header can lie (decompression bombs).
            _check_frame_size(source.name, width, height, request.max_pixels_per_frame, "video stream")
        try:
            stamps, keyflags, durations = _pyav_packet_index(handle, stream)
        except Exception as err:
            raise _decoder_error(err, source, container, _pyav_failure_reason) from err
        rate = stream.average_rate or stream.guessed_rate
        time_base = float(stream.time_base) if stream.time_base else None
    total = len(keyflags)
    if total == 0:
        raise VideoDecodingError(source.name, "the video stream has zero frames")
    if not (width and height):
        raise VideoDecodingError(source.name, "the video stream declares no frame size (corrupt stream header)")
    video_fps = float(rate) if rate else float("nan")
    origin = "the demuxer's packet timestamps"
    order = np.argsort(stamps, kind="stable") if stamps is not None else None
    if stamps is None or time_base is None or (total > 1 and not (np.diff(stamps[order]) > 0).all()):
        # Some packets carry no timestamp or two share one: ask the decoder, which outputs frames in
        # presentation order with their timestamps.
        stamps, order, origin = _pyav_decoded_stamps(av, source, container, request, total), None, "decoded frames"
        total = len(stamps)
    ordered = stamps[order] if order is not None else stamps
    if time_base is not None and (total == 1 or (np.diff(ordered) > 0).all()):
        starts = (ordered - ordered[0]) * time_base
        last = int(durations[order[-1]]) if order is not None else 0
        mean_length = (starts[-1] / (total - 1)) if total > 1 else (1 / video_fps if video_fps > 0 else 0.0)
        duration = float(starts[-1] + (last * time_base if last > 0 else mean_length))
    elif video_fps > 0:
        logger.warning(
            "%s: the video's frame timestamps are missing or not increasing; assuming a constant rate of %g fps "
            "(sample times may be off)",
            source.name,
            video_fps,
        )
        starts, duration, ordered, origin = np.arange(total) / video_fps, total / video_fps, None, "a constant rate"
    else:
        raise VideoDecodingError(source.name, "the video has neither usable frame timestamps nor a frame rate")
    if duration <= 0:
        duration = float(starts[-1]) + 1.0  # a single frame of unknown length: show it for one second
    if order is not None:
        position_of = np.empty(total, dtype=np.int64)
        position_of[order] = np.arange(total)
        keyframes = np.sort(position_of[keyflags])
    else:
        keyframes = np.zeros(1, dtype=np.int64)  # read in order from the start
    # Random-access containers are indexed by presentation timestamp and seeked; the others (AVI, MPEG-PS, ...) are
    # read in order, the k-th decoded frame being the k-th of the index.
    seekable = order is not None and container.container in _RANDOM_ACCESS_CONTAINERS
    return _FrameIndex(
        times=np.asarray(starts, dtype=np.float64),
        duration=duration,
        keyframes=keyframes,
        stamps=ordered if seekable else None,
        width=width,
        height=height,
        rotation=container.rotation,
        video_fps=video_fps,
        origin=origin,
    )


def _open_pyav(av, source: _Source, container: _ContainerInfo, request: _SamplingRequest):
    try:
        handle = av.open(source.path if source.path is not None else io.BytesIO(source.data), mode="r")
    except Exception as err:
        raise _decoder_error(err, source, container, _pyav_failure_reason) from err
    if not handle.streams.video:
        handle.close()
        raise VideoDecodingError(source.name, "the file contains no video stream")
    stream = handle.streams.video[0]
    if stream.codec_context is None:
        handle.close()
        raise VideoDecodingError(source.name, _pyav_failure_reason(RuntimeError("decoder not found"), container))
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = int(request.num_threads or 0)
    return handle, stream


def _pyav_decoded_stamps(av, source, container, request, expected: int) -> np.ndarray:
    """Presentation timestamps of every decoded frame, in output order (the fallback index: one decoding pass)."""
    handle, stream = _open_pyav(av, source, container, request)
    stamps = []
    try:
        with handle:
            for frame in handle.decode(stream):
                stamps.append(frame.pts)
    except Exception as err:
        raise _decoder_error(err, source, container, _pyav_failure_reason) from err
    if not stamps or any(stamp is None for stamp in stamps):
        return np.full(len(stamps) or expected, -1, dtype=np.int64)  # no timestamps: not increasing, a grid follows
    return np.asarray(stamps, dtype=np.int64)


def _index_with_decord(reader, name: str, container: _ContainerInfo, max_pixels_per_frame: int | None) -> _FrameIndex:
    """The frame index from decord alone (PyAV not installed): its per-frame timestamps, checked."""
    count = len(reader)
    if count <= 0:
        raise VideoDecodingError(name, "the video stream has zero frames")
    video_fps = float(reader.get_avg_fps())
    try:
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64).reshape(count, 2)
    except Exception:
        stamps = None
    usable = (
        stamps is not None
        and np.isfinite(stamps).all()
        and stamps[0, 0] > -_TIME_TOLERANCE
        and (count == 1 or (np.diff(stamps[:, 0]) > 0).all())
    )
    if usable:
        starts = stamps[:, 0] - stamps[0, 0]
        end = float(stamps[-1, 1] - stamps[0, 0])
        duration = end if end > starts[-1] else float(starts[-1] + starts[-1] / max(count - 1, 1) or 1.0)
        origin = "decord's frame timestamps"
    elif math.isfinite(video_fps) and video_fps > 0:
        logger.warning(
            "%s: decord gives no usable frame timestamps and PyAV (`pip install av`) is not installed to read them; "
            "assuming a constant rate of %g fps (sample times may be off)",
            name,
            video_fps,
        )
        starts, duration, origin = np.arange(count) / video_fps, count / video_fps, "a constant rate"
    else:
        raise VideoDecodingError(name, "cannot determine the frame rate or frame timestamps")
    try:
        keyframes = np.asarray(reader.get_key_indices(), dtype=np.int64)
    except Exception:
        keyframes = np.zeros(1, dtype=np.int64)
    shape = reader[0].shape  # decord's output is rotated already
    _check_frame_size(name, int(shape[1]), int(shape[0]), max_pixels_per_frame, "first decoded frame")
    return _FrameIndex(
        times=np.asarray(starts, dtype=np.float64),
        duration=float(duration),
        keyframes=keyframes,
        stamps=None,
        width=int(shape[0] if container.rotation % 180 else shape[1]),
        height=int(shape[1] if container.rotation % 180 else shape[0]),
        rotation=container.rotation,
        video_fps=video_fps,
        origin=origin,
    )


# ------------------------------------------------------------------------------------------------------------
# Decoding with decord
# ------------------------------------------------------------------------------------------------------------


def _import_decord():
    try:
        import decord
    except ImportError as err:
        raise ImportError(
            "Decoding video files needs decord (`pip install decord`); alternatively pass already-decoded "
            "frames (numpy arrays, torch tensors or lists of PIL images)."
        ) from err
    return decord


def _averror(tag: str) -> int:
    """FFmpeg's FFERRTAG(0xF8, c1, c2, c3) error code."""
    return -(0xF8 | ord(tag[0]) << 8 | ord(tag[1]) << 16 | ord(tag[2]) << 24)


_AVERROR_DECODER_NOT_FOUND = _averror("DEC")
_AVERROR_STREAM_NOT_FOUND = _averror("STR")


def _decord_failure_reason(err: BaseException, container: _ContainerInfo) -> str:
    message = str(err)
    first_line = message.strip().splitlines()[-1] if message.strip() else type(err).__name__
    if str(_AVERROR_DECODER_NOT_FOUND) in message:
        codec = f" {container.codec!r}" if container.codec else ""
        return f"unsupported codec{codec}: the FFmpeg bundled with decord has no decoder for this video stream"
    if str(_AVERROR_STREAM_NOT_FOUND) in message or "cannot find video stream" in message:
        return "the file contains no decodable video stream"
    if "broken metadata" in message:
        return "not a video: no frame count or duration could be read (a still image or broken metadata)"
    if "Invalid frame count" in message:
        return "the video stream has zero frames"
    if "ERROR opening" in message or message.startswith("Error reading"):
        return "the container could not be opened (invalid, corrupt or truncated file)"
    if "av_read_frame" in message or "partial file" in message:
        return "truncated or corrupt file (reading packets failed)"
    if "send_packet" in message or "Error sending packet" in message or "decod" in message.lower():
        return "corrupt video stream: the decoder rejected the compressed data"
    if "buffer source" in message or "filter" in message:
        return "invalid or corrupt stream parameters (the decoder could not be set up)"
    return f"decoder error: {first_line[:300]}"


def _decord_known_wrong(
    container: _ContainerInfo, index: _FrameIndex | None, target: tuple[int, int] | None
) -> str | None:
    """Why decord must not decode this file, when that is known before trying it (`index` None: without PyAV)."""
    if container.container not in _DECORD_CONTAINERS:
        return f"decord is not verified on {container.container} files (it returns misplaced frames for MPEG-PS/TS)"
    if index is None:
        return None
    if container.width and container.height and (container.width, container.height) != (index.width, index.height):
        return (
            f"the container header says {container.width}x{container.height} but the stream is "
            f"{index.width}x{index.height} (decord trusts the header)"
        )
    width = (target or index.display_size)[0]
    if width in _DECORD_BAD_WIDTHS:
        return f"decord cannot copy frames {width} px wide"
    return None


def _decode_with_decord(
    source: _Source, container: _ContainerInfo, request: _SamplingRequest, index: _FrameIndex | None
) -> _DecodedVideo:
    """decord decodes the frames of `index` (PyAV's) the request selects, after checking that it sees the same
    frames; `index` None (PyAV missing) uses decord's own timestamps. Raises `_UseOtherBackend` when decord is known
    or found wrong for the file."""
    decord = _import_decord()

    def fail(err: BaseException, stage: str) -> VideoDecodingError:
        return _decoder_error(err, source, container, _decord_failure_reason, stage)

    def open_reader(width=-1, height=-1):
        try:
            return decord.VideoReader(
                source.decord_uri(), ctx=decord.cpu(0), width=width, height=height, num_threads=request.num_threads
            )
        except Exception as err:
            raise fail(err, "opening the file") from err

    target = _decode_size(*index.display_size, request.size) if index is not None else None
    reason = _decord_known_wrong(container, index, target)
    if reason is not None:
        raise _UseOtherBackend(reason)
    try:
        if index is None:
            index = _index_with_decord(open_reader(), source.name, container, request.max_pixels_per_frame)
            target = _decode_size(*index.display_size, request.size)
        reader = open_reader(*target) if target is not None else open_reader()
        total = len(reader)
        _check_decord_agrees(reader, index, total)
    except (VideoDecodingError, _UseOtherBackend):
        raise
    except Exception as err:
        raise fail(err, "reading the frame index") from err
    selection = request.select(source.name, index)
    position = 0
    try:
        if container.container in _RANDOM_ACCESS_CONTAINERS:
            frames = reader.get_batch(list(map(int, selection.unique))).asnumpy()
        else:  # decord's seeking is wrong in the other containers: read in order
            decoded = []
            for wanted in selection.unique:
                while position < wanted:
                    reader.next()
                    position += 1
                decoded.append(reader.next().asnumpy())
                position += 1
            frames = np.stack(decoded)
    except StopIteration:
        raise VideoDecodingError(
            source.name,
            f"the stream ended after {position} frames although the index lists {total} (truncated or corrupt file)",
        ) from None
    except Exception as err:
        if "must exactly match" in str(err):
            raise _UseOtherBackend(f"decord cannot copy frames of this width ({err})") from err
        raise fail(err, "decoding frames") from err
    expected = target or index.display_size
    if frames.ndim == 4 and (frames.shape[2], frames.shape[1]) != expected:
        raise _UseOtherBackend(
            f"decord returned {frames.shape[2]}x{frames.shape[1]} frames where {expected[0]}x{expected[1]} were "
            "expected (rotation or frame size handled differently)"
        )
    return selection.result(source.name, frames, "decord")


def _check_decord_agrees(reader, index: _FrameIndex, total: int) -> None:
    """Raises `_UseOtherBackend` when decord counts other frames than the index, or gives timestamps that
    contradict it (decord's frame k is then not the index's frame k)."""
    count = len(index.times)
    if total != count:
        raise _UseOtherBackend(f"decord counts {total} frames where the demuxer lists {count}")
    try:
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(total)), dtype=np.float64).reshape(total, 2)[:, 0]
    except Exception:
        return  # no timestamps to compare: decord reads frames in order, as the index counts them
    if not (np.isfinite(stamps).all() and stamps.min() > -_TIME_TOLERANCE):
        return  # placeholder timestamps (e.g. AVI): nothing to compare
    gaps = np.diff(index.times)
    tolerance = max(0.5 * float(gaps.min()) if len(gaps) else 0.0, 2e-3)
    error = np.abs((stamps - stamps[0]) - index.times).max()
    if error > tolerance:
        raise _UseOtherBackend(
            f"decord's frame timestamps differ from the demuxer's by up to {error:.3g} s (e.g. a huge timestamp gap)"
        )


# ------------------------------------------------------------------------------------------------------------
# Decoding with PyAV
# ------------------------------------------------------------------------------------------------------------


def _import_av():
    try:
        import av
        from av.video.reformatter import VideoReformatter  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "decode_backend='pyav' needs PyAV (`pip install av`); without it, decode_backend='auto' uses decord."
        ) from err
    return av


def _pyav_failure_reason(err: BaseException, container: _ContainerInfo) -> str:
    message = str(err)
    last_line = message.strip().splitlines()[-1] if message.strip() else type(err).__name__
    lowered = message.lower()
    if "decoder" in lowered and ("not found" in lowered or "unknown" in lowered) or "codec not" in lowered:
        codec = f" {container.codec!r}" if container.codec else ""
        return f"unsupported codec{codec}: the FFmpeg bundled with PyAV has no decoder for this video stream"
    if isinstance(err, EOFError) or "end of file" in lowered:
        return "truncated or corrupt file (reading packets failed)"
    if "invalid data" in lowered:
        return "corrupt video stream: the decoder rejected the compressed data"
    return f"decoder error: {last_line[:300]}"


class _SeekFailed(Exception):
    """Seeking landed somewhere unexpected; the caller falls back to one sequential pass."""


def _decode_with_pyav(
    source: _Source, container: _ContainerInfo, request: _SamplingRequest, index: _FrameIndex
) -> _DecodedVideo:
    """Exact sampling with PyAV from the frame `index`: frames are decoded in order, seeking to a keyframe only
    when that skips frames, and only the sampled frames are converted to RGB (decord converts every frame it
    decodes). Dense sampling therefore costs one sequential decode of the span.
    """
    av = _import_av()
    selection = request.select(source.name, index)
    reader = _PyAVFrameReader(
        lambda: _open_pyav(av, source, container, request), index, request.size, request.max_pixels_per_frame, source
    )
    seekable = index.stamps is not None
    try:
        try:
            frames = reader.read(selection.unique, seek=seekable)
        except _SeekFailed:
            frames = reader.read(selection.unique, seek=False)
    except (VideoDecodingError, ImportError):
        raise
    except Exception as err:
        raise _decoder_error(err, source, container, _pyav_failure_reason) from err
    finally:
        reader.close()
    return selection.result(source.name, frames, "pyav")


def _pyav_packet_index(handle, stream) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Timestamps (pts, else dts; None when some packet has neither), keyframe flags and durations of the
    stream's packets, in decode order.

    Only keyframes that the container's seek index lists count when it lists any: FFmpeg also flags some
    non-sync I-frames (e.g. open-GOP recovery points in MP4) as keyframes, and seeking to one of those lands
    on an earlier sync frame, which would make keyframe-only decoding no cheaper than exact decoding.
    """
    stamps, dts, keyflags, durations = [], [], [], []
    for packet in handle.demux(stream):
        if packet.size == 0:  # the empty packet that flushes the decoder at the end, or an AVI "drop" chunk
            continue
        stamps.append(packet.pts if packet.pts is not None else packet.dts)
        dts.append(packet.dts)
        keyflags.append(bool(packet.is_keyframe))
        durations.append(int(packet.duration or 0))
    try:
        indexed = {entry.timestamp for entry in stream.index_entries if entry.is_keyframe}
    except Exception:  # older PyAV without index access: trust the packet flags
        indexed = set()
    if indexed:
        keyflags = [flag and (pts in indexed or dts_ in indexed) for flag, pts, dts_ in zip(keyflags, stamps, dts)]
    timed = np.asarray(stamps, np.int64) if all(stamp is not None for stamp in stamps) else None
    return timed, np.asarray(keyflags, bool), np.asarray(durations, np.int64)


class _PyAVFrameReader:
    """Decodes the frames at sorted unique presentation indices, converting only those to RGB."""

    def __init__(self, open_stream, index: _FrameIndex, size, max_pixels_per_frame, source: _Source):
        try:  # PyAV is optional: guarded so transformers' remote-code import check does not require it
            from av.video.reformatter import VideoReformatter
        except ImportError as err:
            raise ImportError("decode_backend='pyav' needs PyAV (`pip install av`)") from err

        self.open_stream = open_stream
        self.handle = self.stream = None
        self.ordered = index.stamps
        self.index_of = (
            {int(stamp): position for position, stamp in enumerate(index.stamps)} if index.stamps is not None else {}
        )
        self.keyframes = index.keyframes
        self.rotation = index.rotation
        display_width, display_height = index.display_size
        target = _decode_size(display_width, display_height, size) or (display_width, display_height)
        # Decoded (coded) frames are turned after the resize, so the resize target is in coded orientation.
        self.target = (target[1], target[0]) if index.rotation % 180 else target
        self.max_pixels_per_frame = max_pixels_per_frame
        self.name = source.name
        self.reformatter = VideoReformatter()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _convert(self, frame) -> np.ndarray:
        # Checked on every frame before conversion: a stream can change its frame size midway.
        _check_frame_size(self.name, frame.width, frame.height, self.max_pixels_per_frame, "decoded frame")
        rgb = self.reformatter.reformat(
            frame, width=self.target[0], height=self.target[1], format="rgb24", interpolation="BICUBIC"
        )
        return rgb.to_ndarray()

    def _frames(self, stamp: int | None):
        """Frames from the start (stamp None: a fresh open) or from the keyframe at or before `stamp`."""
        if stamp is None or self.handle is None:
            self.close()
            self.handle, self.stream = self.open_stream()
        if stamp is not None:
            self.handle.seek(int(stamp), stream=self.stream, backward=True, any_frame=False)
        for packet in self.handle.demux(self.stream):
            yield from packet.decode()

    def read(self, targets: np.ndarray, seek: bool) -> np.ndarray:
        out: list[np.ndarray] = []
        frames = None
        position = ordinal = -1  # presentation index / output count of the last decoded frame
        for target in (int(value) for value in targets):
            keyframe_at = int(np.searchsorted(self.keyframes, target, side="right")) - 1
            keyframe = int(self.keyframes[keyframe_at]) if keyframe_at >= 0 else 0
            if frames is None or (seek and keyframe > position + 1):
                # Jump when a keyframe lies beyond the current position: the frames before it are not needed.
                frames = self._frames(int(self.ordered[keyframe]) if seek and keyframe > 0 else None)
                position = ordinal = -1
            found = False
            for frame in frames:
                ordinal += 1
                index = ordinal
                if seek:
                    index = self.index_of.get(frame.pts) if frame.pts is not None else None
                    if index is None or index < position:
                        raise _SeekFailed  # unknown or out-of-order timestamps: trust one sequential pass only
                position = index
                if index == target:
                    out.append(self._convert(frame))
                    found = True
                    break
                if index > target:
                    raise _SeekFailed if seek else AssertionError("sequential decoding skipped a frame")
            if not found:
                raise VideoDecodingError(
                    self.name,
                    f"the stream ended after {ordinal + 1} frames although the index lists more "
                    "(truncated or corrupt file)",
                )
        return _rotate(np.stack(out), self.rotation)


def _run_with_timeout(function: Callable[[], Any], timeout: float | None, name: str):
    if timeout is None:
        return function()
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as err:  # re-raised in the calling thread
            outcome["error"] = err

    worker = threading.Thread(target=target, name="videofirst-decode", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise VideoDecodingError(
            name,
            f"decoding did not finish within decode_timeout={timeout:g} s (the decoder may be stuck on this "
            "file; its thread is left running in the background)",
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _has_av() -> bool:
    try:
        _import_av()
    except ImportError:
        return False
    return True


def _decode_video(
    source, request: _SamplingRequest, *, timeout: float | None = DEFAULT_DECODE_TIMEOUT, backend: str = "decord"
) -> _DecodedVideo:
    """Indexes the video once (PyAV's demuxer when installed) and decodes the selected frames with `backend`,
    routing decord's known failures to PyAV with a logged reason."""
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"backend must be one of {DECODE_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "pyav" if _has_av() else "decord"
    request = replace(request, keyframe_snap=_check_keyframe_snap(request.keyframe_snap))
    loaded = _load_source(source)
    container = _inspect_container(loaded)
    if container.width is not None and container.height is not None:
        _check_frame_size(
            loaded.name, container.width, container.height, request.max_pixels_per_frame, "container header"
        )
    if backend == "pyav":
        _import_av()  # a missing optional dependency is an ImportError, not a bad video
    else:
        _import_decord()
    with_av = _has_av()

    def decode() -> _DecodedVideo:
        index = _index_with_pyav(loaded, container, request) if with_av else None
        if backend == "pyav":
            return _decode_with_pyav(loaded, container, request, index)
        try:
            return _decode_with_decord(loaded, container, request, index)
        except _UseOtherBackend as reason:
            if index is None:
                raise VideoDecodingError(
                    loaded.name, f"{reason}; install PyAV (`pip install av`) to decode it"
                ) from None
            logger.warning("%s: %s; decoding it with PyAV instead", loaded.name, reason)
            return _decode_with_pyav(loaded, container, request, index)

    return _run_with_timeout(decode, timeout, loaded.name)


def _check_keyframe_snap(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"keyframe_snap must be a non-negative number of seconds or None, got {value!r}")
    return float(value)


def read_video_frames(
    source,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    sampling: str | None = None,
    start: float | None = None,
    end: float | None = None,
    offset: float | str | None = None,
    size: int | tuple[int, int] | None = None,
    seed: int | np.random.Generator | None = None,
    max_pixels_per_frame: int | None = DEFAULT_MAX_PIXELS_PER_FRAME,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    num_threads: int = 0,
    timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    backend: str = "decord",
    keyframe_snap: float | None = None,
    max_video_bytes: int | None = DEFAULT_MAX_VIDEO_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes sampled frames of a video with decord (default) or PyAV.

    Args:
        source: a path (`str` / `os.PathLike`), raw bytes, or a binary file object (read from its position).
        fps, num_frames, sampling, start, end, offset, seed: which frames; see `sample_frame_indices` and
            this module's docstring (neither `fps` nor `num_frames`: every frame of the clip).
        size: decode-time resize, never enlarging: an int resizes the shortest edge to it (aspect kept, long
            edge ``int(size * long / short)``), a ``(height, width)`` pair resizes to exactly that. None
            keeps the native size.
        max_pixels_per_frame: refuse videos with larger frames (None: no limit).
        max_frames: refuse requests selecting more frames (None: no limit).
        max_video_bytes: refuse requests whose returned frames would take more memory (None: no limit).
        num_threads: decoding threads (0: automatic).
        timeout: seconds before giving up on a stuck decoder (None: wait forever).
        backend: ``"decord"``, ``"pyav"`` (faster for dense sampling of long videos; needs ``av``) or ``"auto"``
            (PyAV when installed, the processor's default). Files decord is known or found wrong on are decoded
            with PyAV (logged).
        keyframe_snap: opt-in fast mode: move each sample to the nearest keyframe at most this many seconds away
            (``math.inf``: always); see `snap_to_keyframes`. None samples exactly.

    Returns:
        ``(frames, timestamps)``: uint8 array ``(T, H, W, 3)`` (RGB) and float64 array ``(T,)`` with each
        frame's presentation time in seconds.

    Raises:
        VideoDecodingError: the source cannot be read or decoded, or the clip bounds are invalid.
        ImportError: the backend's library (decord or av) is not installed.
    """
    request = _SamplingRequest(
        fps=fps,
        num_frames=num_frames,
        sampling=sampling,
        start=start,
        end=end,
        offset=offset,
        size=size,
        seed=seed,
        max_pixels_per_frame=max_pixels_per_frame,
        max_frames=max_frames,
        num_threads=num_threads,
        keyframe_snap=keyframe_snap,
        max_video_bytes=max_video_bytes,
    )
    decoded = _decode_video(source, request, timeout=timeout, backend=backend)
    return decoded.frames, decoded.timestamps


# ------------------------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------------------------


def pad_video_batch(
    videos: Sequence[torch.Tensor], tubelet_frames: int = 2, pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads videos ``(T_i, C, H, W)`` into ``(B, T, C, H, W)`` plus an int64 frame mask ``(B, T)``.

    Each video is edge-padded (last frame repeated, mask 1) to a multiple of `tubelet_frames`, then
    zero-padded (mask 0) to the longest video, or to `pad_to` frames when given.
    """
    if not videos:
        raise ValueError("pad_video_batch needs at least one video")
    if isinstance(tubelet_frames, bool) or not isinstance(tubelet_frames, int) or tubelet_frames < 1:
        raise ValueError(f"tubelet_frames must be a positive integer, got {tubelet_frames!r}")
    frame_shape = tuple(videos[0].shape[1:])
    lengths = []
    for index, video in enumerate(videos):
        if video.ndim != 4 or video.shape[0] == 0:
            raise ValueError(f"video {index} must be a non-empty (T, C, H, W) tensor, got shape {tuple(video.shape)}")
        if tuple(video.shape[1:]) != frame_shape:
            raise ValueError(
                f"videos must share frame shape (C, H, W) to be batched: video 0 has {frame_shape}, video "
                f"{index} has {tuple(video.shape[1:])} (enable do_center_crop or use a fixed size)"
            )
        lengths.append(math.ceil(video.shape[0] / tubelet_frames) * tubelet_frames)
    total = max(lengths)
    if pad_to is not None:
        if pad_to < total:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest video ({total} frames after edge padding)")
        total = pad_to
    batch = videos[0].new_zeros((len(videos), total, *frame_shape))
    mask = torch.zeros((len(videos), total), dtype=torch.long)
    for index, (video, length) in enumerate(zip(videos, lengths)):
        real = video.shape[0]
        batch[index, :real] = video
        if length > real:
            batch[index, real:length] = video[-1:]
        mask[index, :length] = 1
    return batch, mask


# ------------------------------------------------------------------------------------------------------------
# The video processor
# ------------------------------------------------------------------------------------------------------------


def _check_backend(value):
    if isinstance(value, str) and value not in DECODE_BACKENDS:
        raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS}, got {value!r}")


def _check_sampling(value):
    if isinstance(value, str) and value not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {value!r}")


_Time = float | int | None
_Offset = float | int | str | None


class VideoFirstVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    sampling (`str`, *optional*):
        None: `"uniform"` when only `num_frames` is set, `"fps"` when only `fps` is. `"uniform"`: `num_frames`
        frames spread uniformly over the clip; `"fps"`: a frame every `1 / fps` seconds over the whole clip;
        `"window"`: the first `num_frames` samples at `fps` from the clip start (the paper's training policy).
        A call that sets `fps` or `num_frames` replaces both defaults (and the default `sampling`).
    start (`float` or `list`, *optional*):
        Clip start in seconds; one value for all videos or one per video (None: video start).
    end (`float` or `list`, *optional*):
        Clip end in seconds; one value for all videos or one per video (None: video end).
    offset (`float`, `"random"` or `list`, *optional*):
        First sample's offset after `start` (`"fps"` mode) or `"random"` (random jitter, both modes).
    seed (`int`, *optional*):
        Seed for `offset="random"`; one generator is consumed in batch order.
    tubelet_frames (`int`, *optional*, defaults to 2):
        The model's tubelet time size: each video is edge-padded to a multiple of it.
    decode_resize (`bool`, *optional*, defaults to `True`):
        Shrink frames inside the decoder when `size` will shrink them anyway (saves memory for long videos).
    max_pixels_per_frame (`int`, *optional*, defaults to 7680 * 4320):
        Refuse videos with larger frames.
    max_frames (`int`, *optional*, defaults to 4096):
        Refuse videos that would return more frames.
    max_video_bytes (`int`, *optional*, defaults to 4 GiB):
        Refuse videos whose frames, resized to `size` as float32, would take more memory (thin videos are
        enlarged by a shortest-edge resize); checked before decoding.
    decode_timeout (`float`, *optional*, defaults to 300):
        Seconds before a stuck decoder is given up on (None: no limit).
    decode_num_threads (`int`, *optional*, defaults to 0):
        Decoding threads (0: automatic).
    decode_backend (`str`, *optional*, defaults to `"auto"`):
        `"auto"` (PyAV when installed, else decord), `"decord"` or `"pyav"`. PyAV converts only the sampled frames
        (faster for dense sampling of long videos); decord hands the files it is known or found wrong on to PyAV.
    keyframe_snap (`float`, *optional*):
        Opt-in fast mode: move each sample to the nearest keyframe at most this many seconds away (`inf`:
        always). Exact sampling when None.
    """

    sampling: Annotated[str | None, _check_sampling]
    start: _Time | list[_Time] | tuple[_Time, ...]
    end: _Time | list[_Time] | tuple[_Time, ...]
    offset: _Offset | list[_Offset] | tuple[_Offset, ...]
    seed: int | None
    tubelet_frames: int | None
    decode_resize: bool | None
    max_pixels_per_frame: int | None
    max_frames: int | None
    max_video_bytes: int | None
    decode_timeout: float | int | None
    decode_num_threads: int | None
    decode_backend: Annotated[str | None, _check_backend]
    keyframe_snap: float | int | None


def _is_frame(value) -> bool:
    return isinstance(value, Image.Image) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3))


def _is_video_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4


def _make_video_list(videos) -> list:
    """Splits the `videos` argument into a list with one entry per video."""
    if _is_source(videos) or _is_video_array(videos):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            "a video array must be 4-D (T, H, W, C) / (T, C, H, W), or 5-D for a batch; got shape "
            f"{tuple(videos.shape)}"
        )
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise ValueError("videos is empty")
        if all(_is_frame(item) for item in videos):
            return [list(videos)]  # one video given as a list of frames
        result = []
        for index, item in enumerate(videos):
            if _is_source(item) or _is_video_array(item):
                result.append(item)
            elif isinstance(item, (list, tuple)) and item and all(_is_frame(frame) for frame in item):
                result.append(list(item))
            else:
                raise TypeError(
                    f"videos[{index}] has unsupported type {type(item).__name__}: expected a path, bytes, a "
                    "binary file object, a 4-D array/tensor or a list of frames (PIL images or 3-D arrays)"
                )
        return result
    raise TypeError(f"unsupported videos argument of type {type(videos).__name__}")


def _per_video(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} values for {count} videos")
        return list(value)
    return [value] * count


def _frame_to_array(frame) -> np.ndarray | torch.Tensor:
    if isinstance(frame, Image.Image):
        return np.asarray(frame if frame.mode in ("RGB", "L") else frame.convert("RGB"))
    return frame


def _check_pixels(video: torch.Tensor, name: str, do_rescale: bool) -> torch.Tensor:
    """Refuses decoded pixels the processor would silently mangle: frames without pixels, booleans, integers
    outside 0-255 (e.g. 16-bit), NaN or infinity, and floats already in [0, 1] when `do_rescale` divides by 255."""
    if video.shape[-1] == 0 or video.shape[-2] == 0:
        raise ValueError(f"{name} has empty {video.shape[-1]}x{video.shape[-2]} frames")
    if video.dtype == torch.bool:
        raise ValueError(f"{name} has boolean pixels; pass uint8 values in 0-255")
    if video.dtype == torch.uint8:
        return video
    if video.is_floating_point() and not torch.isfinite(video).all():
        raise ValueError(f"{name} contains NaN or infinite pixel values")
    if video.is_complex():
        raise ValueError(f"{name} has pixels of unsupported dtype {video.dtype}")
    values = video if video.is_floating_point() or video.dtype.is_signed else video.to(torch.int64)  # e.g. uint16
    low, high = float(values.min()), float(values.max())
    if do_rescale and (low < 0 or high > 255):
        raise ValueError(
            f"{name} has {video.dtype} pixels in [{low:g}, {high:g}], outside 0-255 (16-bit or unscaled data?); "
            "convert to uint8 0-255, or pass do_rescale=False with values ready for normalisation"
        )
    if do_rescale and video.is_floating_point() and 0 < high <= 1:
        raise ValueError(
            f"{name} has float pixels already in [0, 1] but do_rescale=True would divide them by 255 again; pass "
            "do_rescale=False or uint8 values in 0-255"
        )
    return video


def _to_tchw(video, input_data_format=None, prefer_channels_last: bool = True) -> torch.Tensor:
    """Decoded frames (array, tensor or list of frames) -> (T, C, H, W) tensor."""
    if isinstance(video, list):
        frames = [_frame_to_array(frame) for frame in video]
        if any(isinstance(frame, torch.Tensor) for frame in frames):
            frames = [torch.as_tensor(np.asarray(f)) if isinstance(f, np.ndarray) else f for f in frames]
            shapes = {tuple(frame.shape) for frame in frames}
            if len(shapes) > 1:
                raise ValueError(f"all frames of a video must have the same shape, got {sorted(shapes)}")
            tensor = torch.stack(frames)
            prefer_channels_last = False
        else:
            shapes = {frame.shape for frame in frames}
            if len(shapes) > 1:
                raise ValueError(f"all frames of a video must have the same shape, got {sorted(shapes)}")
            tensor = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
        if tensor.ndim == 3:  # grayscale frames (T, H, W)
            tensor = tensor.unsqueeze(-1 if prefer_channels_last else 1)
    elif isinstance(video, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(video))
    else:
        tensor = video
        prefer_channels_last = False
    if tensor.ndim != 4:
        raise ValueError(f"a video must be 4-D, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("a video has zero frames")
    fmt = str(getattr(input_data_format, "value", input_data_format)) if input_data_format is not None else None
    if fmt is None:
        first, last = tensor.shape[1] in (1, 3, 4), tensor.shape[-1] in (1, 3, 4)
        if first and last:
            fmt = "channels_last" if prefer_channels_last else "channels_first"
        elif first or last:
            fmt = "channels_last" if last else "channels_first"
        else:
            raise ValueError(
                f"cannot find the channel axis (1, 3 or 4 channels) of a video of shape {tuple(tensor.shape)}"
            )
    if fmt == "channels_last":
        tensor = tensor.permute(0, 3, 1, 2)
    elif fmt != "channels_first":
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}")
    return tensor.contiguous()


class VideoFirstVideoProcessor(BaseVideoProcessor):
    r"""Samples, decodes, resizes, crops and normalises videos for VideoFirst models.

    Inputs: a path / bytes / binary file object (decoded with PyAV when installed, else decord; see
    `read_video_frames`), a decoded video (uint8 array `(T, H, W, C)`, tensor `(T, C, H, W)` or `(T, H, W, C)`,
    list of PIL images or arrays), or a list of those. Decoded inputs are used as given, unless `video_metadata`
    with an `fps` is passed for them, in which case the same sampling rules apply. Frames are resized so their
    shortest edge is `size["shortest_edge"]` (224), centre-cropped to `crop_size` (224 x 224), rescaled to [0, 1] and
    normalised with CLIP's mean and standard deviation (the usual choice for a video-first encoder
    initialised from CLIP-style image models).

    Returns a `BatchFeature` with `pixel_values_videos` `(B, T, C, H, W)` and `video_frame_mask` `(B, T)`
    (padding rules in the module docstring), plus `video_metadata` (a list of `VideoMetadata`) with
    `return_metadata=True`.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    fps = None
    num_frames = 16
    sampling = None
    start = None
    end = None
    offset = None
    seed = None
    tubelet_frames = 2
    decode_resize = True
    max_pixels_per_frame = DEFAULT_MAX_PIXELS_PER_FRAME
    max_frames = DEFAULT_MAX_FRAMES
    max_video_bytes = DEFAULT_MAX_VIDEO_BYTES
    decode_timeout = DEFAULT_DECODE_TIMEOUT
    decode_num_threads = 0
    decode_backend = "auto"
    keyframe_snap = None
    valid_kwargs = VideoFirstVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_frame_mask"]

    def __init__(self, **kwargs: Unpack[VideoFirstVideoProcessorKwargs]):
        super().__init__(**kwargs)
        self._check_options(
            sampling=self.sampling,
            fps=self.fps,
            num_frames=self.num_frames,
            tubelet_frames=self.tubelet_frames,
            max_frames=self.max_frames,
            max_pixels_per_frame=self.max_pixels_per_frame,
            decode_timeout=self.decode_timeout,
            decode_backend=self.decode_backend,
            keyframe_snap=self.keyframe_snap,
        )

    @staticmethod
    def _check_options(
        sampling,
        fps,
        num_frames,
        tubelet_frames,
        max_frames,
        max_pixels_per_frame,
        decode_timeout,
        decode_backend="auto",
        keyframe_snap=None,
        **_,
    ):
        if decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS}, got {decode_backend!r}")
        _check_keyframe_snap(keyframe_snap)
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}")
        for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if fps is not None or num_frames is not None or sampling is not None:
            resolve_sampling(fps, num_frames, sampling)
        if isinstance(tubelet_frames, bool) or not isinstance(tubelet_frames, int) or tubelet_frames < 1:
            raise ValueError(f"tubelet_frames must be a positive integer, got {tubelet_frames!r}")
        if decode_timeout is not None and (
            isinstance(decode_timeout, bool) or not isinstance(decode_timeout, (int, float)) or decode_timeout <= 0
        ):
            raise ValueError(f"decode_timeout must be a positive number of seconds or None, got {decode_timeout!r}")
        if max_pixels_per_frame is not None and (not isinstance(max_pixels_per_frame, int) or max_pixels_per_frame < 1):
            raise ValueError(f"max_pixels_per_frame must be a positive integer or None, got {max_pixels_per_frame!r}")

    def describe_sampling(self) -> str:
        """The default frame sampling in words (model cards say which policy a checkpoint uses)."""
        mode = resolve_sampling(self.fps, self.num_frames, self.sampling)
        if mode == "uniform":
            return f"{self.num_frames} frames spread uniformly over the whole video"
        if mode == "window":
            return f"the first {self.num_frames} frames at {self.fps:g} fps from the clip start"
        return f"one frame every {1 / self.fps:g} s over the whole video" if self.fps else "every frame"

    def resize(self, image: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        # Frames already shrunk by the decoder are at the target size: skip the (identity) interpolation.
        height, width = image.shape[-2:]
        if size.shortest_edge and not size.longest_edge and min(height, width) == size.shortest_edge:
            return image
        if size.height and size.width and (height, width) == (size.height, size.width):
            return image
        return super().resize(image, size=size, resample=resample, **kwargs)

    def _resolve_kwargs(self, kwargs: dict) -> dict:
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(unknown)}")
        try:
            validate_typed_dict(self.valid_kwargs, kwargs)
        except StrictDataclassError as err:  # surface as the usual Python exception types
            raise (TypeError if isinstance(err.__cause__, TypeError) else ValueError)(str(err)) from err
        if kwargs.get("fps") is not None or kwargs.get("num_frames") is not None:
            # A call that names a rate or a frame count means that alone: the other default does not mix in.
            for name in ("fps", "num_frames", "sampling"):
                kwargs.setdefault(name, None)
        for name in self.valid_kwargs.__annotations__:
            kwargs.setdefault(name, getattr(self, name, None))
        return kwargs

    @staticmethod
    def _decode_target(do_resize: bool, size: SizeDict | None, decode_resize: bool):
        if not (do_resize and decode_resize and size is not None):
            return None
        if size.shortest_edge and not size.longest_edge:
            return int(size.shortest_edge)
        if size.height and size.width:
            return (int(size.height), int(size.width))
        return None

    def _load_videos(self, videos, kwargs: dict) -> tuple[list[torch.Tensor], list[VideoMetadata]]:
        """Decodes/samples every video into a uint8 (or given dtype) (T, C, H, W) tensor plus its metadata."""
        items = _make_video_list(videos)
        count = len(items)
        starts = _per_video(kwargs["start"], count, "start")
        ends = _per_video(kwargs["end"], count, "end")
        offsets = _per_video(kwargs["offset"], count, "offset")
        metadata_in = kwargs.get("video_metadata")
        if metadata_in is not None and not isinstance(metadata_in, (list, tuple)):
            metadata_in = [metadata_in]
        if metadata_in is not None and len(metadata_in) != count:
            raise ValueError(f"video_metadata has {len(metadata_in)} entries for {count} videos")
        sample = bool(kwargs["do_sample_frames"])
        fps = kwargs["fps"] if sample else None
        num_frames = kwargs["num_frames"] if sample else None
        sampling = kwargs["sampling"] if sample else None
        rng = np.random.default_rng(kwargs["seed"])
        size = kwargs["size"]
        if size is not None and not isinstance(size, SizeDict):
            size = self._standardize_kwargs(size=size, default_to_square=kwargs["default_to_square"])["size"]
        decode_size = self._decode_target(kwargs["do_resize"], size, kwargs["decode_resize"])
        output_size = self._decode_target(kwargs["do_resize"], size, True)
        tensors, metadata = [], []
        for index, item in enumerate(items):
            request = _SamplingRequest(
                fps=fps,
                num_frames=num_frames,
                sampling=sampling,
                start=starts[index],
                end=ends[index],
                offset=offsets[index],
                size=decode_size,
                seed=rng,
                max_pixels_per_frame=kwargs["max_pixels_per_frame"],
                max_frames=kwargs["max_frames"],
                num_threads=kwargs["decode_num_threads"] or 0,
                keyframe_snap=kwargs["keyframe_snap"],
                output_size=output_size,
                max_video_bytes=kwargs["max_video_bytes"],
            )
            if _is_source(item):
                decoded = _decode_video(
                    item, request, timeout=kwargs["decode_timeout"], backend=kwargs["decode_backend"] or "auto"
                )
                tensors.append(torch.from_numpy(decoded.frames).permute(0, 3, 1, 2))
                metadata.append(
                    VideoMetadata(
                        total_num_frames=decoded.total_frames,
                        fps=decoded.video_fps,
                        width=decoded.width,
                        height=decoded.height,
                        duration=decoded.duration,
                        video_backend=decoded.backend,
                        frames_indices=decoded.indices.tolist(),
                    )
                )
                continue
            name = f"<decoded video {index}>"
            tensor = _check_pixels(_to_tchw(item, kwargs.get("input_data_format")), name, kwargs["do_rescale"])
            total = tensor.shape[0]
            given = metadata_in[index] if metadata_in is not None else None
            video_fps = given.get("fps") if isinstance(given, (dict, VideoMetadata)) else None
            indices = np.arange(total)
            if sample and video_fps:
                indices = request.sample(name, np.arange(total) / video_fps, total / video_fps)
                tensor = tensor[torch.from_numpy(indices)]
            max_frames = kwargs["max_frames"]
            if max_frames is not None and tensor.shape[0] > max_frames:
                raise ValueError(
                    f"video {index} has {tensor.shape[0]} frames, more than max_frames={max_frames}; sample "
                    "it first or pass video_metadata={'fps': ...} so the processor can"
                )
            _check_output_memory(name, tensor.shape[0], int(tensor.shape[-1]), int(tensor.shape[-2]), request)
            tensors.append(tensor)
            metadata.append(
                VideoMetadata(
                    total_num_frames=total,
                    fps=video_fps,
                    width=int(tensor.shape[-1]),
                    height=int(tensor.shape[-2]),
                    duration=total / video_fps if video_fps else None,
                    video_backend=None,
                    frames_indices=indices.tolist(),
                )
            )
        return tensors, metadata

    def _to_rgb(self, video: torch.Tensor, do_convert_rgb: bool) -> torch.Tensor:
        if not do_convert_rgb:
            return video
        channels = video.shape[1]
        if channels == 1:
            return video.expand(-1, 3, -1, -1)
        if channels == 4:
            return video[:, :3]
        return video

    def _transform(self, tensors: list[torch.Tensor], kwargs: dict, device) -> list[torch.Tensor]:
        """Converts (T, C, H, W) uint8 tensors to RGB, moves them to `device`, then resizes, crops, rescales and
        normalises them with the resolved `kwargs` (consumed)."""
        tensors = [self._to_rgb(tensor, kwargs["do_convert_rgb"]) for tensor in tensors]
        if device is not None:
            tensors = [tensor.to(device) for tensor in tensors]
        for name in (
            "video_metadata",
            "input_data_format",
            "data_format",
            "do_convert_rgb",
            "do_sample_frames",
            "return_metadata",
        ):
            kwargs.pop(name, None)
        kwargs = self._standardize_kwargs(**kwargs)
        self._validate_preprocess_kwargs(**kwargs)
        return self._preprocess(videos=tensors, return_tensors=None, **kwargs)["pixel_values_videos"]

    def preprocess(self, videos, **kwargs: Unpack[VideoFirstVideoProcessorKwargs]) -> BatchFeature:
        kwargs = self._resolve_kwargs(dict(kwargs))
        self._check_options(**kwargs)
        return_tensors = kwargs.pop("return_tensors")
        return_metadata = kwargs.pop("return_metadata")
        device = kwargs.pop("device")
        tensors, metadata = self._load_videos(videos, kwargs)
        tubelet_frames = kwargs["tubelet_frames"]
        processed = self._transform(tensors, kwargs, device)
        shapes = {tuple(video.shape[1:]) for video in processed}
        if len(shapes) == 1:
            pixel_values, mask = pad_video_batch(processed, tubelet_frames=tubelet_frames)
        elif return_tensors is not None:
            raise ValueError(
                f"videos have different frame sizes after processing ({sorted(shapes)}) and cannot be "
                "stacked; enable do_center_crop or use a fixed size"
            )
        else:
            pairs = [pad_video_batch([video], tubelet_frames=tubelet_frames) for video in processed]
            length = max(mask.shape[1] for _, mask in pairs)
            pixel_values = [video[0] for video, _ in pairs]
            mask = torch.zeros((len(pairs), length), dtype=torch.long)
            for index, (_, video_mask) in enumerate(pairs):
                mask[index, : video_mask.shape[1]] = 1
        data = {"pixel_values_videos": pixel_values, "video_frame_mask": mask}
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    def preprocess_images(self, images, **kwargs) -> BatchFeature:
        """Processes images (PIL, arrays `(H, W, C)`, tensors `(C, H, W)`, paths or bytes) into `pixel_values`
        `(B, C, H, W)`, with the same resize / crop / normalisation as video frames."""
        kwargs = self._resolve_kwargs({k: v for k, v in kwargs.items() if k in self.valid_kwargs.__annotations__})
        return_tensors = kwargs.pop("return_tensors")
        device = kwargs.pop("device")
        if isinstance(images, (list, tuple)):
            items = list(images)
        elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            items = list(images)
        else:
            items = [images]
        if not items:
            raise ValueError("images is empty")
        tensors = []
        for index, image in enumerate(items):
            if isinstance(image, (str, os.PathLike, bytes, bytearray)):
                name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"<{len(image)} bytes>"
                try:
                    handle = io.BytesIO(bytes(image)) if isinstance(image, (bytes, bytearray)) else image
                    with Image.open(handle) as opened:
                        image = opened.convert("RGB")
                except (OSError, Image.DecompressionBombError) as err:
                    raise ValueError(f"cannot read image {name!r}: {err}") from None
            if not _is_frame(image):
                raise TypeError(f"images[{index}] has unsupported type {type(image).__name__}")
            is_tensor = isinstance(image, torch.Tensor)
            tensor = _to_tchw([image], kwargs.get("input_data_format"), prefer_channels_last=not is_tensor)
            tensors.append(_check_pixels(tensor, f"images[{index}]", kwargs["do_rescale"]))
        processed = self._transform(tensors, kwargs, device)
        shapes = {tuple(frame.shape) for frame in processed}
        if len(shapes) == 1:
            pixel_values = torch.cat(processed, dim=0)
        elif return_tensors is not None:
            raise ValueError(f"images have different sizes after processing ({sorted(shapes)}) and cannot be stacked")
        else:
            pixel_values = [frame[0] for frame in processed]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)
