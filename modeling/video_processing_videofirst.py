"""The VideoFirst video processor: videos (files or decoded frames) to `pixel_values_videos` / `video_frame_mask`.

The work is split across sibling modules, each shipped with exported checkpoints as remote code:

* `video_sampling_videofirst`: which frames to decode (the sampling rules, `resolve_sampling`,
  `sample_frame_indices`, `snap_to_keyframes`).
* `video_decoding_videofirst`: decoding one video (`read_video_frames`), backend choice, timeout, safety.
* `video_sources_videofirst` and `video_containers_videofirst`: sources, `VideoDecodingError` and the cheap
  container checks that run before any decoder.
* `video_selection_videofirst`, `video_pyav_videofirst`, `video_decord_videofirst`: the frame index, the request
  both backends serve, and the two backends.
* `video_inputs_videofirst`: decoded inputs to tensors and batch padding (`pad_video_batch`).

Every public name stays importable from this module.
"""

import io
import os

import numpy as np
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from huggingface_hub.errors import StrictDataclassError
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .video_decoding_videofirst import (
    DECODE_BACKENDS,
    DEFAULT_DECODE_TIMEOUT,
    _check_keyframe_snap,
    _decode_video,
    check_decode_backend,
    read_video_frames,
)
from .video_inputs_videofirst import _check_pixels, _is_frame, _make_video_list, _per_video, _to_tchw, pad_video_batch
from .video_sampling_videofirst import (
    SAMPLING_MODES,
    check_sampling,
    resolve_sampling,
    sample_frame_indices,
    snap_to_keyframes,
)
from .video_selection_videofirst import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_VIDEO_BYTES,
    _check_output_memory,
    _SamplingRequest,
)
from .video_sources_videofirst import DEFAULT_MAX_PIXELS_PER_FRAME, VideoDecodingError, _is_source

__all__ = [
    "DECODE_BACKENDS",
    "DEFAULT_DECODE_TIMEOUT",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_PIXELS_PER_FRAME",
    "DEFAULT_MAX_VIDEO_BYTES",
    "SAMPLING_MODES",
    "VideoDecodingError",
    "VideoFirstVideoProcessor",
    "VideoFirstVideoProcessorKwargs",
    "pad_video_batch",
    "read_video_frames",
    "resolve_sampling",
    "sample_frame_indices",
    "snap_to_keyframes",
]


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

    sampling: str | None
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
    decode_backend: str | None
    keyframe_snap: float | int | None


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
    (padding rules in `video_inputs_videofirst`), plus `video_metadata` (a list of `VideoMetadata`) with
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
        check_decode_backend(decode_backend)
        _check_keyframe_snap(keyframe_snap)
        check_sampling(fps, num_frames, sampling)
        if max_frames is not None and (
            isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
        ):
            raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
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
                    item, request, timeout=kwargs["decode_timeout"], backend=kwargs["decode_backend"]
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
