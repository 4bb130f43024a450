"""videofirst: video-first, long-context video-text encoders for the Hugging Face ecosystem.

Importing the package registers the VideoFirst classes with the transformers Auto classes.
"""

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
    "export_checkpoint",
    "register_auto_classes",
]
