"""Zero-shot evaluation: score-matrix metrics, embedding with a model, evaluation sets, the paper's benchmarks,
and video-to-text generation and its metrics.

Modules: `metrics` (retrieval, multiple-choice and classification metrics on score matrices), `embedding`
(embedding videos and texts with a model, the segment-aggregation baseline, one-call evaluations), `sets`
(evaluation sets from manifests, decoding clips with failure reports, the embedding cache), `benchmarks` (the
paper's benchmarks from their annotation files), `captioning` (video-to-text generation, QA scoring, caption
metrics), `event_order` (reading order-of-events captions back).
"""

from videofirst.evaluation.embedding import (
    embed_texts,
    embed_videos,
    embed_videos_by_segments,
    evaluate_classification,
    evaluate_multiple_choice,
    evaluate_retrieval,
)
from videofirst.evaluation.metrics import classification_metrics, multiple_choice_metrics, retrieval_metrics

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
