"""What one video decode is asked for and what it returns, shared by both backends.

`_FrameIndex` (every frame's presentation time, keyframes and coded size) is the one truth about time;
`_SamplingRequest.select` turns a request into the frames to decode (sampled, bounded by ``max_frames`` and
``max_video_bytes``, snapped to keyframes in the fast mode) and `_Selection.result` checks what a backend
decoded. The memory bound uses the processor's output size: a shortest-edge resize enlarges thin videos
(16x8192 becomes 224x114688), so extreme aspect ratios are refused before anything is allocated.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .video_containers_videofirst import _ContainerInfo
from .video_sampling_videofirst import _clip_frame_range, sample_frame_indices, snap_to_keyframes
from .video_sources_videofirst import DEFAULT_MAX_PIXELS_PER_FRAME, VideoDecodingError, _Source

DEFAULT_MAX_FRAMES = 4096  # most frames a single video may return
DEFAULT_MAX_VIDEO_BYTES = 4 * 2**30  # most memory one video's frames may take at the processor's output size


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
