"""Decoding one video: `read_video_frames`, the backend choice and the decode timeout.

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

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from transformers.utils import logging

from .video_containers_videofirst import _inspect_container
from .video_decord_videofirst import _decode_with_decord, _import_decord
from .video_pyav_videofirst import _decode_with_pyav, _has_av, _import_av, _index_with_pyav
from .video_selection_videofirst import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_VIDEO_BYTES,
    _DecodedVideo,
    _SamplingRequest,
    _UseOtherBackend,
)
from .video_sources_videofirst import (
    DEFAULT_MAX_PIXELS_PER_FRAME,
    VideoDecodingError,
    _check_frame_size,
    _load_source,
)

logger = logging.get_logger(__name__)

DEFAULT_DECODE_TIMEOUT = 300.0  # seconds per video
DECODE_BACKENDS = ("auto", "decord", "pyav")  # "auto": PyAV when installed, else decord


def check_decode_backend(backend: str) -> str:
    """`backend` itself: one of `DECODE_BACKENDS` (the processor's `decode_backend`, `read_video_frames`' `backend`)."""
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS}, got {backend!r}")
    return backend


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


def _decode_video(
    source, request: _SamplingRequest, *, timeout: float | None = DEFAULT_DECODE_TIMEOUT, backend: str = "decord"
) -> _DecodedVideo:
    """Indexes the video once (PyAV's demuxer when installed) and decodes the selected frames with `backend`,
    routing decord's known failures to PyAV with a logged reason."""
    check_decode_backend(backend)
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
            the rules in `video_sampling_videofirst` (neither `fps` nor `num_frames`: every frame of the clip).
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
