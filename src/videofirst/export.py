"""Writing checkpoints that load anywhere: weights, config, processor and the model code itself."""

from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin


def export_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin | None,
    output_dir: str | Path,
    *,
    safe_serialization: bool = True,
) -> Path:
    """Save `model` (and `processor`) to `output_dir` with the `modeling/` code as transformers remote code.

    The folder then loads with `AutoModel.from_pretrained(output_dir, trust_remote_code=True)` in an
    environment where `videofirst` is not installed: `register_for_auto_class` makes `save_pretrained` copy
    the defining modules and record them in `auto_map`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.register_for_auto_class("AutoConfig")
    model.register_for_auto_class("AutoModel")
    model.save_pretrained(output_dir, safe_serialization=safe_serialization)
    if processor is not None:
        processor.register_for_auto_class("AutoProcessor")
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is not None:
            video_processor.register_for_auto_class("AutoVideoProcessor")
        processor.save_pretrained(output_dir)
    return output_dir
