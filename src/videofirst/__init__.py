"""videofirst: video-first, long-context video-text encoders for the Hugging Face ecosystem.

Importing the package registers the VideoFirst classes with the transformers Auto classes.
"""

from videofirst.adaptation import AdaptationConfig, AdaptationSummary, apply_adaptation, merge_adaptation
from videofirst.conversion import convert_checkpoint, convert_image_text_model, replace_text_tower
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
from videofirst.export import export_checkpoint, export_run
from videofirst.hub import ModelCardOptions, push_to_hub, register_pipelines, render_model_card
from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.modeling_videofirst import (
    VideoFirstModel,
    VideoFirstOutput,
    VideoFirstPreTrainedModel,
    VideoFirstVisionModel,
    VideoFirstVisionModelOutput,
)
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import (
    VideoDecodingError,
    VideoFirstVideoProcessor,
    pad_video_batch,
    read_video_frames,
)
from videofirst.registration import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()
register_pipelines()

__all__ = [
    "AdaptationConfig",
    "AdaptationSummary",
    "ModelCardOptions",
    "VideoDecodingError",
    "VideoFirstConfig",
    "VideoFirstModel",
    "VideoFirstOutput",
    "VideoFirstPreTrainedModel",
    "VideoFirstProcessor",
    "VideoFirstVisionConfig",
    "VideoFirstVisionModel",
    "VideoFirstVideoProcessor",
    "VideoFirstVisionModelOutput",
    "apply_adaptation",
    "classification_metrics",
    "convert_checkpoint",
    "convert_image_text_model",
    "embed_texts",
    "embed_videos",
    "embed_videos_by_segments",
    "evaluate_classification",
    "evaluate_multiple_choice",
    "evaluate_retrieval",
    "export_checkpoint",
    "export_run",
    "merge_adaptation",
    "multiple_choice_metrics",
    "pad_video_batch",
    "push_to_hub",
    "read_video_frames",
    "register_auto_classes",
    "register_pipelines",
    "render_model_card",
    "replace_text_tower",
    "retrieval_metrics",
]
