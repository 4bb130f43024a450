"""The decord backend (optional: ``pip install decord``).

decord seeks in MP4/MOV, Matroska/WebM and FLV and reads AVI in order. It decodes the frames of PyAV's index
when PyAV is installed, and is handed to PyAV (`_UseOtherBackend`, with the reason logged by the caller) where it
is known or found wrong: containers it is not verified on (MPEG-PS, where it returns every frame 12 frames late,
MPEG-TS, raw streams, Ogg, ...), a container header whose frame size differs from the stream's, output widths it
cannot copy (16, 24, 48, 72), a frame count or timestamps that disagree with the index, or frames of an
unexpected size. Without PyAV, decord's own timestamps are the index. `decord` is imported only inside a
function, guarded by ``ImportError``, so transformers' remote-code import check does not require it.
"""

import math

import numpy as np
from transformers.utils import logging

from .video_containers_videofirst import _RANDOM_ACCESS_CONTAINERS, _ContainerInfo
from .video_sampling_videofirst import _TIME_TOLERANCE
from .video_selection_videofirst import (
    _decode_size,
    _DecodedVideo,
    _decoder_error,
    _FrameIndex,
    _SamplingRequest,
    _UseOtherBackend,
)
from .video_sources_videofirst import VideoDecodingError, _check_frame_size, _Source

logger = logging.get_logger(__name__)

# decord is verified exact (frames and times compared with PyAV's) only in these containers; it returns MPEG-PS
# frames 12 late and MPEG-TS frames misplaced, so other containers go to PyAV.
_DECORD_CONTAINERS = ("mp4", "matroska", "flv", "avi")
# decord fails to copy frames of these widths out ("DECORDArrayCopyFromTo: The size must exactly match").
_DECORD_BAD_WIDTHS = frozenset({16, 24, 48, 72})


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
