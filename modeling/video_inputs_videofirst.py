"""The processor's inputs and batches: splitting the `videos` argument, decoded frames to ``(T, C, H, W)`` with
pixel checks, and batch padding.

Padding rules (`pad_video_batch`, used by `VideoFirstVideoProcessor`)
--------------------------------------------------------------------
Each video's real frames are first edge-padded (its last frame repeated) up to a multiple of
``tubelet_frames`` (the model's tubelet time size, default 2); these repeated frames count as *real*
(mask 1). The batch is then zero-padded to its longest video, and those frames get mask 0 in
``video_frame_mask`` (shape ``(B, T)``, int64). A video therefore has identical real frames whether it is
processed alone or in a batch. The mask is returned even when every video has the same length (all ones).

Decoded arrays given to the processor are checked (no empty frames, booleans, integers outside 0-255, NaN/Inf, or
floats already in [0, 1] when they would be rescaled).
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .video_sources_videofirst import _is_source


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
