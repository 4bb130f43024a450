"""Metrics on score matrices (no model involved): `retrieval_metrics`, `multiple_choice_metrics`,
`classification_metrics` and the ranks under them. They accept tensors, numpy arrays or nested lists, and are
shared by the evaluation script, the training loop's eval hook, the benchmarks and the `evaluate` modules in
`videofirst/metrics/`.

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

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "classification_metrics",
    "first_relevant_ranks",
    "multiple_choice_metrics",
    "rank_metrics",
    "retrieval_metrics",
]

# Rows of a score matrix scored per chunk, so the boolean work matrices stay ~16M entries.
_CHUNK_ENTRIES = 1 << 24

ArrayLike = Any  # torch.Tensor, numpy array or (nested) list


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
