"""Registers the VideoFirst classes with the transformers Auto classes (done on `import videofirst`)."""

from transformers import AutoConfig, AutoModel, AutoProcessor, AutoVideoProcessor

from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel, VideoFirstVisionModel
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor


def register_auto_classes() -> None:
    """Make the Auto classes resolve the `videofirst` model types without remote code."""
    AutoConfig.register(VideoFirstConfig.model_type, VideoFirstConfig, exist_ok=True)
    AutoConfig.register(VideoFirstVisionConfig.model_type, VideoFirstVisionConfig, exist_ok=True)
    AutoModel.register(VideoFirstConfig, VideoFirstModel, exist_ok=True)
    AutoModel.register(VideoFirstVisionConfig, VideoFirstVisionModel, exist_ok=True)
    AutoVideoProcessor.register(VideoFirstConfig, VideoFirstVideoProcessor, exist_ok=True)
    AutoProcessor.register(VideoFirstConfig, VideoFirstProcessor, exist_ok=True)
