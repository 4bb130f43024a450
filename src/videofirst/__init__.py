"""videofirst: video-first, long-context video-text encoders for the Hugging Face ecosystem.

Importing the package registers the VideoFirst classes with the transformers Auto classes.
"""

from videofirst.evaluation import (
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
from videofirst.export import export_checkpoint
from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.modeling_videofirst import (
    VideoFirstModel,
    VideoFirstOutput,
    VideoFirstPreTrainedModel,
    VideoFirstVisionModel,
    VideoFirstVisionModelOutput,
)
from videofirst.registration import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "VideoFirstConfig",
    "VideoFirstModel",
    "VideoFirstOutput",
    "VideoFirstPreTrainedModel",
    "VideoFirstVisionConfig",
    "VideoFirstVisionModel",
    "VideoFirstVisionModelOutput",
    "classification_metrics",
    "embed_texts",
    "embed_videos",
    "embed_videos_by_segments",
    "evaluate_classification",
    "evaluate_multiple_choice",
    "evaluate_retrieval",
    "export_checkpoint",
    "multiple_choice_metrics",
    "register_auto_classes",
    "retrieval_metrics",
]
