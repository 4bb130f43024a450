"""Inference Endpoints handler for VideoFirst checkpoints (the `EndpointHandler` contract).

Shipped at the root of every exported checkpoint beside `requirements.txt`. It loads the model and processor from
its own folder with `trust_remote_code=True` (the checkpoint carries the model code), so the endpoint needs neither
`videofirst` nor network access.

Request (JSON):

```json
{
  "inputs": "<base64 video file>",
  "parameters": {
    "candidate_labels": ["cooking", "cycling"],
    "hypothesis_template": "a video of {}.",
    "return_embeddings": false,
    "fps": 1.0,
    "num_frames": 16
  }
}
```

* `inputs`: one video or a list of videos (batching). A video is the base64 text of a video file (MP4, WebM, MKV,
  AVI, ...; a `data:video/...;base64,` prefix is accepted), or `{"frames": [<base64 PNG/JPEG>, ...]}` for frames
  decoded by the caller (used as given, no resampling). A binary request body arrives as raw bytes and is accepted
  as one video. `inputs` may be omitted to embed texts only.
* `parameters` (all optional): `candidate_labels` (texts scored against every video; alias `texts`),
  `hypothesis_template` (`{}` is replaced by each label; default `"{}"`), `return_embeddings` (default: true when
  there are no texts), `fps` and `num_frames` (frame sampling; default: the processor's).

Response: `{"results": [{"num_frames": T, "scores": [{"score", "label", "similarity"}, ...], "embedding": [...]}]}`
with one entry per video, scores sorted by decreasing score (`VideoFirstModel.score_candidates`, as the pipelines:
softmax over the labels for a contrastively trained model, a sigmoid per label for a sigmoid-loss model;
`similarity` is the cosine similarity), plus
`"text_embeddings"` when embeddings are requested and texts are given.

Safety: strings are only ever base64-decoded, never opened as paths or fetched as URLs. Request size, number of
videos, frames and texts, text length and frame size are bounded (`Limits`; each bound can be changed with an
environment variable `VIDEOFIRST_<NAME>`, e.g. `VIDEOFIRST_MAX_VIDEOS=16`). Every refused or undecodable request is
answered with `{"error": "<message>"}`; unexpected failures are logged on the server and answered with a short
error object, never a traceback.
"""

import base64
import binascii
import dataclasses
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

logger = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Base64 text may carry line breaks and a data-URL prefix; beyond this much of either a payload is refused unread.
_BASE64_SLACK = 1.05
_MAX_DATA_URL_PREFIX = 256
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
_PARAMETERS = ("candidate_labels", "texts", "hypothesis_template", "return_embeddings", "fps", "num_frames")


class RequestError(ValueError):
    """A refused request; the message is returned to the client."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one request."""

    max_request_bytes: int = 64 * 2**20  # decoded video and frame bytes of one request
    max_video_bytes: int = 32 * 2**20  # one video file
    max_videos: int = 8
    max_frames: int = 256  # frames sampled from one video, or frames sent for one video
    max_frame_pixels: int = 4096 * 4096  # width * height of one frame sent as an image
    max_texts: int = 64
    max_text_chars: int = 1000
    max_template_chars: int = 200
    max_fps: float = 30.0
    decode_timeout: float = 120.0  # seconds per video
    batch_size: int = 4  # videos per forward pass

    @classmethod
    def from_env(cls, **overrides) -> "Limits":
        values = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(f"VIDEOFIRST_{field.name.upper()}")
            if raw is not None:
                values[field.name] = float(raw) if field.type in (float, "float") else int(raw)
        values.update(overrides)
        return cls(**values)


class EndpointHandler:
    def __init__(self, path: str = "", **limits):
        self.limits = Limits.from_env(**limits)
        folder = path or os.path.dirname(os.path.abspath(__file__))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
        self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
        text_config = getattr(self.model.config, "text_config", None)
        positions = getattr(text_config, "max_position_embeddings", None) or 512
        self.max_text_tokens = min(positions, self.processor.tokenizer.model_max_length)

    def __call__(self, data: Any) -> dict[str, Any]:
        try:
            return self._handle(data)
        except RequestError as error:
            return {"error": str(error)}
        except Exception as error:  # the client gets a short message, the server log the traceback
            logger.exception("VideoFirst endpoint: request failed")
            return {"error": f"internal error while processing the request ({type(error).__name__})"}

    # ----------------------------------------------------------------------------------------------------------
    # Request parsing
    # ----------------------------------------------------------------------------------------------------------

    def _handle(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise RequestError(f"the request must be a JSON object with 'inputs' and 'parameters', got {_kind(data)}")
        unknown = sorted(set(data) - {"inputs", "parameters"})
        if unknown:
            raise RequestError(f"unknown request fields {unknown}; expected 'inputs' and 'parameters'")
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError(f"'parameters' must be an object, got {_kind(parameters)}")
        unknown = sorted(set(parameters) - set(_PARAMETERS))
        if unknown:
            raise RequestError(f"unknown parameters {unknown}; allowed: {list(_PARAMETERS)}")

        texts = self._texts(parameters)
        template = parameters.get("hypothesis_template", "{}")
        if not isinstance(template, str) or "{}" not in template or len(template) > self.limits.max_template_chars:
            raise RequestError(
                f"'hypothesis_template' must be a string of at most {self.limits.max_template_chars} characters "
                "containing '{}'"
            )
        if _SURROGATE.search(template):
            raise RequestError("'hypothesis_template' contains an unpaired UTF-16 surrogate (invalid Unicode)")
        video_kwargs = self._sampling(parameters)
        videos = self._videos(data.get("inputs"))
        if not videos and texts is None:
            raise RequestError("nothing to do: send 'inputs' (one or more videos) and/or 'parameters.candidate_labels'")
        # Without texts to score (or videos to score them against) embeddings are the only useful answer.
        return_embeddings = parameters.get("return_embeddings", texts is None or not videos)
        if not isinstance(return_embeddings, bool):
            raise RequestError("'return_embeddings' must be true or false")

        text_embeds = self._embed_texts([template.replace("{}", text) for text in texts]) if texts else None
        video_embeds, frame_counts = self._embed_videos(videos, video_kwargs) if videos else (None, [])
        response: dict[str, Any] = {}
        if videos:
            results = [{"num_frames": count} for count in frame_counts]
            if text_embeds is not None:
                similarity, _, scores = self.model.score_candidates(video_embeds, text_embeds)
                for result, row, sims in zip(results, scores.tolist(), similarity.tolist()):
                    ranked = sorted(zip(texts, row, sims), key=lambda item: -item[1])
                    result["scores"] = [{"score": s, "label": t, "similarity": c} for t, s, c in ranked]
            if return_embeddings:
                for result, embedding in zip(results, video_embeds.tolist()):
                    result["embedding"] = embedding
            response["results"] = results
        if return_embeddings and text_embeds is not None:
            response["text_embeddings"] = text_embeds.tolist()
        return response

    def _texts(self, parameters: dict[str, Any]) -> list[str] | None:
        if "candidate_labels" in parameters and "texts" in parameters:
            raise RequestError("send either 'candidate_labels' or 'texts', not both")
        texts = parameters.get("candidate_labels", parameters.get("texts"))
        if texts is None:
            return None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise RequestError("'candidate_labels' must be a non-empty list of strings")
        if len(texts) > self.limits.max_texts:
            raise RequestError(f"too many texts: {len(texts)} (at most {self.limits.max_texts})")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise RequestError(f"candidate_labels[{index}] must be a non-empty string")
            if len(text) > self.limits.max_text_chars:
                raise RequestError(
                    f"candidate_labels[{index}] has {len(text)} characters (at most {self.limits.max_text_chars})"
                )
            if _SURROGATE.search(text):
                # Valid JSON ("\ud800") but not text: no tokenizer can encode it.
                raise RequestError(f"candidate_labels[{index}] contains an unpaired UTF-16 surrogate (invalid Unicode)")
        return texts

    def _sampling(self, parameters: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_frames": self.limits.max_frames, "decode_timeout": self.limits.decode_timeout}
        fps = parameters.get("fps")
        if fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= self.limits.max_fps:
                raise RequestError(f"'fps' must be a number in (0, {self.limits.max_fps}]")
            kwargs["fps"] = float(fps)
        num_frames = parameters.get("num_frames")
        if num_frames is not None:
            if isinstance(num_frames, bool) or not isinstance(num_frames, int):
                raise RequestError(f"'num_frames' must be an integer in [1, {self.limits.max_frames}]")
            if not 1 <= num_frames <= self.limits.max_frames:
                raise RequestError(f"'num_frames' must be an integer in [1, {self.limits.max_frames}]")
            kwargs["num_frames"] = num_frames
        default_frames = getattr(self.processor.video_processor, "num_frames", None)
        if num_frames is None and (default_frames is None or default_frames > self.limits.max_frames):
            kwargs["num_frames"] = self.limits.max_frames
        return kwargs

    def _videos(self, inputs: Any) -> list[Any]:
        if inputs is None:
            return []
        items = inputs if isinstance(inputs, list) else [inputs]
        if len(items) > self.limits.max_videos:
            raise RequestError(f"too many videos: {len(items)} (at most {self.limits.max_videos} per request)")
        budget = [self.limits.max_request_bytes]
        return [self._video(item, index, budget) for index, item in enumerate(items)]

    def _video(self, item: Any, index: int, budget: list[int]) -> Any:
        name = f"inputs[{index}]"
        if isinstance(item, (bytes, bytearray)):
            return self._charge(bytes(item), name, self.limits.max_video_bytes, budget)
        if isinstance(item, str):
            return self._decode_base64(item, name, self.limits.max_video_bytes, budget, "a video file")
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"frames"})
            if unknown or "frames" not in item:
                raise RequestError(f"{name} must be a base64 string or {{'frames': [...]}}; got fields {sorted(item)}")
            return self._frames(item["frames"], name, budget)
        raise RequestError(f"{name} must be a base64-encoded video (string) or {{'frames': [...]}}, got {_kind(item)}")

    def _frames(self, frames: Any, name: str, budget: list[int]) -> np.ndarray:
        if not isinstance(frames, list) or not frames:
            raise RequestError(f"{name}.frames must be a non-empty list of base64-encoded images")
        if len(frames) > self.limits.max_frames:
            raise RequestError(f"{name} has {len(frames)} frames (at most {self.limits.max_frames})")
        decoded = []
        for position, frame in enumerate(frames):
            label = f"{name}.frames[{position}]"
            if not isinstance(frame, str):
                raise RequestError(f"{label} must be a base64-encoded PNG or JPEG image, got {_kind(frame)}")
            data = self._decode_base64(frame, label, self.limits.max_video_bytes, budget, "an image")
            decoded.append(self._image(data, label))
        shapes = {frame.shape for frame in decoded}
        if len(shapes) > 1:
            raise RequestError(f"{name}: all frames must have the same size, got {sorted(shapes)}")
        return np.stack(decoded)

    def _image(self, data: bytes, label: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in _IMAGE_FORMATS:
                    raise RequestError(f"{label}: unsupported image format {image.format} (use PNG or JPEG)")
                width, height = image.size
                if width * height > self.limits.max_frame_pixels:
                    raise RequestError(
                        f"{label}: a {width}x{height} frame has more than {self.limits.max_frame_pixels} pixels"
                    )
                return np.asarray(image.convert("RGB"))
        except RequestError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError):
            raise RequestError(f"{label} is not a readable PNG or JPEG image") from None

    def _decode_base64(self, text: str, name: str, limit: int, budget: list[int], what: str) -> bytes:
        # Refuse oversized payloads before any regular expression reads them: base64 of `limit` bytes is
        # 4 * ceil(limit / 3) characters, plus some slack for line breaks and a data-URL prefix.
        if len(text) > (4 * -(-limit // 3)) * _BASE64_SLACK + _MAX_DATA_URL_PREFIX:
            raise RequestError(f"{name} is larger than {limit} bytes")
        if _URL.match(text[:_MAX_DATA_URL_PREFIX]):
            raise RequestError(f"{name} looks like a URL; URLs are never fetched, send {what} as base64 bytes")
        text = _DATA_URL.sub("", text[:_MAX_DATA_URL_PREFIX], count=1) + text[_MAX_DATA_URL_PREFIX:]
        text = _WHITESPACE.sub("", text)
        if not text:
            raise RequestError(f"{name} is empty")
        if len(text) // 4 * 3 > limit:
            raise RequestError(f"{name} is larger than {limit} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                f"{name} is not valid base64; send {what} base64-encoded (paths and URLs are never read)"
            ) from None
        return self._charge(data, name, limit, budget)

    @staticmethod
    def _charge(data: bytes, name: str, limit: int, budget: list[int]) -> bytes:
        if not data:
            raise RequestError(f"{name} is empty")
        if len(data) > limit:
            raise RequestError(f"{name} has {len(data)} bytes (at most {limit})")
        budget[0] -= len(data)
        if budget[0] < 0:
            raise RequestError("the request's videos and frames together are too large")
        return data

    # ----------------------------------------------------------------------------------------------------------
    # Model
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        encoded = self.processor(text=texts, max_length=self.max_text_tokens, return_tensors="pt")
        return self.model.get_text_features(
            input_ids=encoded["input_ids"].to(self.device), attention_mask=encoded["attention_mask"].to(self.device)
        ).pooler_output.float()

    @torch.no_grad()
    def _embed_videos(self, videos: list[Any], video_kwargs: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        # Decode one video at a time so that an error names the video; batch videos of equal length.
        processed = []
        for index, video in enumerate(videos):
            try:
                batch = self.processor.video_processor([video], return_tensors="pt", **video_kwargs)
            except (ValueError, TypeError, OSError) as error:
                raise RequestError(f"inputs[{index}]: {error}") from None
            processed.append((batch["pixel_values_videos"], batch["video_frame_mask"]))
        embeds: list[torch.Tensor | None] = [None] * len(videos)
        by_length: dict[int, list[int]] = {}
        for index, (pixels, _) in enumerate(processed):
            by_length.setdefault(pixels.shape[1], []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), self.limits.batch_size):
                chunk = indices[start : start + self.limits.batch_size]
                pixels = torch.cat([processed[i][0] for i in chunk]).to(self.device, self.model.dtype)
                mask = torch.cat([processed[i][1] for i in chunk]).to(self.device)
                output = self.model.get_video_features(pixel_values_videos=pixels, video_frame_mask=mask).pooler_output
                for position, i in enumerate(chunk):
                    embeds[i] = output[position].float()
        counts = [int(mask.sum()) for _, mask in processed]
        stacked = torch.stack(embeds)
        if not torch.isfinite(stacked).all():
            raise RuntimeError("non-finite video embedding")
        return stacked, counts


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
