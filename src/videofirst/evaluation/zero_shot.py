"""Zero-shot evaluation: ranking metrics, embedding helpers, and the segment-aggregation baseline.

Three layers, so the evaluation script, the training loop's eval hook, the benchmarks and the `evaluate` modules
in `videofirst/metrics/` share one implementation:

* **Metrics** on score matrices (no model involved): `retrieval_metrics`, `multiple_choice_metrics`,
  `classification_metrics`. They accept tensors, numpy arrays or nested lists.
* **Embedding and scoring** with a model: `embed_videos`, `embed_texts`, `embed_videos_by_segments`,
  `embed_class_prompts`, `embed_answer_options`, and the one-call `evaluate_retrieval`,
  `evaluate_multiple_choice`, `evaluate_classification`. Everything runs in eval mode under
  `torch.no_grad`, batched, on the model's device; the model's train/eval state is restored afterwards.
  Embeddings come back as float32 CPU tensors.
* **Evaluation sets from files** (what `training/evaluate.py` runs): `load_retrieval_manifest`,
  `load_multiple_choice_manifest`, `load_classification_manifest` parse JSONL / CSV manifests into unique
  `VideoClip`s plus texts, questions or labels; `embed_video_clips` decodes and embeds the clips, optionally
  through an on-disk `EmbeddingCache` keyed by `checkpoint_fingerprint`, the video file and the sampling settings.
  **A video that fails to decode is reported and excluded**: it gets no embedding (nothing shifts onto the next
  video), it is no distractor, and the captions / questions / samples that refer to it are dropped from the
  metrics (`ClipEmbeddings.rows_of`), so every remaining item is still paired with its own video.

Rank conventions (shared by every metric):

* **Ties are pessimistic.** The rank of the correct item is 1 + the number of *incorrect* items that score
  **at least as high** as it. A model that scores everything equally therefore gets the worst rank, never a
  lucky first place, and a correct multiple-choice answer tied with a wrong one counts as a miss.
* **Several relevant items** (video-to-text with several captions per video): the rank is that of the
  best-scoring relevant item, counting only irrelevant items ahead of it (other captions of the same video
  never push it down). Videos without any caption are left out of the video-to-text metrics.
* **Median rank** is numpy's median of the 1-based ranks: the mean of the two middle ranks for an even
  count (so it can end in .5), as in the retrieval literature (CLIP4Clip, Frozen in Time).
* Recall@K and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch.utils.data
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from videofirst.modeling.video_processing_videofirst import pad_video_batch, resolve_sampling

if TYPE_CHECKING:
    from videofirst.modeling.modeling_videofirst import VideoFirstModel

__all__ = [
    "DEFAULT_CLASS_TEMPLATES",
    "DEFAULT_QA_TEMPLATE",
    "ClassificationSet",
    "ClipEmbeddings",
    "EmbeddingCache",
    "MultipleChoiceSet",
    "RetrievalSet",
    "VideoClip",
    "checkpoint_fingerprint",
    "classification_metrics",
    "embed_answer_options",
    "embed_class_prompts",
    "embed_texts",
    "embed_video_clips",
    "embed_videos",
    "embed_videos_by_segments",
    "evaluate_classification",
    "evaluate_multiple_choice",
    "evaluate_retrieval",
    "evaluation_mode",
    "first_relevant_ranks",
    "flatten_captions",
    "load_classification_manifest",
    "load_multiple_choice_manifest",
    "load_retrieval_manifest",
    "multiple_choice_metrics",
    "rank_metrics",
    "read_manifest_rows",
    "retrieval_metrics",
]

logger = logging.getLogger(__name__)

#: Prompt ensemble for zero-shot classification; `{}` is replaced by the class name.
DEFAULT_CLASS_TEMPLATES: tuple[str, ...] = ("a video of {}.", "a video of a person {}.", "{}")
#: How a multiple-choice question and one candidate answer become one text (EgoSchema style).
DEFAULT_QA_TEMPLATE = "{question} {answer}"

# Rows of a score matrix scored per chunk, so the boolean work matrices stay ~16M entries.
_CHUNK_ENTRIES = 1 << 24

ArrayLike = Any  # torch.Tensor, numpy array or (nested) list


# --------------------------------------------------------------------------------------------------------------
# Metrics on score matrices
# --------------------------------------------------------------------------------------------------------------


def _as_scores(scores: ArrayLike, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(scores)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise ValueError(f"`{name}` must be a rectangular (rows, columns) matrix of scores: {error}") from error
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty 2D (rows, columns) matrix, got shape {tuple(tensor.shape)}.")
    if torch.isnan(tensor).any():
        raise ValueError(f"`{name}` contains NaN scores; ranks would be undefined.")
    return tensor


def _as_indices(indices: ArrayLike, length: int, upper: int, name: str, of: str) -> torch.Tensor:
    tensor = torch.as_tensor(indices)
    if tensor.is_floating_point() or tensor.ndim != 1 or tensor.shape[0] != length:
        raise ValueError(f"`{name}` must be {length} integer indices (one per {of}), got {tuple(tensor.shape)}.")
    tensor = tensor.long()
    if length and (tensor.min() < 0 or tensor.max() >= upper):
        raise ValueError(f"`{name}` must lie in [0, {upper}), got values in [{tensor.min()}, {tensor.max()}].")
    return tensor


def first_relevant_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scoring relevant column of every row, ties pessimistic.

    `rank = 1 + #(irrelevant columns scoring >= the best relevant score)`. Rows without a relevant column get
    `num_columns + 1`; callers drop them.
    """
    best = scores.masked_fill(~relevant, -math.inf).amax(dim=1, keepdim=True)
    ahead = (scores >= best) & ~relevant
    return ahead.sum(dim=1) + 1


def _target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pessimistic rank of one target column per row, computed in row chunks."""
    num_rows, num_columns = scores.shape
    step = max(1, _CHUNK_ENTRIES // num_columns)
    targets = targets.to(scores.device)
    columns = torch.arange(num_columns, device=scores.device)
    ranks = [
        first_relevant_ranks(scores[start : start + step], columns == targets[start : start + step, None])
        for start in range(0, num_rows, step)
    ]
    return torch.cat(ranks)


def rank_metrics(ranks: ArrayLike, recall_at: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """Recall@K (fraction of ranks <= K), median rank and mean rank of 1-based ranks."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64).flatten()
    if ranks.numel() == 0:
        raise ValueError("No ranks to summarise.")
    metrics = {f"{prefix}recall@{k}": (ranks <= k).double().mean().item() for k in recall_at}
    ordered = ranks.sort().values
    middle = (ordered.numel() - 1) // 2, ordered.numel() // 2  # numpy's median: mean of the two middles
    metrics[f"{prefix}median_rank"] = ((ordered[middle[0]] + ordered[middle[1]]) / 2).item()
    metrics[f"{prefix}mean_rank"] = ranks.mean().item()
    return metrics


def retrieval_metrics(
    similarity: ArrayLike, video_ids_of_texts: ArrayLike, recall_at: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval metrics from a text x video similarity matrix.

    Args:
        similarity: `(num_texts, num_videos)` scores; row i scores caption i against every video.
        video_ids_of_texts: `(num_texts,)` index of the video each caption describes. A video may have several
            captions (text-to-video ranks each caption; video-to-text ranks the video's best caption).
        recall_at: the K of Recall@K.

    Returns:
        `t2v_recall@K`, `t2v_median_rank`, `t2v_mean_rank` and the same with `v2t_`; ties are pessimistic (see
        the module docstring). Videos with no caption are distractors for text-to-video and are left out of
        video-to-text.
    """
    similarity = _as_scores(similarity, "similarity")
    num_texts, num_videos = similarity.shape
    video_ids = _as_indices(video_ids_of_texts, num_texts, num_videos, "video_ids_of_texts", "text")
    metrics = rank_metrics(_target_ranks(similarity, video_ids), recall_at, prefix="t2v_")

    per_video = similarity.t()
    video_ids = video_ids.to(per_video.device)
    captioned = torch.zeros(num_videos, dtype=torch.bool, device=per_video.device)
    captioned[video_ids] = True
    step = max(1, _CHUNK_ENTRIES // num_texts)
    v2t_ranks = []
    for start in range(0, num_videos, step):
        rows = torch.arange(start, min(start + step, num_videos), device=per_video.device)
        ranks = first_relevant_ranks(per_video[rows], video_ids[None, :] == rows[:, None])
        v2t_ranks.append(ranks[captioned[rows]])
    metrics.update(rank_metrics(torch.cat(v2t_ranks), recall_at, prefix="v2t_"))
    return metrics


def multiple_choice_metrics(scores: ArrayLike, answers: ArrayLike) -> dict[str, float]:
    """Accuracy of picking the highest-scoring option.

    Args:
        scores: `(num_questions, num_options)` score of every candidate answer (e.g. video-text similarity).
        answers: `(num_questions,)` index of the correct option.

    A question counts as correct only if its correct option scores strictly higher than every other option
    (pessimistic ties, as in the ranks).
    """
    scores = _as_scores(scores, "scores")
    answers = _as_indices(answers, scores.shape[0], scores.shape[1], "answers", "question")
    return {"accuracy": (_target_ranks(scores, answers) == 1).double().mean().item()}


def classification_metrics(scores: ArrayLike, labels: ArrayLike, top_k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy: `top{K}_accuracy` is the fraction of samples whose label ranks within the first K.

    Args:
        scores: `(num_samples, num_classes)` score of every class (e.g. similarity to the class prompt embedding).
        labels: `(num_samples,)` index of the true class.
        top_k: the K to report. A K of at least the number of classes is trivially 1.0.

    Ties are pessimistic: a label tied with a wrong class ranks behind it.
    """
    scores = _as_scores(scores, "scores")
    labels = _as_indices(labels, scores.shape[0], scores.shape[1], "labels", "sample")
    ranks = _target_ranks(scores, labels)
    return {f"top{k}_accuracy": (ranks <= k).double().mean().item() for k in top_k}


# --------------------------------------------------------------------------------------------------------------
# Embedding with a model
# --------------------------------------------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> VideoFirstModel:
    """The bare model under DistributedDataParallel / accelerate (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _device_of(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no default token masking) and no autograd; restores the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _video_inputs(batch: Mapping[str, torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if "pixel_values_videos" not in batch:
        raise KeyError(f"A video batch needs `pixel_values_videos`; got keys {sorted(batch)}.")
    return batch["pixel_values_videos"], batch.get("video_frame_mask")


def embed_videos(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    *,
    segment_frames: int | None = None,
    segment_batch_size: int | None = None,
    mask_ratio: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """L2-normalised embeddings `(num_videos, projection_dim)` (float32, CPU) of all videos in `batches`.

    Args:
        model: a `VideoFirstModel` (possibly wrapped by DDP / accelerate / torch.compile).
        batches: an iterable of `(B, T, C, H, W)` tensors or of mappings with `pixel_values_videos` and an
            optional `video_frame_mask` (other keys, e.g. `input_ids`, are ignored), such as a DataLoader.
        segment_frames: if set, use the segment-aggregation baseline (`embed_videos_by_segments`) instead of
            encoding each video whole.
        segment_batch_size: segments per forward pass in segment mode (default: all of a batch at once).
        mask_ratio: token drop ratio at inference (default: the model's eval default, 0).
        device: where to run (default: the model's device).
    """
    inner = _unwrap(model)
    device = _device_of(inner, device)
    embeddings = []
    with evaluation_mode(inner):
        for batch in batches:
            pixel_values_videos, video_frame_mask = _video_inputs(batch)
            if segment_frames is not None:
                embeds = embed_videos_by_segments(
                    inner,
                    pixel_values_videos,
                    video_frame_mask,
                    segment_frames,
                    batch_size=segment_batch_size,
                    mask_ratio=mask_ratio,
                    device=device,
                )
            else:
                if video_frame_mask is not None and bool(video_frame_mask.all()):
                    video_frame_mask = None  # nothing padded: same result, and fine for models that take no mask
                embeds = inner.get_video_features(
                    pixel_values_videos=pixel_values_videos.to(device),
                    video_frame_mask=None if video_frame_mask is None else video_frame_mask.to(device),
                    mask_ratio=mask_ratio,
                ).pooler_output
            embeddings.append(embeds.float().cpu())
    if not embeddings:
        raise ValueError("`batches` yielded no videos.")
    return torch.cat(embeddings)


def embed_videos_by_segments(
    model: torch.nn.Module,
    pixel_values_videos: torch.Tensor,
    video_frame_mask: torch.Tensor | None = None,
    segment_frames: int = 16,
    *,
    batch_size: int | None = None,
    mask_ratio: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Segment-aggregation baseline: embed consecutive `segment_frames`-frame segments, average, re-normalise.

    This is the paradigm the paper argues against (short-clip encoders whose segment embeddings are pooled
    afterwards), available for any checkpoint. For each video:

    * its real frames (where `video_frame_mask` is 1; all frames without a mask) are taken in order and cut
      into consecutive segments of `segment_frames`;
    * the last segment may be partial: it is zero-padded to `segment_frames` with those frames masked out, so
      it keeps the temporal positions of a full segment and the model drops its empty tubelets. Models that
      take no frame mask (TubeViT kernels, whose tubes could straddle real and padded frames) get the tail
      padded by repeating its last real frame instead;
    * segment embeddings (each L2-normalised) are averaged **weighted by their number of real frames**, so a
      short tail counts in proportion to the footage it covers (with only full segments this is the plain
      mean), and the average is L2-normalised again.

    A video shorter than `segment_frames` is a single padded segment. `segment_frames` must be a multiple of
    the tubelet length (for tubelet models).

    Returns:
        `(batch, projection_dim)` float32 embeddings on the CPU.
    """
    inner = _unwrap(model)
    device = _device_of(inner, device)
    vision_config = inner.config.vision_config
    can_mask_frames = getattr(vision_config, "tubevit_kernels", None) is None
    tubelet_frames = vision_config.tubelet_size[0] if can_mask_frames else 1
    if segment_frames <= 0 or segment_frames % tubelet_frames != 0:
        raise ValueError(
            f"`segment_frames` must be a positive multiple of the tubelet length {tubelet_frames}, "
            f"got {segment_frames}."
        )
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    if pixel_values_videos.ndim != 5:
        raise ValueError(
            f"`pixel_values_videos` must be (batch, frames, C, H, W), got {tuple(pixel_values_videos.shape)}."
        )
    num_videos, num_frames = pixel_values_videos.shape[:2]
    if video_frame_mask is None:
        frame_valid = torch.ones(num_videos, num_frames, dtype=torch.bool, device=pixel_values_videos.device)
    elif tuple(video_frame_mask.shape) != (num_videos, num_frames):
        raise ValueError(
            f"`video_frame_mask` must have shape {(num_videos, num_frames)}, got {tuple(video_frame_mask.shape)}."
        )
    else:
        frame_valid = video_frame_mask.to(pixel_values_videos.device).bool()

    segments: list[torch.Tensor] = []
    lengths: list[int] = []
    owners: list[int] = []
    for video, valid in enumerate(frame_valid):
        frames = pixel_values_videos[video][valid]
        if frames.shape[0] == 0:
            raise ValueError(f"Video {video} of the batch has no real frame in `video_frame_mask`.")
        for start in range(0, frames.shape[0], segment_frames):
            segment = frames[start : start + segment_frames]
            lengths.append(segment.shape[0])
            owners.append(video)
            missing = segment_frames - segment.shape[0]
            if missing and can_mask_frames:
                segment = F.pad(segment, (0, 0, 0, 0, 0, 0, 0, missing))
            elif missing:
                segment = torch.cat([segment, segment[-1:].expand(missing, -1, -1, -1)])
            segments.append(segment)

    lengths_tensor = torch.tensor(lengths)
    segment_valid = torch.arange(segment_frames)[None, :] < lengths_tensor[:, None]
    step = batch_size or len(segments)
    embeddings = []
    with evaluation_mode(inner):
        for start in range(0, len(segments), step):
            chunk = torch.stack(segments[start : start + step]).to(device)
            chunk_valid = segment_valid[start : start + step]
            embeddings.append(
                inner.get_video_features(
                    pixel_values_videos=chunk,
                    # Full segments need no mask; passing none keeps the model on its unmasked fast path.
                    video_frame_mask=None if chunk_valid.all() or not can_mask_frames else chunk_valid.to(device),
                    mask_ratio=mask_ratio,
                )
                .pooler_output.float()
                .cpu()
            )
    weighted = torch.cat(embeddings) * lengths_tensor[:, None].float()
    pooled = torch.zeros(num_videos, weighted.shape[1]).index_add_(0, torch.tensor(owners), weighted)
    return F.normalize(pooled, dim=-1)


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings `(len(texts), projection_dim)` (float32, CPU).

    `tokenizer` is any callable taking `text=` that returns `input_ids` and `attention_mask` (a transformers
    tokenizer, or a processor that forwards text to one). Texts are truncated to `max_length` tokens, by
    default the text encoder's `max_position_embeddings`.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, not a single string.")
    if batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    texts = list(texts)
    if not texts:
        raise ValueError("`texts` is empty.")
    inner = _unwrap(model)
    device = _device_of(inner, device)
    if max_length is None:
        max_length = getattr(inner.config.text_config, "max_position_embeddings", None)
    embeddings = []
    with evaluation_mode(inner):
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                text=texts[start : start + batch_size],
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
            )
            embeds = inner.get_text_features(
                input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device)
            ).pooler_output
            embeddings.append(embeds.float().cpu())
    return torch.cat(embeddings)


def embed_class_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """One embedding per class `(num_classes, projection_dim)`: the re-normalised mean of its prompt embeddings.

    Each template has a `{}` for the class name (CLIP's prompt ensembling). `kwargs` go to `embed_texts`.
    """
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"`templates` must be non-empty and each contain '{{}}', got {list(templates)}.")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeds = embed_texts(model, tokenizer, prompts, batch_size, **kwargs)
    return F.normalize(embeds.reshape(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


def embed_answer_options(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    template: str = DEFAULT_QA_TEMPLATE,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """Embeddings `(num_questions, num_options, projection_dim)` of every question joined with each answer.

    `template` has `{question}` and `{answer}` fields; every question must have the same number of options
    (EgoSchema: five). `kwargs` go to `embed_texts`.
    """
    if len(questions) != len(options):
        raise ValueError(f"Got {len(questions)} questions but {len(options)} option lists.")
    num_options = {len(choices) for choices in options}
    if len(num_options) != 1 or 0 in num_options:
        raise ValueError(f"Every question needs the same, non-zero number of options; got counts {num_options}.")
    texts = [
        template.format(question=question, answer=answer)
        for question, choices in zip(questions, options, strict=True)
        for answer in choices
    ]
    embeds = embed_texts(model, tokenizer, texts, batch_size, **kwargs)
    return embeds.reshape(len(questions), num_options.pop(), -1)


# --------------------------------------------------------------------------------------------------------------
# One-call evaluations (embed, score, summarise)
# --------------------------------------------------------------------------------------------------------------


def flatten_captions(captions_per_video: Sequence[Sequence[str] | str]) -> tuple[list[str], list[int]]:
    """`[[c0, c1], [c2]]` to `([c0, c1, c2], [0, 0, 1])`: the caption list and `video_ids_of_texts`."""
    texts: list[str] = []
    video_ids: list[int] = []
    for video, captions in enumerate(captions_per_video):
        captions = [captions] if isinstance(captions, str) else list(captions)
        texts.extend(captions)
        video_ids.extend([video] * len(captions))
    return texts, video_ids


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    texts: Sequence[str],
    video_ids_of_texts: Sequence[int],
    *,
    recall_at: Sequence[int] = (1, 5, 10),
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot retrieval: embed the videos (whole, or by segments) and captions, return `retrieval_metrics`.

    `video_batches` must yield the videos in the order `video_ids_of_texts` refers to (use `flatten_captions`
    for several captions per video). `video_kwargs` go to `embed_videos`.
    """
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    text_embeds = embed_texts(model, tokenizer, texts, text_batch_size)
    return retrieval_metrics(text_embeds @ video_embeds.t(), video_ids_of_texts, recall_at)


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    answers: Sequence[int],
    *,
    template: str = DEFAULT_QA_TEMPLATE,
    video_ids_of_questions: Sequence[int] | None = None,
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot multiple-choice QA (EgoSchema): each option is scored by the similarity of its video to the
    text `template.format(question=..., answer=...)`; returns `multiple_choice_metrics`.

    Videos are question-aligned by default; pass `video_ids_of_questions` when several questions share a video.
    """
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    if video_ids_of_questions is not None:
        video_embeds = video_embeds[torch.as_tensor(video_ids_of_questions, dtype=torch.long)]
    if video_embeds.shape[0] != len(questions):
        raise ValueError(f"Got {video_embeds.shape[0]} videos for {len(questions)} questions.")
    option_embeds = embed_answer_options(model, tokenizer, questions, options, template, text_batch_size)
    scores = torch.einsum("qd,qod->qo", video_embeds, option_embeds)
    return multiple_choice_metrics(scores, answers)


def evaluate_classification(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
    top_k: Sequence[int] = (1, 5),
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot classification with prompt templates: score videos against class prompt embeddings and return
    `classification_metrics` (top-K accuracy)."""
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    class_embeds = embed_class_prompts(model, tokenizer, class_names, templates, text_batch_size)
    return classification_metrics(video_embeds @ class_embeds.t(), labels, top_k)


# --------------------------------------------------------------------------------------------------------------
# Evaluation sets from manifests: parsing, decoding with failure reports, and an on-disk embedding cache
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoClip:
    """One video of an evaluation set: a file and an optional `[start, end)` window in seconds."""

    path: str
    start: float | None = None
    end: float | None = None


@dataclass
class RetrievalSet:
    """Unique clips and their captions; `video_ids_of_texts[i]` is the clip that caption `i` describes."""

    clips: list[VideoClip]
    texts: list[str]
    video_ids_of_texts: list[int]


@dataclass
class MultipleChoiceSet:
    """EgoSchema-style questions; several questions may share a clip (`video_ids_of_questions`)."""

    clips: list[VideoClip]
    questions: list[str]
    options: list[list[str]]
    answers: list[int]
    video_ids_of_questions: list[int]


@dataclass
class ClassificationSet:
    """Labelled samples; `labels[i]` indexes `class_names`, `video_ids_of_samples[i]` indexes `clips`."""

    clips: list[VideoClip]
    labels: list[int]
    class_names: list[str]
    video_ids_of_samples: list[int]


@dataclass
class ClipEmbeddings:
    """Embeddings of the clips that decoded, and why the others did not.

    `embeddings[k]` belongs to clip `indices[k]` (ascending); `failures` maps a clip index to its error message.
    """

    embeddings: torch.Tensor
    indices: list[int]
    failures: dict[int, str]
    cache_hits: int = 0

    def rows_of(self, clip_ids: Sequence[int]) -> tuple[torch.Tensor, list[bool]]:
        """Embeddings for a per-item list of clip ids (e.g. `video_ids_of_texts`), restricted to decoded clips,
        and the per-item keep mask: items whose clip failed are dropped, never paired with another clip."""
        row = {clip: position for position, clip in enumerate(self.indices)}
        keep = [clip in row for clip in clip_ids]
        rows = torch.tensor([row[clip] for clip in clip_ids if clip in row], dtype=torch.long)
        return self.embeddings[rows], keep


def read_manifest_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV manifest as dicts, with `video` resolved against the manifest's folder.

    CSV cells that hold JSON lists (`["a", "b"]`) are decoded, and empty `start` / `end` cells become None.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows: list[dict[str, Any]] = [dict(row) for row in csv.DictReader(handle)]
        for row in rows:
            for key, value in row.items():
                if isinstance(value, str) and value.startswith("["):
                    with contextlib.suppress(json.JSONDecodeError):
                        row[key] = json.loads(value)
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    if not rows:
        raise ValueError(f"Manifest {path} has no rows.")
    root = path.parent.resolve()
    for number, row in enumerate(rows, start=1):
        video = row.get("video")
        if not isinstance(video, str) or not video:
            raise ValueError(f"Row {number} of {path} needs a `video` path; got columns {sorted(row)}.")
        row["video"] = str(Path(video) if Path(video).is_absolute() else root / video)
        for key in ("start", "end"):
            value = row.get(key)
            row[key] = None if value in (None, "") else float(value)
    return rows


def _clip_ids(rows: Sequence[Mapping[str, Any]]) -> tuple[list[VideoClip], list[int]]:
    """Unique clips in first-seen order (rows with the same video and window are one clip), and each row's clip."""
    index: dict[VideoClip, int] = {}
    ids = [index.setdefault(VideoClip(row["video"], row["start"], row["end"]), len(index)) for row in rows]
    return list(index), ids


def load_retrieval_manifest(path: str | Path) -> RetrievalSet:
    """A video-text manifest (`video`, `caption` or `text`: a string or a list of strings, optional `start`/`end`).

    Rows with the same video (and window) are one video with several captions.
    """
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    texts: list[str] = []
    video_ids: list[int] = []
    for number, (row, clip) in enumerate(zip(rows, ids, strict=True), start=1):
        captions = row.get("caption", row.get("text"))
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
            raise ValueError(f"Row {number} of {path} needs a non-empty `caption` (or `text`) string or list.")
        texts.extend(captions)
        video_ids.extend([clip] * len(captions))
    return RetrievalSet(clips, texts, video_ids)


def _options_of(row: Mapping[str, Any]) -> list[str] | None:
    if "options" in row:
        return row["options"]
    # EgoSchema's own files name the candidates `option 0` ... `option 4`.
    numbered = sorted((int(match.group(1)), key) for key in row if (match := re.fullmatch(r"option[ _]?(\d+)", key)))
    return [row[key] for _, key in numbered] or None


def load_multiple_choice_manifest(path: str | Path) -> MultipleChoiceSet:
    """An EgoSchema-format manifest: `video`, `question`, `options` (a list, or `option 0` ... columns) and
    `answer` (the 0-based index of the correct option). Every question needs the same number of options."""
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    questions, options, answers = [], [], []
    for number, row in enumerate(rows, start=1):
        question, choices, answer = row.get("question"), _options_of(row), row.get("answer")
        if not isinstance(question, str):
            raise ValueError(f"Row {number} of {path} needs a `question` string.")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"Row {number} of {path} needs `options`: a list of at least two strings.")
        try:
            answer = int(answer)
        except (TypeError, ValueError):
            raise ValueError(f"Row {number} of {path} needs an integer `answer`, got {answer!r}.") from None
        if not 0 <= answer < len(choices):
            raise ValueError(f"Row {number} of {path}: `answer` {answer} is not an index into its options.")
        questions.append(question)
        options.append(choices)
        answers.append(answer)
    if len({len(choices) for choices in options}) != 1:
        raise ValueError(f"Every question of {path} needs the same number of options.")
    return MultipleChoiceSet(clips, questions, options, answers, ids)


def load_classification_manifest(path: str | Path, class_names: Sequence[str] | None = None) -> ClassificationSet:
    """A `video`, `label` manifest. A label is a class name, or (with `class_names`) a 0-based class index.

    Without `class_names` the classes are the sorted distinct label strings of the manifest.
    """
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    raw = [row.get("label") for row in rows]
    if any(label is None or label == "" for label in raw):
        raise ValueError(f"Every row of {path} needs a `label`.")
    if class_names is None:
        if any(not isinstance(label, str) for label in raw):
            raise ValueError(f"{path} has integer labels; pass the class names (e.g. --class-names FILE).")
        class_names = sorted(set(raw))
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError("Class names must be unique.")
    by_name = {name: index for index, name in enumerate(class_names)}
    labels = []
    for number, label in enumerate(raw, start=1):
        if isinstance(label, str) and label in by_name:
            labels.append(by_name[label])
        elif isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            if not 0 <= int(label) < len(class_names):
                raise ValueError(f"Row {number} of {path}: label {label} is not an index into the class names.")
            labels.append(int(label))
        else:
            raise ValueError(f"Row {number} of {path}: label {label!r} is not one of the class names.")
    return ClassificationSet(clips, labels, class_names, ids)


def checkpoint_fingerprint(checkpoint: str | Path, revision: str | None = None) -> str:
    """A string that changes whenever a checkpoint's weights, config or model code change.

    For a local folder: its resolved path and the size and modification time of its config, weight and code
    files. For a Hub id: the same over the cached snapshot folder, whose name is the commit hash.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        from transformers.utils import cached_file

        folder = Path(cached_file(str(checkpoint), "config.json", revision=revision)).parent
    files = sorted(
        path
        for pattern in ("config.json", "*.safetensors", "*.bin", "*.index.json", "*.py")
        for path in folder.glob(pattern)
    )
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()


class EmbeddingCache:
    """Video embeddings saved on disk, keyed by checkpoint + video file + sampling settings.

    One safetensors file per (checkpoint fingerprint, settings) pair in `directory`; inside it, one tensor per
    clip, named by a hash of the clip's resolved path, size, modification time and window. A changed file or
    checkpoint therefore misses the cache instead of returning stale embeddings. Failed clips are not cached
    (they are retried next time). Writes are atomic (temporary file + rename).
    """

    def __init__(self, directory: str | Path, checkpoint: str, settings: Mapping[str, Any]):
        self.directory = Path(directory)
        self.settings = json.dumps({"checkpoint": checkpoint, "settings": dict(settings)}, sort_keys=True, default=str)
        self.path = self.directory / f"{hashlib.sha256(self.settings.encode()).hexdigest()[:32]}.safetensors"
        self._entries: dict[str, torch.Tensor] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                self._entries = load_file(str(self.path))
            except Exception as error:  # a truncated or foreign file must not stop an evaluation
                logger.warning("Ignoring unreadable embedding cache %s: %s", self.path, error)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(clip: VideoClip) -> str | None:
        """The clip's cache key, or None when its file cannot be stat'ed (it will fail to decode anyway)."""
        try:
            path = Path(clip.path).resolve()
            stat = path.stat()
        except OSError:
            return None
        identity = [str(path), stat.st_size, stat.st_mtime_ns, clip.start, clip.end]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def get(self, clip: VideoClip) -> torch.Tensor | None:
        key = self.key(clip)
        return None if key is None else self._entries.get(key)

    def put(self, clip: VideoClip, embedding: torch.Tensor) -> None:
        key = self.key(clip)
        if key is not None:
            self._entries[key] = embedding.detach().float().cpu().contiguous()
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file(self._entries, str(temporary), metadata={"videofirst_cache": self.settings})
        os.replace(temporary, self.path)
        self._dirty = False


class _ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per item; a clip that fails yields its error instead of a tensor (never a neighbour)."""

    def __init__(self, clips: Sequence[VideoClip], indices: Sequence[int], video_processor: Any, options: dict):
        # An ambiguous or incomplete sampling request is the caller's error: raised here, not excluded per video.
        resolve_sampling(options.get("fps"), options.get("num_frames"), options.get("sampling"))
        self.clips = clips
        self.indices = list(indices)
        self.video_processor = video_processor
        self.options = options

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = self.indices[item]
        clip = self.clips[index]
        try:
            processed = self.video_processor(
                videos=clip.path, start=clip.start, end=clip.end, return_tensors="pt", **self.options
            )
        except (ValueError, OSError, RuntimeError) as error:  # VideoDecodingError is a ValueError
            return {"index": index, "pixels": None, "error": f"{type(error).__name__}: {error}"}
        real = processed["video_frame_mask"][0].bool()
        return {"index": index, "pixels": processed["pixel_values_videos"][0][real], "error": None}


class _ClipCollator:
    def __init__(self, tubelet_frames: int):
        self.tubelet_frames = tubelet_frames

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        decoded = [item for item in items if item["pixels"] is not None]
        batch: dict[str, Any] = {
            "indices": [item["index"] for item in decoded],
            "failures": {item["index"]: item["error"] for item in items if item["pixels"] is None},
        }
        if decoded:
            pixels, frame_mask = pad_video_batch([item["pixels"] for item in decoded], self.tubelet_frames)
            batch.update(pixel_values_videos=pixels, video_frame_mask=frame_mask)
        return batch


def embed_video_clips(
    model: torch.nn.Module,
    video_processor: Any,
    clips: Sequence[VideoClip],
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    sampling: str | None = None,
    segment_frames: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> ClipEmbeddings:
    """Decode and embed video files, reporting (not hiding) the ones that fail.

    Clips are decoded by `video_processor` (a `VideoFirstVideoProcessor`; `fps`, `num_frames`, `sampling` override
    its defaults) in a DataLoader with `num_workers` workers, and embedded whole or, with `segment_frames`, by the
    segment-aggregation baseline (`embed_videos`). A clip that fails to decode is listed in `failures` with its
    error and gets no embedding: nothing shifts onto the next clip. Clips found in `cache` are not decoded; newly
    embedded ones are added to it and the cache is saved.
    """
    chosen = (("fps", fps), ("num_frames", num_frames), ("sampling", sampling))
    options = {key: value for key, value in chosen if value is not None}
    found: dict[int, torch.Tensor] = {}
    if cache is not None:
        for index, clip in enumerate(clips):
            embedding = cache.get(clip)
            if embedding is not None:
                found[index] = embedding
    hits = len(found)
    missing = [index for index in range(len(clips)) if index not in found]
    failures: dict[int, str] = {}
    if missing:
        loader = torch.utils.data.DataLoader(
            _ClipDataset(clips, missing, video_processor, options),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_ClipCollator(int(getattr(video_processor, "tubelet_frames", 1))),
        )
        for batch in tqdm(loader, desc="videos", unit="batch", disable=not progress):
            failures.update(batch["failures"])
            for index, error in batch["failures"].items():
                logger.warning("Excluding %s from the evaluation: %s", clips[index].path, error)
            if not batch["indices"]:
                continue
            embeds = embed_videos(model, [batch], segment_frames=segment_frames, device=device)
            for index, embedding in zip(batch["indices"], embeds, strict=True):
                found[index] = embedding
                if cache is not None:
                    cache.put(clips[index], embedding)
        if cache is not None:
            cache.save()
    indices = sorted(found)
    if not indices:
        first_error = next(iter(failures.values()))
        raise RuntimeError(f"None of the {len(clips)} videos could be decoded; first error: {first_error}")
    return ClipEmbeddings(torch.stack([found[index] for index in indices]), indices, failures, hits)
