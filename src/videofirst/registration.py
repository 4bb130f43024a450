"""Registers the VideoFirst classes with the transformers Auto classes (done on `import videofirst`).

Two registrations, as transformers' custom-model guide describes them:

* `AutoConfig.register` / `AutoModel.register` / ...: with `videofirst` installed, the Auto classes resolve the
  `videofirst` model types to these classes, without remote code.
* `register_for_auto_class`: every `save_pretrained` / `push_to_hub` of a VideoFirst config, model, processor or
  video processor copies the defining `modeling/` modules next to the weights and records them in `auto_map`, so
  the folder or Hub repo loads with `trust_remote_code=True` where `videofirst` is not installed.
  `videofirst.hub.export.export_checkpoint` adds the pipelines, the model card and the endpoint handler on top.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoVideoProcessor

from videofirst.modeling.configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig
from videofirst.modeling.configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel, VideoFirstVisionModel
from videofirst.modeling.modeling_videofirst_video_to_text import VideoFirstForConditionalGeneration
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor


def register_auto_classes() -> None:
    """Make the Auto classes resolve the `videofirst` model types, and saved checkpoints carry their code."""
    AutoConfig.register(VideoFirstConfig.model_type, VideoFirstConfig, exist_ok=True)
    AutoConfig.register(VideoFirstVisionConfig.model_type, VideoFirstVisionConfig, exist_ok=True)
    AutoModel.register(VideoFirstConfig, VideoFirstModel, exist_ok=True)
    AutoModel.register(VideoFirstVisionConfig, VideoFirstVisionModel, exist_ok=True)
    AutoVideoProcessor.register(VideoFirstConfig, VideoFirstVideoProcessor, exist_ok=True)
    AutoProcessor.register(VideoFirstConfig, VideoFirstProcessor, exist_ok=True)
    # Video-to-text (the paper's second step): the frozen tower feeding a frozen causal language model.
    AutoConfig.register(VideoFirstVideoToTextConfig.model_type, VideoFirstVideoToTextConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VideoFirstVideoToTextConfig, VideoFirstForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VideoFirstVideoToTextConfig, VideoFirstProcessor, exist_ok=True)
    AutoVideoProcessor.register(VideoFirstVideoToTextConfig, VideoFirstVideoProcessor, exist_ok=True)

    for config_class in (VideoFirstConfig, VideoFirstVisionConfig, VideoFirstVideoToTextConfig):
        config_class.register_for_auto_class("AutoConfig")
    VideoFirstModel.register_for_auto_class("AutoModel")
    VideoFirstVisionModel.register_for_auto_class("AutoModel")
    VideoFirstForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    VideoFirstProcessor.register_for_auto_class("AutoProcessor")
    VideoFirstVideoProcessor.register_for_auto_class("AutoVideoProcessor")
