"""Zero-shot evaluation: score-matrix metrics, embedding with a model, evaluation sets, the paper's benchmarks,
and video-to-text generation and its metrics.

Modules: `zero_shot` (metrics, embedding helpers, evaluation sets and the embedding cache), `benchmarks` (the
paper's benchmarks from their annotation files), `captioning` (video-to-text generation, QA scoring, caption
metrics), `event_order` (reading order-of-events captions back).
"""

from videofirst.evaluation.zero_shot import (
    classification_metrics,
    embed_texts,
    embed_videos,
    embed_videos_by_segments,
    evaluate_classification,
    evaluate_multiple_choice,
    evaluate_retrieval,
    multiple_choice_metrics,
    retrieval_metrics,
)

__all__ = [
    "classification_metrics",
    "embed_texts",
    "embed_videos",
    "embed_videos_by_segments",
    "evaluate_classification",
    "evaluate_multiple_choice",
    "evaluate_retrieval",
    "multiple_choice_metrics",
    "retrieval_metrics",
]
