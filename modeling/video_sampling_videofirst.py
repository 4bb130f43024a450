"""Which frames of a video to decode: the sampling rules, in one place.

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
  A video shorter than ``num_frames / fps`` seconds yields fewer frames (the processor's batch padding fills up).
"""

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

SAMPLING_MODES = ("uniform", "fps", "window")
_TIME_TOLERANCE = 1e-4  # seconds: a sample time this close before a frame's start selects that frame


def check_sampling(fps: float | None, num_frames: int | None, sampling: str | None) -> str:
    """Validates a sampling request (``fps`` a finite positive number, ``num_frames`` a positive integer, each or
    None, and ``sampling`` consistent with them) and returns its mode; every entry point (`sample_frame_indices`,
    the video processor's options and keyword arguments) checks through here."""
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, Real) or not (math.isfinite(fps) and fps > 0)):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1
    ):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    return resolve_sampling(fps, num_frames, sampling)


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
    mode = check_sampling(fps, num_frames, sampling)

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
