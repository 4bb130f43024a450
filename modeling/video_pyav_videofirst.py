"""The PyAV backend (optional: ``pip install av``): the frame index every decode starts from, and exact decoding.

When PyAV is installed every video is indexed once by `_index_with_pyav`: the presentation timestamp of every
frame from one demux pass (no pixels decoded), or, where packets carry none, from one decoding pass; the frame
size comes from the decoder, not the container header. PyAV seeks to the keyframe before a needed frame in
MP4/MOV, Matroska/WebM and FLV and reads every other container in order, converting only the sampled frames to
RGB (dense sampling costs about one sequential decode of the span). `av` is imported only inside functions,
guarded by ``ImportError``, so transformers' remote-code import check does not require it.
"""

import io

import numpy as np
from transformers.utils import logging

from .video_containers_videofirst import _RANDOM_ACCESS_CONTAINERS, _ContainerInfo
from .video_selection_videofirst import (
    _decode_size,
    _DecodedVideo,
    _decoder_error,
    _FrameIndex,
    _rotate,
    _SamplingRequest,
)
from .video_sources_videofirst import VideoDecodingError, _check_frame_size, _Source

logger = logging.get_logger(__name__)


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


def _has_av() -> bool:
    try:
        _import_av()
    except ImportError:
        return False
    return True
