"""videofirst: video-first, long-context video-text encoders for the Hugging Face ecosystem.

Importing the package registers the VideoFirst classes with the transformers Auto classes.
"""

from videofirst.adaptation import AdaptationConfig, AdaptationSummary, apply_adaptation, merge_adaptation
from videofirst.data.captions import encode_captions
from videofirst.evaluation.benchmarks import BENCHMARKS, load_benchmark
from videofirst.evaluation.captioning import (
    answer_log_likelihoods,
    caption_metrics,
    evaluate_video_question_answering,
    generate_captions,
)
from videofirst.evaluation.embedding import (
    embed_texts,
    embed_videos,
    embed_videos_by_segments,
    evaluate_classification,
    evaluate_multiple_choice,
    evaluate_retrieval,
)
from videofirst.evaluation.metrics import classification_metrics, multiple_choice_metrics, retrieval_metrics
from videofirst.hub.cards import ModelCardOptions, render_model_card
from videofirst.hub.conversion import convert_checkpoint, convert_image_text_model, replace_text_tower
from videofirst.hub.export import export_checkpoint, export_video_to_text
from videofirst.hub.files import register_pipelines
from videofirst.hub.push import push_to_hub
from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig
from videofirst.modeling.modeling_videofirst import (
    VideoFirstModel,
    VideoFirstOutput,
    VideoFirstPreTrainedModel,
    VideoFirstVisionModel,
    VideoFirstVisionModelOutput,
)
from videofirst.modeling.modeling_videofirst_video_to_text import (
    VideoFirstForConditionalGeneration,
    VideoFirstVideoToTextOutput,
)
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import (
    VideoDecodingError,
    VideoFirstVideoProcessor,
    pad_video_batch,
    read_video_frames,
)
from videofirst.registration import register_auto_classes
from videofirst.train.run_export import export_run
from videofirst.train.video_to_text import load_video_to_text_recipe, train_video_to_text

__version__ = "0.1.0"

register_auto_classes()
register_pipelines()

__all__ = [
    "train_video_to_text",
    "load_video_to_text_recipe",
    "generate_captions",
    "export_video_to_text",
    "evaluate_video_question_answering",
    "encode_captions",
    "caption_metrics",
    "answer_log_likelihoods",
    "VideoFirstVideoToTextOutput",
    "VideoFirstVideoToTextConfig",
    "VideoFirstForConditionalGeneration",
    "AdaptationConfig",
    "BENCHMARKS",
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
    "load_benchmark",
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
