"""Registers the VideoFirst classes with the transformers Auto classes (done on `import videofirst`)."""

from transformers import AutoConfig, AutoModel

from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel, VideoFirstVisionModel


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel` resolve the `videofirst` model types without remote code."""
    AutoConfig.register(VideoFirstConfig.model_type, VideoFirstConfig, exist_ok=True)
    AutoConfig.register(VideoFirstVisionConfig.model_type, VideoFirstVisionConfig, exist_ok=True)
    AutoModel.register(VideoFirstConfig, VideoFirstModel, exist_ok=True)
    AutoModel.register(VideoFirstVisionConfig, VideoFirstVisionModel, exist_ok=True)
