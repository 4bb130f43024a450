"""Transformers pipelines for VideoFirst dual encoders: zero-shot video classification and text-to-video ranking.

Exported checkpoints ship this file as remote code and name both pipelines in their config's `custom_pipelines`,
so they load without `videofirst` installed:

```python
from transformers import pipeline

classifier = pipeline("zero-shot-video-classification", model="user/videofirst-model", trust_remote_code=True)
classifier("video.mp4", candidate_labels=["cooking", "cycling"], hypothesis_template="a video of {}.")
# [{'score': 0.93, 'label': 'cooking', 'similarity': 0.41}, {'score': 0.07, 'label': 'cycling', ...}]
classifier(["a.mp4", "b.mp4", "c.mp4"], candidate_labels=["cooking", "cycling"], batch_size=2)  # one list per video

ranker = pipeline("text-to-video-retrieval", model="user/videofirst-model", trust_remote_code=True)
ranker("someone slices onions", videos=["a.mp4", "b.mp4", "c.mp4"], top_k=2)
# [{'score': 0.81, 'video_index': 1, 'similarity': 0.42}, {'score': 0.12, 'video_index': 0, ...}]
```

Rows follow transformers' zero-shot classification pipelines (`score` and `label` first, highest score first);
`similarity` (the raw cosine similarity) follows. A video is anything `VideoFirstVideoProcessor` takes: a path, raw
bytes, a binary file object, or decoded frames (a `(T, H, W, C)` uint8 array or a `(T, C, H, W)` tensor). A list of
videos runs each one (`batch_size` videos per forward pass); a single video given as a Python list of frames must
therefore be wrapped once more (`[[frame, frame, ...]]`) or passed as an array. Frame sampling follows the processor
(`fps`, `num_frames`, `sampling`, `start`, `end` can be passed per call).

Scores come from `VideoFirstModel.score_candidates`, the rule the model was trained with: a softmax over the
candidates for the contrastive (InfoNCE) loss, an independent sigmoid per candidate for the sigmoid loss.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

__all__ = [
    "HUB_TASK",
    "RETRIEVAL_TASK",
    "ZERO_SHOT_TASK",
    "VideoFirstTextToVideoRetrievalPipeline",
    "VideoFirstZeroShotVideoClassificationPipeline",
    "custom_pipelines_config",
    "register_pipelines",
]

ZERO_SHOT_TASK = "zero-shot-video-classification"
RETRIEVAL_TASK = "text-to-video-retrieval"
# The Hub task id of exported model cards (`pipeline_tag`): a checkpoint maps it to the zero-shot classifier too, so
# `pipeline("video-classification", model=repo, trust_remote_code=True)` builds this pipeline rather than the
# built-in one, which cannot load a dual encoder. Only in a checkpoint's config: never registered process-wide.
HUB_TASK = "video-classification"
DEFAULT_HYPOTHESIS_TEMPLATE = "a video of {}."
# Keyword arguments forwarded to the video processor.
VIDEO_KWARGS = ("fps", "num_frames", "sampling", "start", "end", "offset", "seed")


def _labels(candidate_labels) -> list[str]:
    if isinstance(candidate_labels, str):
        candidate_labels = [candidate_labels]
    if not isinstance(candidate_labels, Sequence) or not candidate_labels:
        raise ValueError("`candidate_labels` must be a non-empty list of strings")
    if not all(isinstance(label, str) and label.strip() for label in candidate_labels):
        raise ValueError("every candidate label must be a non-empty string")
    return list(candidate_labels)


def _hypotheses(labels: list[str], template: str) -> list[str]:
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(f"`hypothesis_template` must be a string containing '{{}}', got {template!r}")
    # str.replace, not str.format: labels and templates may contain braces.
    return [template.replace("{}", label) for label in labels]


def _rows(key: str, values: list, scores: torch.Tensor, similarity: torch.Tensor, top_k: int | None) -> list[dict]:
    """Rows `{"score", key, "similarity"}` by decreasing score, as transformers' zero-shot pipelines order them."""
    rows = [
        {"score": score, key: value, "similarity": sim}
        for value, score, sim in zip(values, scores.tolist(), similarity.tolist())
    ]
    rows.sort(key=lambda row: -row["score"])
    return rows if top_k is None else rows[:top_k]


def _split_video_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: kwargs.pop(name) for name in VIDEO_KWARGS if name in kwargs}


class _VideoFirstPipeline(Pipeline):
    """Shared set-up: the processor carries both the video processor and the tokenizer."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"{type(self).__name__} needs the checkpoint's processor (`processor=`)")
        # With `batch_size > 1` the pipeline's collate function pads `input_ids` with the tokenizer's pad token and
        # the videos' frame axis (and `video_frame_mask`) with zeros, i.e. padded frames are masked out.
        self.tokenizer = self.processor.tokenizer
        self.model.eval()  # no dropout and no training-time token masking

    def _text_inputs(self, texts: list[str], tokenizer_kwargs: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        options: dict[str, Any] = {"return_tensors": "pt"}
        max_positions = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)
        if max_positions:
            options["max_length"] = min(max_positions, self.processor.tokenizer.model_max_length)
        options.update(tokenizer_kwargs or {})
        encoded = self.processor(text=texts, **options)  # the processor's defaults: padding and truncation
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _video_inputs(self, videos: list, video_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.processor.video_processor(videos, return_tensors="pt", **video_kwargs)
        return {
            "pixel_values_videos": batch["pixel_values_videos"].to(self.model.dtype),
            "video_frame_mask": batch["video_frame_mask"],
        }


class VideoFirstZeroShotVideoClassificationPipeline(_VideoFirstPipeline):
    """Scores one video (or each of a list of videos) against candidate labels.

    Call arguments: `candidate_labels` (list of str), `hypothesis_template` (default `"a video of {}."`; `{}` is
    replaced by each label), `top_k`, `tokenizer_kwargs`, `batch_size` (videos per forward pass), and the video
    sampling arguments (`fps`, `num_frames`, ...).

    Returns:
        For one video, a list of `{"score": float, "label": str, "similarity": float}` sorted by decreasing score
        (`score` as `VideoFirstModel.score_candidates` computes it, `similarity` the cosine similarity); for a list
        of videos, one such list per video.
    """

    def __call__(self, videos, candidate_labels=None, **kwargs):
        return super().__call__(videos, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, top_k=None, **kwargs):
        preprocess: dict[str, Any] = {"video_kwargs": _split_video_kwargs(kwargs)}
        if "tokenizer_kwargs" in kwargs:
            preprocess["tokenizer_kwargs"] = kwargs.pop("tokenizer_kwargs")
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(kwargs)}")
        if candidate_labels is not None:
            preprocess["candidate_labels"] = candidate_labels
        if hypothesis_template is not None:
            preprocess["hypothesis_template"] = hypothesis_template
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, {}, postprocess

    def preprocess(
        self,
        video,
        candidate_labels=None,
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        tokenizer_kwargs: dict[str, Any] | None = None,
        video_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        labels = _labels(candidate_labels)
        inputs: dict[str, Any] = self._video_inputs([video], video_kwargs or {})
        # Texts and labels stay out of the collated tensors: each video keeps its own (unpadded) label encodings.
        inputs["text_inputs"] = self._text_inputs(_hypotheses(labels, hypothesis_template), tokenizer_kwargs)
        inputs["candidate_labels"] = labels
        return inputs

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        labels, texts = model_inputs.pop("candidate_labels"), model_inputs.pop("text_inputs")
        batched = isinstance(texts, list)  # collated by `batch_size > 1`: one entry per video
        if not batched:
            labels, texts = [labels], [texts]
        video_embeds = self.model.get_video_features(**model_inputs).pooler_output
        text_embeds: dict[tuple, torch.Tensor] = {}  # the labels of one call are encoded once per batch
        scores, similarities = [], []
        for index, text in enumerate(texts):
            key = tuple(map(tuple, text["input_ids"].tolist()))
            if key not in text_embeds:
                text_embeds[key] = self.model.get_text_features(**text).pooler_output
            similarity, _, probabilities = self.model.score_candidates(
                video_embeds[index : index + 1], text_embeds[key]
            )
            scores.append(probabilities)
            similarities.append(similarity)
        # `scores` first: the pipeline's un-batching reads the batch size from the first entry.
        return {
            "scores": torch.cat(scores),
            "similarity": torch.cat(similarities),
            "candidate_labels": labels if batched else labels[0],
        }

    def postprocess(self, model_outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        return _rows(
            "label",
            model_outputs["candidate_labels"],
            model_outputs["scores"][0],
            model_outputs["similarity"][0],
            top_k,
        )


class VideoFirstTextToVideoRetrievalPipeline(_VideoFirstPipeline):
    """Ranks a set of videos for one text query (or for each of a list of queries).

    Call arguments: `videos` (the videos to rank; embedded once per call, `video_batch_size` at a time), `top_k`,
    `tokenizer_kwargs`, `batch_size` (queries per forward pass), and the video sampling arguments.

    Returns:
        For one query, a list of `{"score": float, "video_index": int, "similarity": float}`, one row per video
        sorted by decreasing score: `video_index` is the video's position in `videos`, `score` is computed by
        `VideoFirstModel.score_candidates` (a softmax over the videos given for a contrastive model, so it depends
        on which videos are ranked together; a sigmoid per video for a sigmoid-loss model), `similarity` is the
        cosine similarity. For a list of queries, one such list per query.
    """

    def __call__(self, text, videos=None, **kwargs):
        if videos is None:
            raise ValueError("`videos` (the videos to rank) is required")
        if isinstance(videos, (str, bytes, bytearray, np.ndarray, torch.Tensor)) or hasattr(videos, "read"):
            videos = [videos]
        video_kwargs = _split_video_kwargs(kwargs)
        batch_size = kwargs.pop("video_batch_size", 4)
        video_embeds = self.embed_videos(list(videos), batch_size=batch_size, **video_kwargs)
        return super().__call__(text, video_embeds=video_embeds, **kwargs)

    def embed_videos(self, videos: list, batch_size: int = 4, **video_kwargs) -> torch.Tensor:
        """L2-normalised embeddings `(len(videos), projection_dim)` of `videos`."""
        if not videos:
            raise ValueError("`videos` is empty")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`video_batch_size` must be a positive integer, got {batch_size!r}")
        embeds = []
        with torch.no_grad():
            for start in range(0, len(videos), batch_size):
                inputs = self._ensure_tensor_on_device(
                    self._video_inputs(videos[start : start + batch_size], video_kwargs), self.device
                )
                embeds.append(self.model.get_video_features(**inputs).pooler_output)
        return torch.cat(embeds)

    def _sanitize_parameters(self, video_embeds=None, top_k=None, tokenizer_kwargs=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(kwargs)}")
        preprocess = {"tokenizer_kwargs": tokenizer_kwargs} if tokenizer_kwargs is not None else {}
        forward = {"video_embeds": video_embeds} if video_embeds is not None else {}
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, forward, postprocess

    def preprocess(self, text, tokenizer_kwargs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a query must be a non-empty string, got {text!r}")
        return self._text_inputs([text], tokenizer_kwargs)

    def _forward(self, model_inputs: dict[str, torch.Tensor], video_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        text_embeds = self.model.get_text_features(**model_inputs).pooler_output
        similarity, _, probabilities = self.model.score_candidates(text_embeds, video_embeds)
        return {"scores": probabilities, "similarity": similarity}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], top_k: int | None = None) -> list[dict[str, Any]]:
        scores = model_outputs["scores"][0]
        return _rows("video_index", list(range(len(scores))), scores, model_outputs["similarity"][0], top_k)


def custom_pipelines_config() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry of an exported config.json: how `pipeline(task, model=repo)` finds the classes."""
    return {
        task: {"impl": f"{__name__.rsplit('.', 1)[-1]}.{cls.__name__}", "pt": ["AutoModel"], "type": "multimodal"}
        for task, cls in (
            (ZERO_SHOT_TASK, VideoFirstZeroShotVideoClassificationPipeline),
            (HUB_TASK, VideoFirstZeroShotVideoClassificationPipeline),
            (RETRIEVAL_TASK, VideoFirstTextToVideoRetrievalPipeline),
        )
    }


def register_pipelines() -> None:
    """Register both tasks with transformers, so `pipeline(task, model=<in-memory model>, processor=...)` works."""
    for task, cls in (
        (ZERO_SHOT_TASK, VideoFirstZeroShotVideoClassificationPipeline),
        (RETRIEVAL_TASK, VideoFirstTextToVideoRetrievalPipeline),
    ):
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not cls:  # idempotent, no overwrite warning
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=cls, pt_model=AutoModel, type="multimodal")
