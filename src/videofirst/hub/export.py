"""Writing checkpoints that load anywhere: weights, config, processor, the model code, card and endpoint handler.

`export_checkpoint(model, processor, out_dir)` turns an in-memory model, the dual encoder or the video-to-text model,
into a publishable folder; `videofirst.train.run_export.export_run` does the same from a training run folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, ProcessorMixin

from videofirst.hub.cards import ModelCardOptions
from videofirst.hub.files import write_hub_files
from videofirst.hub.results import RunInfo, load_results, with_run_eval

__all__ = ["export_checkpoint", "export_video_to_text"]


def export_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin | None,
    output_dir: str | Path,
    *,
    safe_serialization: bool = True,
    card: ModelCardOptions | bool = True,
    results: Any = None,
    run: RunInfo | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Save `model` (and `processor`) to `output_dir` with the `modeling/` code as transformers remote code.

    `model` is a `VideoFirstModel` (the dual encoder) or a `VideoFirstForConditionalGeneration` (video-to-text). The
    folder then loads with `AutoModel.from_pretrained(output_dir, trust_remote_code=True)` (video-to-text:
    `AutoModelForImageTextToText`) in an environment where `videofirst` is not installed: the classes are registered
    for the Auto classes, so `save_pretrained` copies the defining modules and records them in `auto_map` (plain
    `model.save_pretrained` does that too). The saved tokenizer's `model_max_length` is capped at the text tower's
    `max_position_embeddings`, so the processor truncates captions to what the model reads. The folder gets the
    `requirements.txt` of the model code; the dual encoder with a processor also gets the pipelines
    (`pipeline("zero-shot-video-classification", model=output_dir, trust_remote_code=True)`) and the Inference
    Endpoints handler.

    `card` (True, False or `ModelCardOptions`) writes `README.md`, with `results` (anything
    `videofirst.hub.results.load_results` reads) in its `model-index` and what `run` recorded. `run_dir` (a training
    run folder) supplies `run` when it is None and adds the run's last held-out evaluation to `results`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        run = run or RunInfo.from_run_dir(run_dir)
        results = with_run_eval(load_results(results), run_dir)
    # `videofirst.registration` registered the classes for the Auto classes: save_pretrained ships their code.
    model.save_pretrained(output_dir, safe_serialization=safe_serialization)
    if processor is not None:
        _with_text_limit(processor, model).save_pretrained(output_dir)
    write_hub_files(output_dir, model, processor, card=card, results=results, run=run)
    return output_dir


# The video-to-text export is the same export (the card and Hub files follow the model's kind); kept by this name.
export_video_to_text = export_checkpoint


def _with_text_limit(processor: ProcessorMixin, model: PreTrainedModel) -> ProcessorMixin:
    """`processor`, or a copy whose tokenizer truncates at the text tower's positions (the caller's is not changed)."""
    tokenizer = getattr(processor, "tokenizer", None)
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if tokenizer is None or not positions or tokenizer.model_max_length <= positions:
        return processor
    processor = copy.deepcopy(processor)
    processor.tokenizer.model_max_length = positions
    return processor
